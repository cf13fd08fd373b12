"""Fuzzing ingest: whatever a client sends, the collector answers accepted, gap or rejected, and
what it stores is always a prefix of the host's genuine journal, each record once.

Two levels: the ingest logic in process (many cases: hostile batches built by mutating the
genuine lines, interleaved with genuine ones), and the HTTP endpoint of a real ``serve`` process
(random headers and bodies over mutual TLS; the server answers each with a 2xx/4xx JSON document
and stays up).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.collector.ingest import Accepted, Gap, Ingest, Rejected
from agent.collector.protocol import INGEST_PATH, LINES_TYPE, START_HEADER
from agent.collector.store import open_store
from agent.collector.store.base import Store
from agent.journal.keys import SigningKey

from .journals import HostJournal
from .server_proc import Collector


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> HostJournal:
    j = HostJournal(tmp_path_factory.mktemp("fuzz"), "host-f")
    j.fill(300, seal_every=25, rotate_every=120)
    return j


@pytest.fixture
def fresh_store(tmp_path: Path) -> Iterator[Store]:
    with open_store(str(tmp_path / "fuzz.sqlite")) as store:
        yield store


def _mutate(data: st.DataObject, lines: list[bytes]) -> list[bytes]:
    out = list(lines)
    kind = data.draw(st.sampled_from(["flip", "drop", "dup", "swap", "cut", "junk", "replace"]))
    i = data.draw(st.integers(0, len(out) - 1))
    if kind == "flip":
        line = bytearray(out[i])
        j = data.draw(st.integers(0, len(line) - 1))
        line[j] ^= data.draw(st.integers(1, 255))
        out[i] = bytes(line).replace(b"\n", b" ")
    elif kind == "drop":
        del out[i]
    elif kind == "dup":
        out.insert(i, out[i])
    elif kind == "swap" and len(out) > 1:
        j = data.draw(st.integers(0, len(out) - 1))
        out[i], out[j] = out[j], out[i]
    elif kind == "cut":
        out[i] = out[i][: data.draw(st.integers(0, len(out[i])))]
    elif kind == "junk":
        out.insert(i, data.draw(st.binary(max_size=64)).replace(b"\n", b""))
    else:
        out[i] = out[i].replace(b'"pid":', b'"pid":1', 1).replace(b'"size":', b'"size":1', 1)
    return out or [b"{}"]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_stored_records_are_always_a_prefix_of_the_genuine_journal(
    genuine: HostJournal, tmp_path: Path, data: st.DataObject
) -> None:
    lines = genuine.lines()
    path = tmp_path / f"fuzz-{time.monotonic_ns()}.sqlite"
    with open_store(str(path)) as store:
        store.enroll("host-f", "ab" * 32, genuine.genesis().to_line(), time.time_ns())
        host = store.host("host-f")
        assert host is not None
        ingest = Ingest(store, "fuzz", SigningKey.generate())
        for _ in range(data.draw(st.integers(1, 6))):
            size = store.head("host-f").size
            start = data.draw(st.integers(0, len(lines) - 1))
            end = data.draw(st.integers(start + 1, min(len(lines), start + 80)))
            batch = lines[start:end]
            hostile = data.draw(st.booleans())
            if hostile:
                batch = _mutate(data, batch)
            claimed = data.draw(st.sampled_from([start, start, size, max(0, start - 1)]))
            body = b"".join(line + b"\n" for line in batch)
            outcome = ingest.ingest(host, claimed, body)
            assert isinstance(outcome, Accepted | Gap | Rejected)
            stored = [line for _, line in store.records("host-f", 0, store.head("host-f").size)]
            assert stored == lines[: len(stored)], "stored something the journal does not hold"
            if isinstance(outcome, Accepted):
                assert outcome.size == len(stored)
                outcome.receipt.verify(ingest._key.public, host="host-f")
        # after any of that, the genuine journal still goes in whole
        pos = store.head("host-f").size
        while pos < len(lines):
            outcome = ingest.ingest(host, pos, b"".join(x + b"\n" for x in lines[pos:]))
            assert isinstance(outcome, Accepted), outcome
            pos = outcome.size
        assert [line for _, line in store.records("host-f", 0, pos)] == lines


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, genuine: HostJournal) -> Iterator[Collector]:
    root = tmp_path_factory.mktemp("fuzz-server")
    collector = Collector(root / "coll", store=str(root / "store.sqlite"))
    collector.bundle = collector.enroll("host-f", genuine.pub, root / "bundle")  # type: ignore[attr-defined]
    collector.start()
    try:
        yield collector
    finally:
        collector.stop()


_headers = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from([LINES_TYPE, "application/json", "text/plain", "x/y"]),
        START_HEADER: st.one_of(
            st.integers(-5, 10**20).map(str),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
        ),
    },
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    headers=_headers,
    body=st.one_of(
        st.binary(max_size=2048),
        st.lists(st.binary(max_size=200), max_size=8).map(lambda ls: b"\n".join(ls) + b"\n"),
    ),
)
def test_the_endpoint_answers_every_request_and_stays_up(
    live: Collector, headers: dict[str, str], body: bytes
) -> None:
    client = live.client(live.bundle)  # type: ignore[attr-defined]
    ans = client.request("POST", INGEST_PATH, body, headers)
    assert ans.status in (200, 400, 409, 413, 415, 422), (ans.status, ans.doc)
    assert isinstance(ans.doc, dict) and ("error" in ans.doc or "receipt" in ans.doc)
    assert live.alive()
