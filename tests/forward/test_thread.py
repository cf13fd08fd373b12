"""The forwarder on its own thread: woken when records are durable, drained on stop within
its bounded wait, never hanging the caller."""

from __future__ import annotations

import threading
import time

from agent.errors import ForwardError
from agent.forward.client import Answer
from agent.forward.forwarder import Forwarder
from agent.forward.pacing import Pacing
from agent.forward.source import JournalSource
from agent.journal.segments import iter_lines
from tests.forward.conftest import Journal
from tests.forward.fakes import FakeCollector, down


def threaded(journal: Journal, collector: FakeCollector, durable: int) -> Forwarder:
    fwd = Forwarder(
        JournalSource(journal.dir),
        collector,
        collector.key.public,
        host=journal.host,
        durable=durable,
        collector="https://collector.test",
        pacing=Pacing(rate=0, backoff_base=0.05, backoff_cap=0.2, batch_interval=0.01),
    )
    fwd.start()
    return fwd


def test_forwards_as_records_become_durable_and_drains_on_stop(journal: Journal) -> None:
    w = journal.writer()
    w.append("start", {"version": "0.1.0"})
    w.flush_and_seal()
    collector = FakeCollector(journal.host)
    fwd = threaded(journal, collector, w.sealed_size)
    for i in range(300):
        w.append("event", {"kind": "exec", "pid": i})
        if i % 25 == 0:
            w.flush_and_seal()
            fwd.notify(w.sealed_size)
            for rtype, fields in fwd.take_records():  # as the daemon's loop does
                w.append(rtype, fields)
    time.sleep(0.2)
    assert 0 < len(collector.lines) <= w.sealed_size  # it woke on notify, sent durable only
    w.close({"reason": "test"})
    fwd.notify(w.sealed_size)
    started = time.monotonic()
    assert fwd.stop(5.0) is True
    assert time.monotonic() - started < 2.0
    assert collector.lines == [line.data for line in iter_lines(journal.dir)]
    assert fwd.status()["state"] == "stopped"


def test_stop_gives_up_after_its_wait_when_the_collector_is_down(journal: Journal) -> None:
    journal.fill(50, seal_every=10)
    size = len(list(iter_lines(journal.dir)))
    collector = FakeCollector(journal.host)
    collector.script = [down() for _ in range(10_000)]
    fwd = threaded(journal, collector, size)
    time.sleep(0.3)
    started = time.monotonic()
    assert fwd.stop(0.5) is False  # what is left goes with the next start, from the head
    assert 0.4 <= time.monotonic() - started < 1.5
    assert collector.lines == []


def test_a_request_hanging_at_stop_is_cut(journal: Journal) -> None:
    journal.fill(50, seal_every=10)
    size = len(list(iter_lines(journal.dir)))
    release = threading.Event()

    class Hanging(FakeCollector):
        def ingest(self, start: int, body: bytes) -> Answer:
            release.wait(30)  # a collector that accepted the connection, then went quiet
            raise ForwardError("connection cut")

        def abort(self) -> None:
            super().abort()
            release.set()

    collector = Hanging(journal.host)
    fwd = threaded(journal, collector, size)
    time.sleep(0.2)
    started = time.monotonic()
    assert fwd.stop(0.3) is False
    assert time.monotonic() - started < 1.5 and collector.aborted == 1
