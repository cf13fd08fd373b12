"""A verifier resumed from a chain state judges the rest of a journal as a whole run would.

This is what the collector does per batch: verify a host's new lines from the state it stored
after the last batch, never re-reading what it accepted.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import native
from agent.errors import FormatError
from agent.journal.keys import KeyStore, PublicKey
from agent.journal.segments import Chunk, Line, iter_lines
from agent.journal.state import ChainState
from agent.journal.verify import Verifier

from .conftest import Journal, errors


def _run(verifier: Verifier, lines: list[Line]) -> list[str]:
    found = [f for line in lines for f in verifier.feed(line)]
    return [str(f) for f in found if f.severity == "error"]


def _split_verify(
    lines: list[Line], genesis: PublicKey, cut: int, *, use_native: bool | None = None
) -> tuple[Verifier, ChainState]:
    first = Verifier(genesis, use_native=use_native)
    assert _run(first, lines[:cut]) == []
    state = first.state()
    assert ChainState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    second = Verifier.resume(state, genesis, use_native=use_native)
    assert _run(second, lines[cut:]) == []
    return second, state


def _state_after(genesis: PublicKey, lines: list[Line]) -> ChainState:
    first = Verifier(genesis)
    assert _run(first, lines) == []
    return first.state()


@pytest.fixture
def rotated(journal: Journal) -> list[Line]:
    journal.fill(120, seal_every=10, rotate_every=40)
    return list(iter_lines(journal.dir))


@pytest.mark.parametrize("cut", [1, 2, 17, 60, 119, -3, -2, -1])
def test_resumed_run_ends_as_the_whole_run(journal: Journal, rotated: list[Line], cut: int) -> None:
    genesis = KeyStore(journal.keys).genesis()
    whole = Verifier(genesis)
    assert _run(whole, rotated) == []
    list(whole.finish())
    second, state = _split_verify(rotated, genesis, cut % len(rotated))
    list(second.finish())
    s = second.summary
    assert s.ok and s.clean_end and s.size == whole.summary.records
    assert s.start == state.next_seq and s.records == len(rotated) - state.next_seq
    assert (s.last_seal_seq, s.key_id, s.host) == (
        whole.summary.last_seal_seq,
        whole.summary.key_id,
        whole.summary.host,
    )
    assert second.state() == whole.state()


def test_resume_through_the_native_fast_path(journal: Journal) -> None:
    if not native.available():
        pytest.fail("native core not built (make native)")
    journal.fill(400, seal_every=50)
    lines = list(iter_lines(journal.dir))
    genesis = KeyStore(journal.keys).genesis()
    first = Verifier(genesis, use_native=True)
    for chunk in _chunks(lines[:300]):
        assert [f for f in first.feed_chunk(chunk) if f.severity == "error"] == []
    state = first.state()
    second = Verifier.resume(state, genesis, use_native=True)
    for chunk in _chunks(lines[300:]):
        assert [f for f in second.feed_chunk(chunk) if f.severity == "error"] == []
    list(second.finish())
    assert second.summary.ok and second.summary.clean_end and second.fast_records > 0
    python = Verifier.resume(state, genesis, use_native=False)
    assert _run(python, lines[300:]) == []
    assert second.state() == python.state()


def _chunks(lines: list[Line]) -> list[Chunk]:
    """Lines grouped back into chunks per segment, as a network batch would carry them."""
    out: list[Chunk] = []
    for line in lines:
        if out and out[-1].segment == line.segment:
            seg, off, data = out[-1]
            out[-1] = Chunk(seg, off, data + line.data + b"\n")
        else:
            out.append(Chunk(line.segment, line.offset, line.data + b"\n"))
    return out


def test_tampering_after_the_state_is_found_with_its_seq(
    journal: Journal, rotated: list[Line]
) -> None:
    genesis = KeyStore(journal.keys).genesis()
    state = _state_after(genesis, rotated[:50])
    victim = rotated[70]
    seq = json.loads(victim.data)["seq"]
    rest = list(rotated[50:])
    rest[20] = victim._replace(data=victim.data.replace(b'"pid":', b'"pid":1'))
    found = _run(Verifier.resume(state, genesis), rest)
    assert found and any(f"record {seq}" in e or f"records {seq}" in e for e in found)


def test_resumed_verifier_rejects_a_gap_a_replay_and_another_host(
    journal: Journal, rotated: list[Line]
) -> None:
    genesis = KeyStore(journal.keys).genesis()
    state = _state_after(genesis, rotated[:50])
    gap = _run(Verifier.resume(state, genesis), rotated[55:60])
    assert any("missing" in e for e in gap)
    replay = _run(Verifier.resume(state, genesis), rotated[40:60])
    assert replay
    foreign = ChainState.from_dict({**state.to_dict(), "host": "host-b"})
    other = _run(Verifier.resume(foreign, genesis), rotated[50:52])
    assert any("is not the journal's host 'host-b'" in e for e in other)


def test_no_state_after_an_error_or_a_torn_line(journal: Journal, rotated: list[Line]) -> None:
    genesis = KeyStore(journal.keys).genesis()
    bad = list(rotated[:10])
    bad[5] = bad[5]._replace(data=bad[5].data.replace(b'"pid":', b'"pid":1'))
    v = Verifier(genesis)
    _run(v, bad)
    with pytest.raises(FormatError, match="no chain state"):
        v.state()
    torn = Verifier(genesis)
    _run(torn, [*rotated[:5], rotated[5]._replace(complete=False)])
    with pytest.raises(FormatError, match="not complete"):
        torn.state()


def test_expected_host_rejects_the_first_foreign_record(journal: Journal) -> None:
    journal.fill(5)
    genesis = KeyStore(journal.keys).genesis()
    v = Verifier(genesis, expected_host="someone-else")
    found = _run(v, list(iter_lines(journal.dir)))
    assert found and "record 0" in found[0] and "'someone-else'" in found[0]
    assert errors(v.summary)


# ------------------------------------------------------------------------- the state value
def test_state_round_trip_and_strictness(journal: Journal, rotated: list[Line]) -> None:
    genesis = KeyStore(journal.keys).genesis()
    v = Verifier(genesis)
    _run(v, rotated)
    state = v.state()
    doc = state.to_dict()
    assert state.key is not None and state.epoch_start is not None  # rotated
    assert ChainState.from_dict(doc) == state
    for field, value, match in [
        ("next_seq", "7", "next_seq"),
        ("next_seq", True, "next_seq"),
        ("next_seq", state.next_seq + 1, "frontier"),
        ("prev", "00" * 31, "prev"),
        ("frontier", "ab", "frontier"),
        ("last_seal", state.next_seq, "last_seal"),
        ("key_id", "0" * 32, "key does not match"),
        ("clean_end", 1, "clean_end"),
        ("host", "", "host"),
        ("format", "v0", "format"),
    ]:
        with pytest.raises(FormatError, match=match):
            ChainState.from_dict({**doc, field: value})
    with pytest.raises(FormatError, match="lacks boot"):
        ChainState.from_dict({k: v for k, v in doc.items() if k != "boot"})
    with pytest.raises(FormatError, match="unknown extra"):
        ChainState.from_dict({**doc, "extra": 1})


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(sorted(ChainState("h").to_dict())),
    value=_json,
)
def test_random_field_values_give_format_errors_only(field: str, value: object) -> None:
    doc = {
        **ChainState(
            "h", 1, "ab" * 32, ("cd" * 32,), "b", None, None, None, 0, "seal", False
        ).to_dict()
    }
    doc[field] = value
    try:
        state = ChainState.from_dict(doc)
    except FormatError:
        return
    assert ChainState.from_dict(state.to_dict()) == state
