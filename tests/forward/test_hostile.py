"""The forwarder against a hostile collector over real mutual TLS (``hostile``): what it says
is checked against the journal, never believed, and every lie is a clear forward_error."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.forward.forwarder import Forwarder
from tests.forward.hostile import Handler, HostileCollector
from tests.unit.journal.conftest import Journal

from .test_forwarder import stored


@pytest.fixture
def hostile(tmp_path: Path, journal: Journal) -> Iterator[list[HostileCollector]]:
    made: list[HostileCollector] = []
    yield made
    for h in made:
        h.close()


def start(
    made: list[HostileCollector], tmp_path: Path, journal: Journal, answer: Handler
) -> tuple[HostileCollector, Forwarder]:
    h = HostileCollector(tmp_path, journal, answer)
    made.append(h)
    return h, h.forwarder(journal, len(stored(journal)), tmp_path / "run")


def test_a_head_nested_thousands_deep_is_a_journaled_protocol_error(
    tmp_path: Path, journal: Journal, hostile: list[HostileCollector]
) -> None:
    journal.fill(20, seal_every=20)
    deep = b"[" * 500_000 + b"]" * 500_000
    _, fwd = start(hostile, tmp_path, journal, lambda method, path, seq, body: (200, deep))
    wait = fwd.step()
    assert wait.seconds > 0 and not wait.idle
    status = fwd.status()
    assert status["state"] == "backoff" and status["head"] is None
    assert status["last_error"]["error"] == "protocol"
    assert "nested too deeply" in status["last_error"]["detail"]
    (error,) = fwd.take_records()
    assert error[0] == "forward_error" and error[1]["error"] == "protocol"


def test_a_receipt_for_another_root_is_not_trusted_and_nothing_advances(
    tmp_path: Path, journal: Journal, hostile: list[HostileCollector]
) -> None:
    """A collector signs any root it likes: only the journal's own root at that size counts."""
    journal.fill(40, seal_every=20)
    h: HostileCollector | None = None

    def badroot(method: str, path: str, seq: int | None, body: bytes) -> tuple[int, Any]:
        assert h is not None
        if method == "GET":
            return 200, {"host": journal.host, "size": 0, "last_hash": None,
                         "receipt": h.receipt(0, hashlib.sha256(b"").digest())}  # fmt: skip
        size = (seq or 0) + body.count(b"\n")
        return 200, {"accepted": size, "skipped": 0, "pending": 0, "size": size,
                     "receipt": h.receipt(size, b"\xab" * 32)}  # fmt: skip

    h, fwd = start(hostile, tmp_path, journal, badroot)
    assert fwd.step().seconds == 0  # the head
    wait = fwd.step()  # a batch, and a receipt of the right size for the wrong root
    assert wait.seconds > 0 and not wait.idle
    status = fwd.status()
    assert status["acknowledged"] == 0 and status["head"] is None
    assert status["state"] == "backoff" and status["last_error"]["error"] == "root-mismatch"
    records = fwd.take_records()
    assert [(t, f["error"]) for t, f in records] == [("forward_error", "root-mismatch")]
    assert "ab" * 32 in str(records[0][1]["detail"])
    for _ in range(3):  # again and again: never trusted, journaled once
        fwd.step()
    assert fwd.status()["acknowledged"] == 0 and fwd.take_records() == []


def test_a_head_claiming_more_records_than_the_journal_is_ahead_without_false_receipts(
    tmp_path: Path, journal: Journal, hostile: list[HostileCollector]
) -> None:
    journal.fill(40, seal_every=20)
    h: HostileCollector | None = None
    claimed = 1_000_000

    def headmore(method: str, path: str, seq: int | None, body: bytes) -> tuple[int, Any]:
        assert h is not None
        receipt = h.receipt(claimed, b"\xcd" * 32)
        if method == "GET":
            return 200, {"host": journal.host, "size": claimed, "last_hash": None,
                         "receipt": receipt}  # fmt: skip
        return 200, {"accepted": 0, "skipped": body.count(b"\n"), "pending": 0,
                     "size": claimed, "receipt": receipt}  # fmt: skip

    h, fwd = start(hostile, tmp_path, journal, headmore)
    for _ in range(50):
        if (wait := fwd.step()).seconds > 0:
            break
    assert wait.seconds == fwd.pacing.refused_backoff
    records = fwd.take_records()
    assert [f["error"] for _, f in records] == ["diverged", "ahead"], records
    assert all(t == "forward_error" for t, _ in records)  # no receipt journaled
    status = fwd.status()
    assert status["state"] == "error" and status["last_error"]["error"] == "ahead"
    assert status["acknowledged"] == 0 and status["last_receipt"] is None
    sent = len(h.requests)
    for _ in range(4):  # after each long wait: the head, never the journal again
        assert fwd.step().seconds >= fwd.pacing.refused_backoff
    assert {r[0] for r in h.requests[sent:]} == {"GET"}
    assert fwd.take_records() == []
