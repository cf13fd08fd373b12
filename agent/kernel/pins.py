"""Pinned BPF state: what keeps enforcing, and keeps what the kernel judged, while the agent is
down (a crash, ``kill -9``, a restart, an upgrade).

Layout under the pin directory (default ``/sys/fs/bpf/sealtrail``, on the BPF filesystem)::

    events/maps/st_events   the ring buffer: what the guard judged while nobody read it waits
    events/maps/st_drops    there for the next agent, and what did not fit is counted here
    guard/maps/<map>        the guard's policy tables, its live slot and generation, lineage
    guard/links/<program>   every attachment of the guard (cgroup hooks, lineage, LSM, exec)

A link holds its program attached, and the program holds the maps it uses, so as long as the
pins exist the kernel goes on judging with the last policy the agent installed. A starting
agent opens the same paths: libbpf reuses a pinned map at load when its type and sizes match
(``BpfObject.pin_maps``), and each pinned link is taken over (``BpfObject.attach_pinned``).
Nothing here is removed when the agent stops, cleanly or not: only ``sealtrail agent --unpin``
(package removal) detaches it. What does not survive the agent is userspace's part: fanotify
permission answers (kept waiting through a restart by systemd's file-descriptor store, see
``agent.enforce.fanotify``), kills the kernel cannot send itself, and the event probes (what is
not judged in the kernel is not observed while no agent runs).

One agent per pin directory: ``PinDir.acquire`` takes an exclusive ``flock`` on the directory,
held until the agent exits, so a second agent (or ``--unpin`` while one runs) is refused.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path

from agent.errors import KernelError, SealtrailError
from agent.kernel import procfs

log = logging.getLogger(__name__)

BPFFS = Path("/sys/fs/bpf")
DEFAULT_PIN_DIR = BPFFS / "sealtrail"
EVENTS = "events"
GUARD = "guard"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]  # fmt: skip


class PinError(SealtrailError):
    """The pin directory cannot be used (not on bpffs, held by another agent)."""


def stale(exc: KernelError) -> bool:
    """Did a load fail because a map pinned earlier does not fit this object (libbpf's
    "couldn't reuse pinned map ... parameter mismatch": another size, type or flags)?"""
    return "reuse pinned map" in str(exc)


def bpffs_mount_of(path: Path) -> Path | None:
    """The BPF filesystem mount that holds ``path``, from /proc/self/mounts (None: not on one)."""
    best: Path | None = None
    for line in procfs.proc_lines(procfs.read_exact("/proc/self/mounts")):
        fields = line.split(" ")  # one space apart; a mount point may hold other blanks
        if len(fields) < 3 or fields[2] != "bpf":
            continue
        mnt = Path(fields[1].replace("\\040", " "))
        if (path == mnt or mnt in path.parents) and (
            best is None or len(str(mnt)) > len(str(best))
        ):
            best = mnt
    return best


def ensure_bpffs(path: Path) -> None:
    """Mount the BPF filesystem on /sys/fs/bpf if ``path`` is under it and nothing is mounted
    there (systemd mounts it at boot; a bare container or an init script may not)."""
    if bpffs_mount_of(path) is not None:
        return
    if path != BPFFS and BPFFS not in path.parents:
        raise PinError(f"{path}: not on a BPF filesystem (mount -t bpf bpf DIR, or use a "
                       f"directory under {BPFFS})")  # fmt: skip
    if _libc.mount(b"bpf", bytes(BPFFS), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise PinError(f"{BPFFS}: cannot mount the BPF filesystem: {os.strerror(err)}")
    log.info("mounted the BPF filesystem on %s", BPFFS)


class PinDir:
    """One agent's pin directory (module doc): paths, the lock, removal."""

    def __init__(self, path: Path, state_dir: Path | None = None) -> None:
        self.path = Path(os.path.realpath(path))  # the bpffs check below is on the real place
        #: where the guard keeps the rule tables of its pinned generations, so that a verdict
        #: the kernel took before a restart still resolves to its rule (a file, not a pin:
        #: bpffs holds only BPF objects), in ``state_dir`` (the run directory: gone at reboot,
        #: like the pins); one file per pin directory, never shared
        tag = hashlib.sha256(os.fsencode(self.path)).hexdigest()[:16]
        self.state_file = state_dir / f"guard-generations-{tag}.json" if state_dir else None
        self._lock_fd: int | None = None

    def acquire(self) -> None:
        """Create the directory (mounting bpffs if needed) and hold it for this process."""
        ensure_bpffs(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise PinError(f"{self.path}: another sealtrail agent holds it (one agent per "
                               "pin directory; --pin-dir chooses another)") from None  # fmt: skip
            raise
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def maps_dir(self, obj: str) -> Path:
        d = self.path / obj / "maps"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def links_dir(self, obj: str) -> Path:
        d = self.path / obj / "links"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def holds(self, obj: str) -> bool:
        """Does an earlier agent's state for ``obj`` exist here (to be taken over)?"""
        return any(p.is_file() for p in (self.path / obj).glob("*/*"))

    def prune_links(self, obj: str, keep: set[Path]) -> list[str]:
        """Unpin links of ``obj`` that this agent did not take over (a program it no longer
        loads, a cgroup it no longer attaches to): their programs detach now."""
        gone = []
        for pin in sorted((self.path / obj / "links").glob("*")):
            if pin not in keep:  # a stale "-new" of a replacement cut short included
                pin.unlink()
                gone.append(pin.name)
        return gone

    def remove(self, obj: str | None = None, *, keep_state: bool = False) -> None:
        """Unpin everything (of ``obj``): links whose last holder this was detach. The saved
        rule tables go too unless ``keep_state``."""
        target = self.path / obj if obj else self.path
        if not target.exists():
            return
        for pin in sorted(target.rglob("*"), key=lambda p: -len(p.parts)):
            if pin.is_dir():
                pin.rmdir()
            else:
                pin.unlink()
        target.rmdir()
        if obj in (None, GUARD) and self.state_file is not None and not keep_state:
            self.state_file.unlink(missing_ok=True)

    # ---- the guard's generations (see state_file) ----
    def load_generations(self) -> dict[int, dict[str, object]]:
        if self.state_file is None:
            return {}
        try:
            data = json.loads(self.state_file.read_text())
            return {int(k): v for k, v in data["generations"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s: unreadable (%s); verdicts of earlier generations will name their "
                        "rule by number only", self.state_file, exc)  # fmt: skip
            return {}

    def save_generations(self, generations: dict[int, dict[str, object]]) -> None:
        if self.state_file is None:
            return
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(".tmp")
            data = {"generations": {str(k): v for k, v in generations.items()}}
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.state_file)
        except OSError as exc:  # enforcement goes on; only the names of later verdicts suffer
            log.warning("%s: cannot save the guard's rule tables: %s", self.state_file, exc)


def unpin(path: Path) -> bool:
    """``sealtrail agent --unpin``: detach and remove what agents pinned at ``path``. False if
    there was nothing; a ``PinError`` if an agent holds it."""
    if not path.exists():
        return False
    pins = PinDir(path)
    try:
        pins.acquire()
    except OSError as exc:
        raise KernelError(f"{path}: {exc.strerror}") from None
    try:
        pins.remove()
    finally:
        pins.release()
    return True
