"""The forwarder's decisions, step by step, against an in-memory collector (``fakes``) over real
journals: what it sends, when it moves on, what it waits, what it journals."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from agent.collector.protocol import Receipt
from agent.forward import fleetnote
from agent.forward.client import Answer
from agent.forward.forwarder import NOW, Forwarder, Wait
from agent.forward.pacing import Pacing
from agent.forward.records import receipt_of
from agent.forward.source import JournalSource
from agent.journal.keys import SigningKey
from agent.journal.record import Record
from agent.journal.roots import SealRoots
from agent.journal.segments import iter_lines
from tests.forward.conftest import Journal
from tests.forward.fakes import FakeCollector, down


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stored(journal: Journal) -> list[bytes]:
    return [line.data for line in iter_lines(journal.dir)]


def forwarder(
    journal: Journal,
    collector: FakeCollector,
    *,
    durable: int | None = None,
    clock: Clock | None = None,
    status_dir: Path | None = None,
    max_records: int = 50,
    roots: SealRoots | None = None,
    **pacing: object,
) -> Forwarder:
    return Forwarder(
        JournalSource(journal.dir, max_records=max_records),
        collector,
        collector.key.public,
        host=journal.host,
        durable=len(stored(journal)) if durable is None else durable,
        collector="https://collector.test:8443",
        pacing=Pacing(**{"rate": 0, "batch_interval": 0, **pacing}),  # type: ignore[arg-type]
        status_dir=status_dir,
        clock=clock or Clock(),
        rng=random.Random(7),
        roots=roots,
    )


def run(fwd: Forwarder, steps: int = 200) -> list[Wait]:
    """Step until the forwarder has nothing to do (idle), or ``steps`` steps."""
    waits = []
    for _ in range(steps):
        wait = fwd.step()
        waits.append(wait)
        if wait.idle:
            break
    return waits


def test_forwards_every_line_exactly_once_and_then_idles(journal: Journal) -> None:
    journal.fill(200, seal_every=20)
    collector = FakeCollector(journal.host)
    fwd = forwarder(journal, collector)
    waits = run(fwd)
    assert waits[-1].idle and all(w.seconds == 0 for w in waits[:-1])
    assert collector.lines == stored(journal)
    ingests = [r for r in collector.requests if r[0] == "ingest"]
    assert sum(n for _, _, n in ingests) == len(stored(journal))  # nothing sent twice
    status = fwd.status()
    assert status["state"] == "idle" and status["lag_records"] == 0
    assert status["acknowledged"] == status["head"] == len(stored(journal))


def test_sends_only_what_is_durable(journal: Journal) -> None:
    w = journal.fill(60, seal_every=20, close=False)
    w.append("event", {"kind": "exec", "pid": 1})  # written, not yet sealed
    collector = FakeCollector(journal.host)
    fwd = forwarder(journal, collector, durable=w.sealed_size)
    run(fwd)
    assert len(collector.lines) == w.sealed_size < len(stored(journal))
    w.flush_and_seal()
    fwd.notify(w.sealed_size)
    run(fwd)
    assert collector.lines == stored(journal)
    w.close({"reason": "test"})


def test_resumes_from_the_head_after_a_restart(journal: Journal) -> None:
    journal.fill(100, seal_every=20)
    collector = FakeCollector(journal.host)
    collector.lines = stored(journal)[:37]
    fwd = forwarder(journal, collector)
    run(fwd)
    assert collector.lines == stored(journal)
    assert collector.requests[1][:2] == ("ingest", 37)


def test_a_gap_resumes_where_the_collector_says(journal: Journal) -> None:
    journal.fill(100, seal_every=20)
    collector = FakeCollector(journal.host)
    fwd = forwarder(journal, collector)
    fwd.step()  # head: 0
    collector.lines = []
    fwd.step()  # batch 0..49 accepted
    del collector.lines[20:]  # the collector lost records (restored from a backup)
    run(fwd)
    assert collector.lines == stored(journal)
    starts = [start for kind, start, _ in collector.requests if kind == "ingest"]
    assert starts[:4] == [0, 25, 20, 25]  # resumed at the size the 409 named
    (error,) = fwd.take_records()[:1]
    assert error[1]["error"] == "behind"  # it had signed for 25


def test_receipts_are_checked_and_journaled_at_most_once_a_second(journal: Journal) -> None:
    journal.fill(200, seal_every=20)
    collector = FakeCollector(journal.host)
    clock = Clock()
    fwd = forwarder(journal, collector, clock=clock)
    run(fwd)
    records = fwd.take_records()
    assert [t for t, _ in records] == ["receipt"]
    record = Record(0, 1, journal.host, "b", "receipt", "0" * 64, records[0][1])
    receipt = receipt_of(record)
    receipt.verify(collector.key.public, host=journal.host)
    assert receipt.size == len(stored(journal))
    assert fwd.take_records() == []  # nothing new
    w = journal.writer()
    w.append("event", {"kind": "exec", "pid": 1})
    w.flush_and_seal()
    fwd.notify(w.sealed_size)
    run(fwd)
    assert fwd.take_records() == []  # within the second
    clock.now += 1.0
    assert [t for t, _ in fwd.take_records()] == ["receipt"]
    w.close({"reason": "test"})


def test_a_receipt_for_bookkeeping_only_is_not_journaled(journal: Journal) -> None:
    """A journaled receipt is a record to forward whose receipt would be journaled: forever."""
    journal.fill(20, seal_every=20, close=False).close({"reason": "test"})
    collector = FakeCollector(journal.host)
    clock = Clock()
    fwd = forwarder(journal, collector, clock=clock)
    run(fwd)
    (receipt,) = fwd.take_records()
    w = journal.writer(heartbeat=0.01)
    w.append(*receipt)
    w.flush_and_seal()  # the receipt and its seal
    time.sleep(0.02)
    w.tick()  # a heartbeat seal
    fwd.notify(w.sealed_size)
    run(fwd)
    clock.now += 5
    assert fwd.take_records() == []
    assert collector.lines == stored(journal)
    w.close({"reason": "test"})


@pytest.mark.parametrize(
    "tamper",
    ["key", "host", "size"],
)
def test_a_receipt_that_does_not_hold_is_not_trusted(journal: Journal, tamper: str) -> None:
    journal.fill(40, seal_every=20)
    collector = FakeCollector(journal.host)
    fwd = forwarder(journal, collector)
    fwd.step()
    if tamper == "key":
        collector.key = SigningKey.generate()
    elif tamper == "host":
        collector.signed_host = "other-host"
    else:
        size = len(stored(journal)) + 1
        receipt = Receipt.sign(collector.key, "coll", journal.host, size, b"\0" * 32, None)
        collector.script = [Answer(200, {"size": size, "receipt": receipt.to_dict()}, None)]
    wait = fwd.step()
    assert wait.seconds <= Pacing().backoff_base * 2 and not wait.idle
    status = fwd.status()
    assert status["acknowledged"] == 0 and status["head"] is None
    assert status["last_error"]["error"] == "receipt"
    (error,) = fwd.take_records()
    assert error[0] == "forward_error" and error[1]["error"] == "receipt"
    assert "receipt not trusted" in str(error[1]["detail"])


def test_a_rejection_sends_what_precedes_it_then_waits_long(journal: Journal) -> None:
    journal.fill(100, seal_every=20)
    lines = stored(journal)
    collector = FakeCollector(journal.host)

    def reject(start: int, body: bytes) -> Answer | None:
        if start + body.count(b"\n") > 70:
            return Answer(422, {"error": "tamper", "detail": "hash mismatch", "seq": 70}, None)
        return None

    collector.hook = reject
    fwd = forwarder(journal, collector, max_records=50)
    while (wait := fwd.step()).seconds == 0:
        pass
    last_seal = max(i for i, line in enumerate(lines[:70]) if line.endswith(b'"type":"seal"}'))
    assert collector.lines == lines[: last_seal + 1]  # what could go before the rejected record
    assert wait.seconds == Pacing().refused_backoff
    status = fwd.status()
    assert status["state"] == "rejected"
    assert status["rejected"]["seq"] == 70 and status["rejected"]["error"] == "tamper"
    errors = [f for t, f in fwd.take_records() if t == "forward_error"]
    assert [f["error"] for f in errors] == ["rejected"]
    assert errors[0]["code"] == "tamper" and errors[0]["at_seq"] == 70
    for n in (2, 3):  # the same rejection again after the wait: not journaled again, longer
        while (wait := fwd.step()).seconds == 0:
            pass
        assert wait.seconds == Pacing().refused_backoff * 2 ** (n - 1)
    assert fwd.take_records() == []
    collector.hook = None  # the operator fixed it at the collector
    run(fwd)
    assert collector.lines == lines and fwd.status()["rejected"] is None


def test_network_errors_back_off_with_full_jitter_and_are_journaled_once(
    journal: Journal,
) -> None:
    journal.fill(40, seal_every=20)
    collector = FakeCollector(journal.host)
    collector.script = [down("timed out") for _ in range(12)]
    fwd = forwarder(journal, collector, backoff_base=0.5, backoff_cap=30.0)
    waits = [fwd.step() for _ in range(12)]
    for attempt, wait in enumerate(waits, 1):
        assert 0 <= wait.seconds <= min(30.0, 0.5 * 2**attempt) and not wait.idle
    assert max(w.seconds for w in waits[6:]) > 5  # it does grow
    errors = fwd.take_records()
    assert [f["error"] for _, f in errors] == ["unreachable"]
    assert fwd.status()["state"] == "backoff"
    run(fwd)
    assert collector.lines == stored(journal)


def test_server_errors_retry_from_the_head(journal: Journal) -> None:
    journal.fill(40, seal_every=20)
    collector = FakeCollector(journal.host)
    fwd = forwarder(journal, collector)
    fwd.step()
    collector.script = [Answer(500, {"error": "internal"}, None)]
    wait = fwd.step()
    assert 0 <= wait.seconds <= 1.0 and fwd.status()["head"] is None
    run(fwd)
    assert collector.lines == stored(journal)


@pytest.mark.parametrize("status", [429, 503])
def test_pushback_is_honoured(journal: Journal, status: int) -> None:
    journal.fill(40, seal_every=20)
    collector = FakeCollector(journal.host)
    fwd = forwarder(journal, collector)
    fwd.step()
    collector.script = [Answer(status, {"error": "busy"}, 7.0)]
    assert fwd.step() == Wait(7.0)
    assert fwd.status()["state"] == "pushback" and fwd.take_records() == []
    collector.script = [Answer(status, {"error": "busy"}, None)]  # no Retry-After: backoff
    assert 0 <= fwd.step().seconds <= 2.0
    run(fwd)
    assert collector.lines == stored(journal)


def test_the_catch_up_rate_is_limited(journal: Journal) -> None:
    journal.fill(300, seal_every=20)
    collector = FakeCollector(journal.host)
    clock = Clock()
    fwd = forwarder(journal, collector, clock=clock, rate=100, max_records=50)
    sent_at: list[float] = []
    while not (wait := fwd.step()).idle:
        if wait.seconds == 0 and collector.requests[-1][0] == "ingest":
            sent_at.append(clock.now)
        clock.now += wait.seconds
    assert collector.lines == stored(journal)
    records = len(stored(journal))
    elapsed = sent_at[-1] - sent_at[0]
    # one second of burst, then 100 records/s
    assert (records - 150) / 100 <= elapsed <= records / 100


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (Answer(200, {"host": "other", "size": 0}, None), "protocol"),
        (Answer(200, {"host": "host-a"}, None), "protocol"),
        (Answer(403, {"error": "unenrolled", "detail": "not bound"}, None), "refused"),
    ],
)
def test_a_collector_that_does_not_know_the_host_is_a_long_wait(
    journal: Journal, answer: Answer, error: str
) -> None:
    journal.fill(20, seal_every=20)
    collector = FakeCollector(journal.host)
    collector.script = [answer]
    wait = fwd_step = forwarder(journal, collector).step()
    assert fwd_step == wait
    if error == "refused" or answer.body.get("host") == "other":
        assert wait.seconds == Pacing().refused_backoff
    assert collector.requests == [("head", None, 0)]


def test_a_collector_ahead_of_the_journal_gets_it_from_0_and_says_where_it_differs(
    journal: Journal,
) -> None:
    """The collector holds more than this host's journal: it was cut or replaced. The
    forwarder says so, then sends from record 0 so the collector finds where it differs."""
    journal.fill(20, seal_every=20)
    collector = FakeCollector(journal.host)
    collector.lines = [b"x"] * 500
    fwd = forwarder(journal, collector)
    assert fwd.step().seconds == 0  # the head: diverged, from 0 at once
    assert fwd.step().seconds == Pacing().refused_backoff  # rejected where it differs
    errors = [fields for _, fields in fwd.take_records()]
    assert errors[0]["error"] == "diverged" and "cut or replaced" in str(errors[0]["detail"])
    assert errors[1]["error"] == "rejected" and "fork" in str(errors[1]["detail"])
    assert [r[:2] for r in collector.requests] == [("head", None), ("ingest", 0)]


def test_a_journal_cut_short_is_acknowledged_as_held_and_then_waits(journal: Journal) -> None:
    """Every record this journal has, the collector holds already (the journal lost its end):
    the resend is matched, nothing is sent twice into the store, no receipt for records the
    journal does not have is taken, and the forwarder is ``ahead``: it waits, sending nothing."""
    journal.fill(40, seal_every=20)
    collector = FakeCollector(journal.host)
    collector.lines = stored(journal) + [b"lost"] * 10
    fwd = forwarder(journal, collector)
    while (wait := fwd.step()).seconds == 0:
        pass
    assert wait.seconds == Pacing().refused_backoff
    assert collector.lines == stored(journal) + [b"lost"] * 10
    records = fwd.take_records()
    assert [f["error"] for _, f in records] == ["diverged", "ahead"], records
    status = fwd.status()
    assert status["last_error"]["error"] == "ahead" and status["acknowledged"] == 0
    sent = len(collector.requests)
    for _ in range(5):  # after each long wait: the head again, never the journal again
        assert fwd.step().seconds >= Pacing().refused_backoff
    assert {r[0] for r in collector.requests[sent:]} == {"head"}
    assert fwd.take_records() == []


def test_a_collector_whose_last_record_is_not_ours_gets_the_journal_from_0(
    journal: Journal,
) -> None:
    """Same size, other last record (a journal wiped and grown again): sent from 0."""
    journal.fill(20, seal_every=20)
    collector = FakeCollector(journal.host)
    collector.lines = [b"y"] * 10
    fwd = forwarder(journal, collector)
    fwd.step()
    assert fwd.step().seconds == Pacing().refused_backoff
    assert [r[:2] for r in collector.requests] == [("head", None), ("ingest", 0)]


def test_status_file_and_lag(journal: Journal, tmp_path: Path) -> None:
    journal.fill(100, seal_every=20)
    collector = FakeCollector(journal.host)
    collector.script = [down() for _ in range(3)]
    clock = Clock()
    fwd = forwarder(journal, collector, clock=clock, status_dir=tmp_path)
    for _ in range(3):
        fwd.step()
    fwd.step()  # head
    collector.script = [down()]
    fwd.step()  # the batch read (its first record's time known), then the network fails
    status = fwd.status()
    assert status["lag_records"] == len(stored(journal)) and status["lag_seconds"] > 0
    assert status["last_error"]["error"] == "unreachable"
    run(fwd)
    fwd._write_status(force=True)
    from agent.status import read_status

    written = read_status(tmp_path, "forward.json")
    assert written is not None and written["lag_records"] == 0 and written["lag_seconds"] == 0
    assert written["last_receipt"]["size"] == len(stored(journal))


def test_caught_up_it_sends_at_most_a_batch_per_interval(journal: Journal) -> None:
    w = journal.fill(40, seal_every=20, close=False)
    collector = FakeCollector(journal.host)
    clock = Clock()
    fwd = forwarder(journal, collector, clock=clock, batch_interval=0.25, durable=w.sealed_size)
    run(fwd)
    sent = len(collector.requests)
    w.append("event", {"kind": "exec", "pid": 1})
    w.flush_and_seal()
    fwd.notify(w.sealed_size)
    assert fwd.step() == Wait(0.25)  # caught up a moment ago: wait for more to come
    clock.now += 0.25
    run(fwd)
    assert len(collector.requests) == sent + 1 and collector.lines == stored(journal)
    w.close({"reason": "test"})


def test_a_batch_over_the_collectors_body_limit_is_sent_again_in_halves(
    journal: Journal,
) -> None:
    journal.fill(200, seal_every=10)
    collector = FakeCollector(journal.host)
    limit = 8000  # a few seal intervals: a batch ends at a seal, so it cannot be cut smaller
    too_large = Answer(413, {"error": "too-large", "detail": f"at most {limit} bytes"}, None)
    collector.hook = lambda _start, body: too_large if len(body) > limit else None
    fwd = forwarder(journal, collector, max_records=200)
    run(fwd, steps=400)
    assert collector.lines == stored(journal)  # all of it, in batches under the limit
    assert not [f for _, f in fwd.take_records() if f.get("error") == "refused"]


def test_a_fleet_answer_the_collector_repeats_is_checked_once(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector sends its latest fleet checkpoint with every accepted batch: the same
    document checks the same way, so only a new one is checked (and kept if larger)."""
    journal.fill(200, seal_every=10)
    docs = [{"checkpoint": f"note {size}", "index": 0, "host_size": 1} for size in (3, 3, 3, 5)]
    checked: list[object] = []

    def check(doc: dict[str, object], collector: str, key: object) -> fleetnote.FleetNote:
        checked.append(doc)
        text = str(doc["checkpoint"])
        return fleetnote.FleetNote(text.encode(), int(text.split()[1]), 0, 1)

    class Fleet(FakeCollector):
        def ingest(self, start: int, body: bytes | memoryview) -> Answer:
            answer = super().ingest(start, body)
            doc = docs.pop(0) if len(docs) > 1 else docs[0]
            return Answer(answer.status, {**answer.body, "fleet": dict(doc)}, None)

    monkeypatch.setattr(fleetnote, "check", check)
    collector = Fleet(journal.host)
    fwd = forwarder(journal, collector, max_records=20)
    run(fwd)
    assert len([r for r in collector.requests if r[0] == "ingest"]) > 5
    assert [d["checkpoint"] for d in checked] == ["note 3", "note 5"]  # type: ignore[index]
    assert fwd.fleet is not None and fwd.fleet.size == 5


def test_new_records_wake_an_idle_forwarder_but_not_one_waiting_out_an_interval(
    journal: Journal,
) -> None:
    """The main loop notifies at every seal; during a backoff or the batch interval that
    would wake the thread for nothing."""
    w = journal.fill(20, seal_every=10, close=False)
    clock = Clock()
    fwd = forwarder(journal, FakeCollector(journal.host), durable=w.sealed_size, clock=clock)
    waits: list[bool] = []  # each wait of the thread: did it end before its timeout?

    class Counted(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(super().wait(timeout))
            clock.now += 0 if waits[-1] else timeout or 0  # the time waited, as it passed
            return waits[-1]

    fwd._cond = Counted()

    def notify_soon() -> None:
        time.sleep(0.05)
        w.append("event", {"kind": "exec", "pid": 1})
        w.flush_and_seal()
        fwd.notify(w.sealed_size)

    took = []
    for wait in (Wait(5.0, idle=True), Wait(0.3)):
        waits.clear()
        helper = threading.Thread(target=notify_soon)
        helper.start()
        started = time.monotonic()
        fwd._head = fwd._durable  # caught up
        fwd._sleep(wait)
        took.append(time.monotonic() - started)
        helper.join()
        assert waits == ([True] if wait.idle else [False]), wait
    assert took[0] < 1.0 <= 5.0 and took[1] >= 0.3  # the idle wait ended with the new records
    w.close({"reason": "test"})


def test_records_made_durable_while_a_batch_is_on_its_way_wait_for_the_interval(
    journal: Journal,
) -> None:
    """Sent at once, they would be a request of a seal or two for the cost of a full one."""
    w = journal.fill(40, seal_every=20, close=False)
    collector = FakeCollector(journal.host)
    clock = Clock()
    fwd = forwarder(journal, collector, clock=clock, batch_interval=0.5, durable=w.sealed_size)
    run(fwd)  # caught up

    def seal(*_request: object) -> None:
        w.append("event", {"kind": "exec", "pid": 2})
        w.flush_and_seal()
        fwd.notify(w.sealed_size)

    clock.now += 0.5
    seal()
    collector.hook = seal  # the main loop seals again while the batch is on its way
    sent = len(collector.requests)
    assert fwd.step() == NOW and len(collector.requests) == sent + 1
    collector.hook = None
    assert fwd.step() == Wait(0.5) and len(collector.requests) == sent + 1
    clock.now += 0.5
    run(fwd)
    assert len(collector.requests) == sent + 2 and collector.lines == stored(journal)
    w.close({"reason": "test"})


def test_a_huge_rejection_detail_is_cut_and_kept_printable(journal: Journal) -> None:
    journal.fill(40, seal_every=20)
    collector = FakeCollector(journal.host)
    detail = "\x1b[2J" + "X" * 1_000_000
    collector.hook = lambda start, body: Answer(
        422, {"error": "tamper\n" * 1000, "detail": detail, "seq": start}, None
    )
    fwd = forwarder(journal, collector)
    while fwd.step().seconds == 0:
        pass
    (error,) = [f for t, f in fwd.take_records() if t == "forward_error"]
    status = fwd.status()
    for text in (error["detail"], status["last_error"]["detail"], status["rejected"]["detail"]):
        assert isinstance(text, str) and text.isprintable() and len(text) < 2200
        assert "cut: 1000004 characters" in text
    assert len(str(error["code"])) < 100 and str(error["code"]).isprintable()


def test_receipts_are_checked_against_the_writers_roots_without_hashing_the_journal(
    journal: Journal,
) -> None:
    writer = journal.fill(100, seal_every=20)
    collector = FakeCollector(journal.host)
    fwd = forwarder(journal, collector, roots=writer.seal_roots)
    run(fwd)
    assert collector.lines == stored(journal)
    assert fwd.status()["acknowledged"] == len(stored(journal))
    assert fwd._tree.size == 0  # every receipt's root was the writer's: no line hashed again
    cold = forwarder(
        journal, FakeCollector(journal.host, key=collector.key, lines=list(collector.lines))
    )
    run(cold)  # no roots: the head's is computed from the journal, once
    assert cold.status()["acknowledged"] == len(stored(journal))
    assert cold._tree.size == len(stored(journal))
