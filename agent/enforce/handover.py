"""What enforcement keeps across an agent restart, and how the next agent gets it back.

Two things outlive the agent process: the pinned in-kernel guard and its ring buffer
(``agent.kernel.pins``, on every host), and, under systemd, the fanotify group, which the agent
hands to the service manager's file-descriptor store (``FDSTORE=1``, name ``fanotify``). While
the store holds the group, open and exec permission events wait in the kernel instead of being
allowed; systemd passes the group back to the restarted agent (``$LISTEN_FDS``), which adopts
its marks and answers what waits.

The wait is bounded by systemd: when the unit stops for good (``systemctl stop``, or the start
limit is reached because the agent cannot come back: a broken configuration, a missing
library), systemd releases the store, the group's last fd closes and the kernel allows what it
held. So enforcement fails closed through a restart, and a host whose agent cannot start is
not bricked. The agent notes a stored group in its run directory (``fanotify-held``); an agent
that starts with that note but without the group journals the gap (``enforcement_gap``).

So that systemd can exec the new agent while the group waits (exec rules mark whole
filesystems), the agent's own exec chain carries fanotify ignore marks: its interpreter and that
interpreter's ELF loader. An exemption of a file the host shares would be a way around exec
rules, so a group is only held where both are the agent's own (``private_chain``): copies inside
its virtual environment that only root may execute (the package's ``python3-agent``, whose
loader is patched to a private copy). And a group is only held where nothing the agent opens as
it starts (its libraries and modules, ``ld.so.cache``, its configuration, keys, policies and
journal) is under a mark that asks for opens (``startup_conflicts``): that open would wait for
the agent that is starting, and the restart would hang until systemd gives up. Where either
does not hold, the group is not stored (or removed from the store) and the agent says why: then
fanotify enforcement ends with the agent, as without systemd.

Events the killed agent had read but not answered are known to the kernel by the fd numbers of
the dead process; the next agent denies each of them before it reads anything
(``FanotifyGuard.deny_unanswered``), so none waits for ever and none is allowed.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.kernel import procfs
from agent.kernel.pins import PinDir

#: the name of the fanotify group in systemd's fd store
FANOTIFY_FDNAME = "fanotify"
HELD_NOTE = "fanotify-held"
PT_INTERP = 3


@dataclass
class Handover:
    pins: PinDir | None = None
    #: the fanotify group an earlier agent stored, passed back by systemd (None: make one)
    fanotify_fd: int | None = None
    #: hands a new group to systemd's fd store; True if sent (None: no service manager)
    store: Callable[[int], bool] | None = None
    #: takes the group out of the store again (it must not be held: ``Enforcer``)
    unstore: Callable[[], None] | None = None
    #: directories and files the agent opens as it starts (configuration, keys, policies,
    #: journal): a mark that asks for opens there forbids holding the group
    startup_paths: tuple[Path, ...] = ()

    @property
    def managed(self) -> bool:
        """Is there a service manager to hold a group (inherited, or storable)?"""
        return self.fanotify_fd is not None or self.store is not None


def elf_interpreter(path: str) -> str | None:
    """The program interpreter (PT_INTERP) an ELF executable names, e.g. the dynamic loader."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only (x86-64, arm64)
                return None
            (phoff,) = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                (p_type,) = struct.unpack_from("<I", table, i * phentsize)
                if p_type == PT_INTERP:
                    (offset,) = struct.unpack_from("<Q", table, i * phentsize + 0x08)
                    (size,) = struct.unpack_from("<Q", table, i * phentsize + 0x20)
                    f.seek(offset)
                    return f.read(size).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def private_chain() -> tuple[list[str], str | None]:
    """The files an exec of this agent opens for exec (its interpreter, that interpreter's ELF
    loader), and why they may not be exempted, if so (None: they may)."""
    interpreter = os.path.realpath(sys.executable)
    loader = elf_interpreter(interpreter)
    chain = [interpreter] + ([os.path.realpath(loader)] if loader else [])
    prefix = os.path.realpath(sys.prefix) + "/"
    if sys.prefix == sys.base_prefix:
        return chain, f"the agent runs on the host's own interpreter {interpreter}"
    for path in chain:
        if not path.startswith(prefix):
            return chain, f"{path} is the host's, not the agent's own copy in {sys.prefix}"
        try:
            st = os.stat(path)
        except OSError as exc:
            return chain, f"{path}: {exc.strerror}"
        if st.st_uid != 0 or st.st_mode & 0o033:
            return chain, (f"{path} may be executed or changed by others than root (mode "
                           f"{st.st_mode & 0o7777:o}): chmod 700")  # fmt: skip
    return chain, None


def startup_files(extra: tuple[Path, ...]) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """What the agent opens as it starts: (files, directories) by (st_dev, st_ino). Files: its
    mapped libraries, its modules, the loader's cache and the agent's own paths; directories:
    theirs (a mark with FAN_EVENT_ON_CHILD there asks for their opens), ``extra`` among them."""
    names = {"/etc/ld.so.cache", "/etc/ld.so.preload", "/etc/localtime"}
    with contextlib.suppress(OSError):
        for line in procfs.proc_lines(procfs.read_exact("/proc/self/maps")):
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/"):
                names.add(fields[5])
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        if isinstance(name, str):
            names.add(name)
            names.add(name.rsplit("/", 1)[0] + "/__pycache__")
    files: set[tuple[int, int]] = set()
    dirs: set[tuple[int, int]] = set()
    for name in [*names, *map(str, extra)]:
        with contextlib.suppress(OSError, ValueError):
            st = os.stat(name)
            (dirs if os.path.isdir(name) else files).add((st.st_dev, st.st_ino))
            parent = os.stat(os.path.dirname(os.path.realpath(name)) or "/")
            dirs.add((parent.st_dev, parent.st_ino))
    return files, dirs


def held_note(journal_dir: Path) -> Path:
    """The note that a group is stored: beside the journal, not in the run directory, which
    systemd removes when the unit fails (just when the note matters)."""
    return journal_dir.parent / HELD_NOTE
