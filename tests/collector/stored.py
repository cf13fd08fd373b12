"""Real journals in a real store, for the operator commands' tests: a journal written by
``JournalWriter``, verified by ``Verifier`` batch by batch as ingest does, and appended to the
store with the chain state and checkpoint the verifier gives."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.cli import main
from agent.collector import fleet
from agent.collector.config import make_config
from agent.collector.store import Store
from agent.journal.checkpoint import Checkpoint, SignedCheckpoint
from agent.journal.keys import KeyStore, PublicKey
from agent.journal.record import parse_line, record_hash
from agent.journal.segments import Chunk, iter_lines
from agent.journal.verify import Verifier
from tests.unit.journal.conftest import Journal

#: Any 64-hex fingerprint will do: these tests never make a TLS connection.
FINGERPRINT = "f" * 64


class StoredJournal:
    """One host's journal on disk and its lines."""

    def __init__(self, root: Path, host: str, records: int = 300, **fill: object) -> None:
        self.journal = Journal(root / host, host)
        self.journal.fill(records, **fill)  # type: ignore[arg-type]
        self.host = host
        self.genesis: PublicKey = KeyStore(self.journal.keys).genesis()
        self.lines = [line.data for line in iter_lines(self.journal.dir)]

    @property
    def bytes(self) -> bytes:
        return b"".join(line + b"\n" for line in self.lines)

    def seq_of(self, needle: bytes) -> int:
        """The seq of the one line that holds ``needle``."""
        (seq,) = [i for i, line in enumerate(self.lines) if needle in line]
        return seq

    def enroll(self, store: Store, now_ns: int, fingerprint: str = FINGERPRINT) -> None:
        store.enroll(self.host, fingerprint, self.genesis.to_line(), now_ns)

    def forward(self, store: Store, *, batches: int = 3, upto: int | None = None) -> None:
        """Send lines 0 .. upto-1 (all by default) in ``batches`` batches and store each up to
        its last seal, as ingest does after verifying it (the rest waits for its seal; records
        after the journal's last seal are not stored): chain state, checkpoint, seal time."""
        lines = self.lines[: len(self.lines) if upto is None else upto]
        verifier = Verifier(self.genesis, expected_host=self.host)
        step = -(-len(lines) // batches)
        size = 0
        for end in range(step, len(lines) + step, step):
            seals = [i for i in range(size, min(end, len(lines))) if _is_seal(lines[i])]
            if not seals:
                continue
            batch = lines[size : seals[-1] + 1]
            body = b"\n".join(batch) + b"\n"
            found = list(verifier.feed_chunk(Chunk(f"batch:{size}", 0, body)))
            assert not [f for f in found if f.severity == "error"], found
            seal = parse_line(batch[-1])
            cp, sig = Checkpoint.from_seal(seal)
            checkpoint = json.dumps(SignedCheckpoint(cp, sig, seal.seq).to_dict())
            state = json.dumps(verifier.state().to_dict())
            hashes = [record_hash(line) for line in batch]
            assert store.append(
                self.host, size, batch, hashes, state, checkpoint, seal.ts, seal.ts,
                fleet_entry=fleet.entry_of(checkpoint),
            )  # fmt: skip
            size += len(batch)


def forwarded(
    store: Store, root: Path, host: str, records: int, *, batches: int = 3, **fill: object
) -> StoredJournal:
    """A host's journal written, enrolled now and forwarded into ``store`` in ``batches``."""
    journal = StoredJournal(root, host, records, **fill)
    journal.enroll(store, time.time_ns())
    journal.forward(store, batches=batches)
    return journal


def _is_seal(line: bytes) -> bool:
    return b'"type":"seal"' in line and parse_line(line).type == "seal"


def collector_dir(tmp_path: Path, store_url: str, **values: object) -> Path:
    """``tmp_path/coll`` with only a ``collector.toml`` naming ``store_url``: the operator's
    commands read no key or certificate."""
    directory = tmp_path / "coll"
    directory.mkdir(exist_ok=True)
    config = make_config(directory, "coll-1", store=store_url, **values)
    (directory / "collector.toml").write_text(config.to_toml())
    return directory


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """``sealtrail ARGV...`` in process: exit status, stdout, stderr."""
    rc = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err
