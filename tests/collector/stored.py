"""Real journals in a real store, for the operator commands' tests: a journal written by
``JournalWriter``, verified by ``Verifier`` batch by batch as ingest does, and appended to the
store with the chain state and checkpoint the verifier gives."""

from __future__ import annotations

import json
from pathlib import Path

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
        """Append lines 0 .. upto-1 (all by default) in ``batches`` batches, as ingest would
        after verifying each: chain state, last checkpoint and last seal time."""
        lines = self.lines[: len(self.lines) if upto is None else upto]
        verifier = Verifier(self.genesis, expected_host=self.host)
        step = -(-len(lines) // batches)
        for start in range(0, len(lines), step):
            batch = lines[start : start + step]
            body = b"\n".join(batch) + b"\n"
            found = list(verifier.feed_chunk(Chunk(f"batch:{start}", 0, body)))
            assert not [f for f in found if f.severity == "error"], found
            seals = [parse_line(line) for line in batch if b'"type":"seal"' in line]
            seals = [record for record in seals if record.type == "seal"]
            checkpoint = seal_ns = None
            if seals:
                cp, sig = Checkpoint.from_seal(seals[-1])
                checkpoint = json.dumps(SignedCheckpoint(cp, sig, seals[-1].seq).to_dict())
                seal_ns = seals[-1].ts
            state = json.dumps(verifier.state().to_dict())
            hashes = [record_hash(line) for line in batch]
            assert store.append(
                self.host, start, batch, hashes, state, checkpoint, seal_ns, seal_ns or 1
            )
