"""A booted Debian 12 under ``systemd-nspawn --boot``: real systemd as PID 1 (DESIGN.md 7, tier 4).

The root filesystem (``rootfs.sh``) is built once and cached under ``build/packaging``, keyed by
a hash of the recipe; each session boots a fresh copy of it. Recipe, as measured on this
machine kind:

- ``--register=no --keep-unit``: no machined, no systemd on the host; nspawn puts itself and the
  container under the cgroup it starts in, so it starts in one of its own (created here, removed
  after), never at the root of the host's cgroup2 tree;
- ``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``: cgroup v2 inside, as the agent needs;
- ``--capability=all``: the container's bounding set is not what restricts the agent, its unit's
  ``CapabilityBoundingSet=`` is (so the test proves that set is enough);
- ``--system-call-filter``: nspawn's own seccomp filter lacks the agent's calls;
- a bpffs instance of the session's own at ``/sys/fs/bpf`` (so the container agent's pins
  never land in the host's), ``/sys/kernel/tracing`` and ``/sys/kernel/btf`` bound in;
- ``--private-network``: loopback only (the collector's port is the container's own).

Commands run in the container through ``nsenter`` (all its namespaces); a process that must be
judged as the container's (cgroup subjects, the cgroup sock guard) runs through
``systemd-run`` inside instead (``Container.spawn``). Everything is undone in ``close``, which
the fixture calls in ``finally``: a leftover container makes the next run fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = REPO / "build" / "packaging"
#: where the repository's packaging/ appears inside (read-only), as in the Vagrant boxes; only
#: that directory: the container's own root lies below the repository
REPO_INSIDE = "/sealtrail"
SYSCALLS = "bpf perf_event_open fanotify_init fanotify_mark open_by_handle_at"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ContainerError(RuntimeError):
    pass


class BootTimeout(ContainerError):
    """systemd inside did not finish starting in time (the message says what it waited on)."""


def cached_rootfs() -> Path:
    """The cached root filesystem for the current recipe, built from nothing if absent."""
    recipe = HERE / "rootfs.sh"
    key = hashlib.sha256(recipe.read_bytes()).hexdigest()[:12]
    out = CACHE / f"rootfs-{key}"
    if not (out / "root" / "usr" / "lib" / "os-release").exists():
        for stale in CACHE.glob("rootfs-*"):  # an earlier recipe's
            subprocess.run(["rm", "-rf", str(stale)], check=True)
        subprocess.run([str(recipe), str(out)], check=True)
    return out / "root"


def cgroup2_mount() -> Path:
    """The host's cgroup2 mount: /sys/fs/cgroup (unified) or /sys/fs/cgroup/unified (hybrid)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            return Path(left.split()[4])
    raise ContainerError("no cgroup2 mount on this host")


class Container:
    def __init__(self, rootfs: Path) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="session-", dir=CACHE))
        self.root = self.dir / "root"
        self.bpffs = self.dir / "bpffs"
        # one per container (a module's failed boot must not leave the next one's name taken)
        self.cgroup = cgroup2_mount() / f"sealtrail-pkgtest-{os.getpid()}-{self.dir.name}"
        self.log = self.dir / "nspawn.log"
        self._rootfs = rootfs
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0

    # ---- life cycle ----
    def boot(self, timeout: float = 180) -> float:
        """Copy the rootfs, boot it, wait for systemd to finish starting; the boot's seconds."""
        subprocess.run(
            ["cp", "-a", "--reflink=auto", str(self._rootfs), str(self.root)], check=True
        )
        self.bpffs.mkdir()
        subprocess.run(["mount", "-t", "bpf", "bpf", str(self.bpffs)], check=True)
        self.cgroup.mkdir()
        t0 = time.monotonic()
        cmd = [
            "systemd-nspawn", "--boot", "--quiet", "--register=no", "--keep-unit",
            f"--directory={self.root}", "--machine=sealtrail-pkgtest", "--private-network",
            "--capability=all", f"--system-call-filter={SYSCALLS}", "--console=passive",
            f"--bind={self.bpffs}:/sys/fs/bpf", "--bind=/sys/kernel/tracing",
            "--bind-ro=/sys/kernel/btf", f"--bind-ro={REPO}/packaging:{REPO_INSIDE}/packaging",
        ]  # fmt: skip
        procs = self.cgroup / "cgroup.procs"
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        with open(self.log, "wb") as log:
            self._nspawn = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=lambda: procs.write_text(str(os.getpid())),  # its own cgroup
            )
        deadline = t0 + timeout
        while not self.leader:
            self.leader = self._child_of(self._nspawn.pid)
            self._check_alive(deadline)
            time.sleep(0.05)
        while True:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            self._check_alive(deadline)
            time.sleep(0.1)
        return time.monotonic() - t0

    def close(self) -> None:
        """Power the container off (killed if it does not stop), remove every trace."""
        nspawn = self._nspawn
        if nspawn is not None and nspawn.poll() is None:
            if self.leader:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGRTMIN + 4)  # systemd: poweroff
            try:
                nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(nspawn.pid, signal.SIGKILL)
                    if self.leader:
                        os.kill(self.leader, signal.SIGKILL)
                nspawn.wait(timeout=10)
        if self.cgroup.exists():
            self._remove_cgroup()
        if self.bpffs.is_mount():
            subprocess.run(["umount", str(self.bpffs)], check=True)
        # The journal's segments are append-only or immutable (chattr): clear before removing.
        subprocess.run(["chattr", "-R", "-i", "-a", str(self.root / "var/lib")],
                       capture_output=True, check=False)  # fmt: skip
        subprocess.run(["rm", "-rf", str(self.dir)], check=True)

    def _remove_cgroup(self, timeout: float = 30) -> None:
        """Kill whatever is still in the container's cgroup, wait until it is empty, remove it.

        Processes killed by SIGKILL leave their cgroup a little later than ``wait`` on nspawn
        returns (CI: ``rmdir`` of the container's journald cgroup failed with EBUSY), so this
        waits for ``cgroup.events`` to say ``populated 0`` before removing, depth first.
        """
        kill = self.cgroup / "cgroup.kill"
        if kill.exists():
            kill.write_text("1")
        deadline = time.monotonic() + timeout
        while "populated 1" in (self.cgroup / "cgroup.events").read_text():
            if time.monotonic() > deadline:
                left = sorted({pid for f in self.cgroup.rglob("cgroup.procs")
                               for pid in f.read_text().split()})  # fmt: skip
                raise ContainerError(f"{self.cgroup}: processes left after {timeout} s: {left}")
            time.sleep(0.05)
        subs = [p for p in self.cgroup.rglob("*") if p.is_dir()]
        for sub in sorted(subs, key=lambda p: len(p.parts), reverse=True):
            sub.rmdir()
        self.cgroup.rmdir()

    def _check_alive(self, deadline: float) -> None:
        assert self._nspawn is not None
        if self._nspawn.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited: {self.log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise BootTimeout(f"container not up in time: {self._boot_state()}")

    def _boot_state(self) -> str:
        """What systemd inside was waiting for, for the error of a boot that did not finish."""
        parts = [f"nspawn log: {self.log.read_text()[-2000:]!r}"]
        if self.leader:
            for argv in (("systemctl", "is-system-running", "--no-pager"),
                         ("systemctl", "list-jobs", "--no-pager"),
                         ("ps", "-eo", "pid,stat,wchan:32,args")):  # fmt: skip
                try:
                    out = self.run(*argv, check=False, timeout=10)
                except subprocess.TimeoutExpired:
                    parts.append(f"{shlex.join(argv)}: no answer in 10 s")
                    continue
                parts.append(f"{shlex.join(argv)}:\n{out.stdout}{out.stderr}")
        return "\n".join(parts)

    @staticmethod
    def _child_of(pid: int) -> int:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:
            return 0
        return int(children[0]) if children else 0

    # ---- commands inside ----
    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """A command in the container's namespaces (not its cgroup), as root."""
        cmd = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={CONTAINER_PATH}",
               "LANG=C.UTF-8", *argv]  # fmt: skip
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ContainerError(
                f"{shlex.join(argv)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def sh(self, script: str, check: bool = True, timeout: float = 120) -> str:
        return self.run("sh", "-c", script, check=check, timeout=timeout).stdout

    def spawn(
        self, argv: Sequence[str], check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """A process of the container's own: a transient unit in its system.slice."""
        return self.run("systemd-run", "--quiet", "--wait", "--pipe", "--collect", "--",
                        *argv, check=check, timeout=timeout)  # fmt: skip

    def unit(self, name: str, prop: str) -> str:
        return self.run("systemctl", "show", "-p", prop, "--value", name).stdout.strip()

    def journal(self, unit: str, since: str = "") -> str:
        args = ["journalctl", "--no-pager", "-o", "cat", "-u", unit]
        if since:
            args += ["--since", since]
        return self.run(*args, check=False).stdout
