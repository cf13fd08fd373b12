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

So that systemd can exec the new agent while the group waits, the agent's own exec chain (its
start script, its interpreter, the ELF loader) carries fanotify ignore marks (``exec_chain``):
an exec rule that names one of those files cannot be enforced by fanotify, and the install says
so. The packaged agent runs a private copy of the interpreter (``/opt/sealtrail``), so that
exemption does not cover the system's ``python3``.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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

    @property
    def holds_group(self) -> bool:
        """Will a fanotify group of this agent outlive it (inherited, or storable)?"""
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


def exec_chain() -> list[str]:
    """The files an exec of this agent opens for exec: the start script (``sealtrail``, a
    ``#!`` script), the interpreter it names, and that interpreter's ELF loader."""
    chain: list[str] = []
    script = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    interpreter = os.path.realpath(sys.executable)
    if script and os.path.isfile(script) and script != interpreter:
        chain.append(script)
    chain.append(interpreter)
    loader = elf_interpreter(interpreter)
    if loader:
        chain.append(os.path.realpath(loader))
    return chain


def held_note(run_dir: Path) -> Path:
    return run_dir / HELD_NOTE
