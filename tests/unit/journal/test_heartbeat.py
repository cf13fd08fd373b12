"""The heartbeat seal: an idle journal is sealed every ``heartbeat`` seconds by ``tick``, so a
collector can tell a quiet host from one that is cut off (it flags silence after 3)."""

from __future__ import annotations

import itertools
import time

from agent.journal.record import parse_line
from agent.journal.segments import iter_lines
from tests.unit.journal.conftest import Journal


def types(journal: Journal) -> list[str]:
    return [parse_line(line.data).type for line in iter_lines(journal.dir)]


def test_an_idle_journal_is_sealed_every_heartbeat(journal: Journal) -> None:
    w = journal.writer(heartbeat=0.05)
    w.append("start", {"version": "0.1.0"})
    w.flush_and_seal()
    w.tick()
    assert types(journal) == ["start", "seal"]  # sealed just now: no heartbeat yet
    for _ in range(3):
        time.sleep(0.06)
        w.tick()
        w.tick()  # one heartbeat per interval, however often the loop ticks
    assert types(journal) == ["start", "seal", "seal", "seal", "seal"]
    assert w.sealed_size == 5
    w.close({"reason": "test"})
    summary = journal.verify(strict=True)
    assert summary.ok and summary.seals == 5, summary.findings


def test_a_busy_journal_gets_no_extra_seal(journal: Journal) -> None:
    w = journal.writer(heartbeat=0.05, seal_interval=0.01)
    w.append("start", {"version": "0.1.0"})
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        w.append("event", {"kind": "exec", "pid": 1})
        time.sleep(0.005)
        w.tick()
    kinds = types(journal)
    # every seal follows a record it covers: none covers only the seal before it
    assert all(a != "seal" for a, b in itertools.pairwise(kinds) if b == "seal")
    w.close({"reason": "test"})
    assert journal.verify(strict=True).ok


def test_an_empty_journal_is_not_sealed(journal: Journal) -> None:
    w = journal.writer(heartbeat=0.01)
    time.sleep(0.02)
    w.tick()
    assert types(journal) == [] and w.sealed_size == 0
