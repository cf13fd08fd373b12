"""The native fast path never judges: it must agree exactly with the reference verifier.

``Journal.verify`` (conftest) already runs every tamper test through both paths and compares
the summaries. Here: the fast path really carries ordinary records, and mutated lines of every
kind (bytes, escapes, numbers, floats, whitespace, key order, non-ASCII) give the same findings
with and without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agent.native
from agent import native
from agent.journal.keys import KeyStore, PublicKey
from agent.journal.segments import list_segments
from agent.journal.verify import Summary, Verifier

from .conftest import Journal, verify_segments

pytestmark = pytest.mark.skipif(
    not native.available() and not os.environ.get("CI"),
    reason="native journal core not built (make native)",
)


def test_native_core_is_built() -> None:
    """Under CI the native core must be there: a skip would hide a slow or broken build."""
    assert native.available(), f"{agent.native.LIBRARY} missing: run `make native`"


def _verify(
    segments: list[tuple[str, bytes]], genesis: PublicKey, use_native: bool
) -> tuple[Summary, Verifier]:
    verifier = verify_segments(segments, genesis, use_native=use_native)
    return verifier.summary, verifier


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[str, bytes]], PublicKey]:
    journal = Journal(tmp_path_factory.mktemp("native"))
    journal.fill(120, seal_every=25)
    segments = [(p.name, p.read_bytes()) for _, p in list_segments(journal.dir)]
    return segments, KeyStore(journal.keys).genesis()


def test_fast_path_carries_the_ordinary_records(
    sample: tuple[list[tuple[str, bytes]], PublicKey],
) -> None:
    segments, genesis = sample
    summary, verifier = _verify(segments, genesis, True)
    assert summary.ok and summary.records > 140 and len(segments) > 3
    # Everything but the start record, the seals and each segment's first line.
    slow = summary.records - verifier.fast_records
    assert slow <= summary.seals + len(segments) + 2, (slow, summary.seals)


MUTATIONS = [
    (b'"kind":"exec"', b'"kind": "exec"'),  # whitespace
    (b'"pid":', b'"pid":-0,"pie":'),  # -0
    (b'"pid":', b'"pid":1.5,"pie":'),  # a float
    (b'"pid":', b'"pid":1e3,"pie":'),  # an exponent
    (b'"pid":', b'"pid":9007199254740992,"pie":'),  # above 2**53 - 1
    (b'"pid":', b'"pid":007,"pie":'),  # leading zeros
    (b'"kind":"', b'"kind":"\\u001F'),  # upper-case escape
    (b'"kind":"', b'"kind":"\\u000a'),  # long form of \n
    (b'"kind":"', b'"kind":"\\/'),  # escaped solidus
    (b'"kind":"', b'"kind":"\\n'),  # a valid escape: still ordinary
    (b'"kind":"', b'"kind":"\xc3\xa9'),  # non-ASCII (valid UTF-8)
    (b'"kind":"', b'"kind":"\xff'),  # invalid UTF-8
    (b'"kind":"', b'"kind":"\x01'),  # a raw control character
    (b'"host":', b'"hosu":1,"host":'),  # keys out of order
    (b'"host":', b'"host":"x","host":'),  # duplicate key
    (b'"kind":"exec"', b'"kind":{"b":1,"a":2}'),  # nested keys out of order
    (b'"kind":"exec"', b'"kind":[1,2,]'),  # trailing comma
    (b'"kind":"exec"', b'"kind":tru'),  # broken literal
    (b'"type":"event"', b'"type":"eventx"'),
    (b'"type":"event"', b'"type":"verdict"'),  # a verdict without its fields
    (b'"ts":"', b'"ts":"0'),  # ts with a leading zero
    (b'"ts":"', b'"ts":"x'),
    (b'"seq":', b'"seq":1'),
    (b'"boot_id":"', b'"boot_id":"b'),
    (b'"action":"deny"', b'"action":"denied"'),
    (b'"action":"deny"', b'"action":1'),
    (b"}", b"}}"),
    (b"{", b"[{"),
]


@pytest.mark.parametrize(("old", "new"), MUTATIONS)
def test_mutated_lines_get_the_same_findings(
    sample: tuple[list[tuple[str, bytes]], PublicKey], old: bytes, new: bytes
) -> None:
    segments, genesis = sample
    hit = 0
    for index in range(len(segments)):
        name, content = segments[index]
        lines = content.split(b"\n")
        for i, line in enumerate(lines):
            if old in line and i > 0:
                lines[i] = line.replace(old, new, 1)
                hit += 1
                break
        else:
            continue
        mutated = [*segments[:index], (name, b"\n".join(lines)), *segments[index + 1 :]]
        expected, _ = _verify(mutated, genesis, False)
        got, _ = _verify(mutated, genesis, True)
        assert got == expected
        assert not got.ok
    assert hit, f"no line holds {old!r}"


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    where=st.floats(min_value=0, max_value=0.999),
    pick=st.integers(min_value=0, max_value=10**6),
    junk=st.binary(min_size=0, max_size=4),
    cut=st.integers(min_value=0, max_value=3),
)
def test_random_byte_damage_gets_the_same_findings(
    sample: tuple[list[tuple[str, bytes]], PublicKey],
    where: float,
    pick: int,
    junk: bytes,
    cut: int,
) -> None:
    segments, genesis = sample
    index = pick % len(segments)
    name, content = segments[index]
    at = int(where * len(content))
    damaged = content[:at] + junk + content[at + cut :]
    mutated = [*segments[:index], (name, damaged), *segments[index + 1 :]]
    expected, _ = _verify(mutated, genesis, False)
    got, _ = _verify(mutated, genesis, True)
    assert got == expected


def test_native_library_is_loaded_from_the_package_only() -> None:
    assert agent.native.LIBRARY.parent == Path(agent.native.__file__).resolve().parent / "lib"
