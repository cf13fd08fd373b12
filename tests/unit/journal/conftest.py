"""Helpers for journal tests: build small journals fast and verify them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import native
from agent.journal import protect
from agent.journal.checkpoint import SignedCheckpoint
from agent.journal.keys import KeyStore, PublicKey
from agent.journal.segments import SegmentNumbering, iter_lines, list_segments
from agent.journal.verify import Summary, Verifier, verify_lines
from agent.journal.writer import JournalWriter


class Journal:
    """A journal directory and its keys directory."""

    def __init__(self, root: Path, host: str = "host-a") -> None:
        self.dir = root / "journal"
        self.keys = root / "keys"
        self.host = host

    def writer(self, **kwargs: object) -> JournalWriter:
        options: dict[str, object] = {
            "host": self.host,
            "boot_id": "boot-1",
            "segment_bytes": 6000,
            "protect_files": False,
            "seal_every": 1 << 30,
            "seal_interval": 3600.0,
        }
        options.update(kwargs)
        return JournalWriter.open(self.dir, self.keys, **options)  # type: ignore[arg-type]

    def fill(
        self,
        records: int = 200,
        *,
        seal_every: int = 20,
        rotate_every: int = 0,
        close: bool = True,
        **kwargs: object,
    ) -> JournalWriter:
        """Write ``records`` events with deterministic seals and key rotations."""
        w = self.writer(**kwargs)
        if w.next_seq == 0:
            w.append("start", {"version": "0.1.0", "kernel": "6.18"})
        for i in range(records):
            w.append(
                "event",
                {
                    "kind": "exec",
                    "pid": 1000 + i,
                    "path": "/usr/bin/true",
                    "argv": ["true", str(i)],
                },
            )
            if i % 7 == 3:
                w.append(
                    "verdict",
                    {"action": "deny", "policy": "ab" * 32, "rule": f"r{i % 3}", "pid": 1000 + i},
                )
            if (i + 1) % seal_every == 0:
                w.flush_and_seal()
            if rotate_every and (i + 1) % rotate_every == 0:
                w.rotate_key()
        if close:
            w.close({"reason": "test"})
        return w

    def genesis(self) -> object:
        return KeyStore(self.keys).genesis()

    def verify(self, *, against: SignedCheckpoint | None = None, strict: bool = False) -> Summary:
        """Verify as the CLI does, segment by segment; where the native fast path is built,
        also through the pure Python path, and insist both say exactly the same."""
        genesis = KeyStore(self.keys).genesis()
        reference = verify_lines(iter_lines(self.dir), genesis, against=against, strict=strict)
        segments = [(path.name, path.read_bytes()) for _, path in list_segments(self.dir)]
        for use_native in (False, True) if native.available() else (False,):
            verifier = verify_segments(
                segments, genesis, use_native=use_native, against=against, strict=strict
            )
            assert verifier.summary == reference, f"use_native={use_native}"
        return reference

    def segments(self) -> list[Path]:
        return [p for _, p in list_segments(self.dir)]

    def lines(self) -> list[tuple[Path, int, bytes]]:
        """(segment path, index in segment, line bytes) for every line."""
        out = []
        for path in self.segments():
            for i, data in enumerate(path.read_bytes().splitlines()):
                out.append((path, i, data))
        return out

    def rewrite(self, path: Path, lines: list[bytes]) -> None:
        path.write_bytes(b"".join(line + b"\n" for line in lines))


def verify_segments(
    segments: list[tuple[str, bytes]],
    genesis: PublicKey,
    *,
    use_native: bool,
    against: SignedCheckpoint | None = None,
    strict: bool = False,
) -> Verifier:
    """Verify segment contents as ``journal verify`` does; the summary holds the findings."""
    verifier = Verifier(
        genesis,
        against=against,
        strict=strict,
        use_native=use_native,
        numbering=SegmentNumbering(),
    )
    for name, content in segments:
        for _finding in verifier.feed_segment(name, content):
            pass
    for _finding in verifier.finish():
        pass
    return verifier


def first_error_seq(summary: Summary) -> int | None:
    """The first seq an error names, leaving out seal batch findings.

    Batch findings ("records 96-118: Merkle root does not match") say only that something in
    the batch changed; ``assert_ranges_cover`` checks those.
    """
    seqs = [
        f.seq
        for f in summary.findings
        if f.severity == "error" and f.seq is not None and not f.batch
    ]
    return min(seqs) if seqs else None


def assert_ranges_cover(summary: Summary, seq: int) -> None:
    """No range finding lies wholly before ``seq``: nothing before the attack is accused."""
    for f in summary.findings:
        if f.batch:
            assert f.seq_end is not None and f.seq_end >= seq, str(f)


def errors(summary: Summary) -> list[str]:
    return [str(f) for f in summary.findings if f.severity == "error"]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path)
    yield j
    if j.dir.exists():  # never leave append-only or immutable files behind
        protect.clear_all(j.dir)


def assert_caught_at(summary: Summary, seq: int, words: str = "") -> None:
    """The attack was caught, naming ``seq`` first; ``words`` appear in some error."""
    assert not summary.ok
    assert first_error_seq(summary) == seq, errors(summary)[:5]
    assert_ranges_cover(summary, seq)
    assert not words or any(words in e for e in errors(summary)), errors(summary)[:5]
