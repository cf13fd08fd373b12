"""Who acted: the audit login uid and session id of a pid, for the verdicts that name only it.

Every event from the probes carries the acting task's ``auid`` (``task->loginuid``, what
auditd calls auid: the user who logged in, kept through ``sudo`` and ``su``) and ``ses``
(``task->sessionid``). A verdict names the pid it judged; the event it judged came first
through the same stream (a kernel guard decision is such an event itself), so the latest
event of that pid holds the values the kernel had. A verdict of the fanotify responder has no
event of its own: it takes the latest event of the pid (its exec, recorded by default), else
``/proc/PID/loginuid`` and ``sessionid`` while the process is there (it waits in the kernel
for that answer). A login uid, once set, changes only by a process holding
CAP_AUDIT_CONTROL, so the latest value is the one the verdict's operation ran with.
"""

from __future__ import annotations

import collections
from typing import Final

from agent.events import model

#: pids remembered (the oldest forgotten first): more than the tasks a host runs at once
MAX_PIDS: Final = 65536


class LoginIdentities:
    """The latest (auid, ses) the kernel reported for each pid."""

    def __init__(self, max_pids: int = MAX_PIDS) -> None:
        self._by_pid: collections.OrderedDict[int, tuple[int, int]] = collections.OrderedDict()
        self._max = max_pids

    def note(self, ev: model.Event) -> None:
        """Remember what ``ev`` says of its task (events not from the probes say nothing)."""
        if ev.auid is None or ev.ses is None:
            return
        by_pid = self._by_pid
        by_pid[ev.pid] = (ev.auid, ev.ses)
        by_pid.move_to_end(ev.pid)
        if len(by_pid) > self._max:
            by_pid.popitem(last=False)

    def fields(self, pid: int) -> dict[str, int]:
        """``{"auid": ..., "ses": ...}`` of ``pid``, or ``{}`` where neither the events nor
        /proc know it."""
        known = self._by_pid.get(pid)
        if known is None:
            known = _from_proc(pid)
        return {} if known is None else {"auid": known[0], "ses": known[1]}


def _from_proc(pid: int) -> tuple[int, int] | None:
    try:
        with open(f"/proc/{pid}/loginuid") as f:
            auid = int(f.read())
        with open(f"/proc/{pid}/sessionid") as f:
            ses = int(f.read())
    except (OSError, ValueError):  # gone, or a kernel without CONFIG_AUDIT
        return None
    return auid, ses
