"""The verifier is pure: fed lines from memory, it judges without touching files."""

from __future__ import annotations

import json

import pytest

from agent.journal import verify
from agent.journal.checkpoint import SignedCheckpoint
from agent.journal.keys import KeyStore, SigningKey
from agent.journal.reader import latest_checkpoint
from agent.journal.segments import Line, iter_lines
from agent.journal.verify import Verifier, verify_lines

from .conftest import Journal, errors


@pytest.fixture
def lines(journal: Journal) -> list[Line]:
    journal.fill(60, seal_every=10)
    return list(iter_lines(journal.dir))


def test_in_memory_lines_verify(journal: Journal, lines: list[Line]) -> None:
    genesis = KeyStore(journal.keys).genesis()
    verifier = Verifier(genesis, strict=True)
    found = [f for line in lines for f in verifier.feed(line)] + list(verifier.finish())
    assert found == [] and verifier.summary.ok
    assert verifier.summary.records == len(lines)


def test_findings_name_seq_segment_and_offset(journal: Journal, lines: list[Line]) -> None:
    victim = lines[20]
    seq = json.loads(victim.data)["seq"]
    lines[20] = victim._replace(data=victim.data.replace(b'"kind":"exec"', b'"kind":"exit"'))
    summary = verify_lines(lines, KeyStore(journal.keys).genesis())
    first = summary.findings[0]
    assert (first.seq, first.segment, first.offset) == (seq, victim.segment, victim.offset)
    assert str(first) == f"record {seq} in {victim.segment} at byte {victim.offset}: " + (
        first.message
    )


def test_torn_line_in_the_middle_is_an_error(journal: Journal, lines: list[Line]) -> None:
    lines[10] = lines[10]._replace(data=lines[10].data[:30], complete=False)
    summary = verify_lines(lines, KeyStore(journal.keys).genesis())
    assert any("torn line in the middle" in e for e in errors(summary))


def test_non_canonical_bytes_are_rejected_even_if_equal_json(
    journal: Journal, lines: list[Line]
) -> None:
    spaced = json.dumps(json.loads(lines[5].data)).encode()  # same JSON, with spaces
    lines[5] = lines[5]._replace(data=spaced)
    summary = verify_lines(lines, KeyStore(journal.keys).genesis())
    assert any("not canonical" in e for e in errors(summary))


def test_empty_journal_and_bad_segment_name(journal: Journal) -> None:
    genesis = SigningKey.generate().public
    assert "journal is empty" in errors(verify_lines([], genesis))[0]
    summary = verify_lines([Line("notes.txt", 0, b"{}")], genesis)
    assert any("not a segment file name" in e for e in errors(summary))


def test_against_a_checkpoint_from_another_host_key(journal: Journal, tmp_path: object) -> None:
    journal.fill(30, seal_every=10)
    checkpoint = latest_checkpoint(journal.dir)
    forged = SignedCheckpoint(checkpoint.checkpoint, b"\0" * 64, checkpoint.seal_seq)
    summary = journal.verify(against=forged)
    assert any("--against checkpoint rejected" in e for e in errors(summary))
    assert journal.verify(against=checkpoint).ok


def test_findings_kept_are_bounded(
    journal: Journal, lines: list[Line], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "MAX_KEPT_FINDINGS", 10)
    lines = [lines[0]._replace(data=b"garbage") for _ in range(50)]
    summary = verify_lines(lines, KeyStore(journal.keys).genesis())
    assert len(summary.findings) == 10 and summary.errors >= 50


@pytest.mark.parametrize("hostile", ["verdict-action-list", "deep-nesting"])
def test_hostile_records_are_malformed_findings_on_both_paths(
    journal: Journal, hostile: str
) -> None:
    journal.fill(60, seal_every=20)
    path = journal.segments()[0]
    stored = path.read_bytes().splitlines()
    i = next(n for n, line in enumerate(stored) if b'"type":"verdict"' in line)
    if hostile == "verdict-action-list":
        record = json.loads(stored[i])
        record["action"] = ["deny"]
        stored[i] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    else:
        stored[i] = stored[i][:-1] + b',"zz":' + b"[" * 5000 + b"]" * 5000 + b"}"
    journal.rewrite(path, stored)
    summary = journal.verify(strict=True)  # both the native and the Python path
    assert not summary.ok
    assert any(f"record {i} " in e and "malformed record" in e for e in errors(summary))
