"""``agent.events.who``: a verdict's login uid and session come from its pid's latest event,
else from /proc while the process is there."""

from __future__ import annotations

import os
from pathlib import Path

from agent.events import model
from agent.events.who import LoginIdentities

#: pids above the kernel's largest pid_max (2**22): never a process in /proc
P = 2**22 + 1000


def ev(pid: int, auid: int | None, ses: int | None) -> model.Event:
    return model.ForkEvent(ts_ns=1, pid=pid, tid=pid, ppid=1, uid=0, gid=0, cgroup_id=1,
                           comm="sh", auid=auid, ses=ses, child_pid=pid + 1)  # fmt: skip


def test_the_latest_event_of_the_pid_says_who() -> None:
    who = LoginIdentities()
    who.note(ev(P + 1, 1000, 7))
    who.note(ev(P + 2, 1001, 8))
    who.note(ev(P + 1, 1000, 9))  # a new login session of the same person
    assert who.fields(P + 1) == {"auid": 1000, "ses": 9}
    assert who.fields(P + 2) == {"auid": 1001, "ses": 8}
    who.note(ev(P + 2, None, None))  # not from the probes: says nothing
    assert who.fields(P + 2) == {"auid": 1001, "ses": 8}


def test_an_unseen_pid_is_read_from_proc_and_a_gone_one_is_unknown() -> None:
    who = LoginIdentities()
    own = (
        int(Path("/proc/self/loginuid").read_text()),
        int(Path("/proc/self/sessionid").read_text()),
    )
    assert who.fields(os.getpid()) == {"auid": own[0], "ses": own[1]}
    assert who.fields(2**22 + 12345) == {}  # above pid_max's default: no such process


def test_the_oldest_pids_are_forgotten_first() -> None:
    who = LoginIdentities(max_pids=2)
    for pid in (P + 11, P + 12, P + 11, P + 13):
        who.note(ev(pid, 1000 + pid - P, 1))
    assert who.fields(P + 11) == {"auid": 1011, "ses": 1}  # noted again: kept
    assert who.fields(P + 12) == {}  # forgotten (and not in /proc)
