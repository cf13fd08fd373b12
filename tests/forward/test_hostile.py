"""The forwarder against a hostile collector over real mutual TLS (``hostile``): what it says
is checked against the journal, never believed, and every lie is a clear forward_error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
