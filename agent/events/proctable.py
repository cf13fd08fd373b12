"""Which binary a pid runs: learned from exec/fork/exit events, else asked of /proc (psutil).

The kernel only reports the exe on exec; every other event names the acting binary through
this table. Processes that started before the agent are enriched once through psutil.
"""

from __future__ import annotations

from collections import OrderedDict

import psutil

from agent.events import model


class ProcTable:
    def __init__(self, capacity: int = 65536) -> None:
        self._exe: OrderedDict[int, str] = OrderedDict()
        self._previous: dict[int, str] = {}  # pid -> image before its last exec
        self._unknown: set[int] = set()  # pids /proc could not tell (gone): ask once, not per event
        self._capacity = capacity

    def _put(self, pid: int, exe: str) -> None:
        self._exe[pid] = exe
        self._exe.move_to_end(pid)
        if len(self._exe) > self._capacity:
            self._exe.popitem(last=False)

    def lookup(self, pid: int, comm: str) -> str | None:
        exe = self._exe.get(pid)
        if exe is not None or pid in self._unknown:
            return exe
        try:
            exe = psutil.Process(pid).exe() or None
        except (psutil.Error, OSError):
            exe = None
        if exe:
            self._put(pid, exe)
        elif len(self._unknown) < self._capacity:
            self._unknown.add(pid)
        return exe

    def previous_exe(self, pid: int) -> str | None:
        """The image ``pid`` ran before its most recent exec (the caller of that exec)."""
        return self._previous.get(pid)

    def observe(self, event: model.Event) -> None:
        """Update the table after an event has been decoded and handled."""
        if isinstance(event, model.ExecEvent) and event.exe:
            self._unknown.discard(event.pid)
            before = self._exe.get(event.pid)
            if before is not None:
                self._previous[event.pid] = before
            self._put(event.pid, event.exe)
        elif isinstance(event, model.ForkEvent):
            self.forked(event.child_pid, event.exe)
        elif isinstance(event, model.ExitEvent):
            self.exited(event.pid)

    def forked(self, child_pid: int, exe: str | None) -> None:
        """``child_pid`` was forked by a process running ``exe`` (None: not known)."""
        if exe:
            self._unknown.discard(child_pid)
            self._put(child_pid, exe)

    def exited(self, pid: int) -> None:
        self._exe.pop(pid, None)
        self._previous.pop(pid, None)
        self._unknown.discard(pid)
