"""The agent keeps the largest fleet checkpoint covering it that the collector's answers carry
(checked with the collector's key), beside its status file."""

from __future__ import annotations

import random
from pathlib import Path

from agent.c2sp.checkpoint import Checkpoint
from agent.c2sp.keys import Signer
from agent.c2sp.note import Note, Signature
from agent.forward.client import Answer
from agent.forward.fleetnote import FILE
from agent.forward.forwarder import Forwarder
from agent.forward.pacing import Pacing
from agent.forward.source import JournalSource
from agent.journal import merkle
from agent.journal.record import check_fields
from agent.journal.segments import iter_lines
from tests.forward.fakes import FakeCollector
from tests.unit.journal.conftest import Journal, journal

__all__ = ["journal"]


class FleetCollector(FakeCollector):
    """Adds a fleet checkpoint of ``sizes[n]`` to the n-th accepted answer."""

    signer: Signer
    sizes: list[int]
    forge: bool = False

    def ingest(self, start: int, body: bytes) -> Answer:
        answer = super().ingest(start, body)
        if answer.status != 200 or not self.sizes:
            return answer
        size = self.sizes.pop(0)
        leaves = [merkle.leaf_hash(b"%d" % i) for i in range(size)]
        text = Checkpoint("coll", size, merkle.subtree_root(leaves)).text()
        sig = self.signer.sign(text)
        if self.forge:
            sig = bytes(64)
        note = Note(text, (Signature(self.signer.name, self.signer.key_id, sig),))
        fleet = {"checkpoint": note.to_bytes().decode(), "index": size - 1, "host_size": 5}
        return Answer(200, {**answer.body, "fleet": fleet}, None)


def _forwarder(journal: Journal, collector: FleetCollector, status: Path) -> Forwarder:
    return Forwarder(
        JournalSource(journal.dir, max_records=20),
        collector,
        collector.key.public,
        host=journal.host,
        durable=len(list(iter_lines(journal.dir))),
        collector="https://collector.test:8443",
        pacing=Pacing(rate=0, batch_interval=0),
        status_dir=status,
        clock=lambda: 1000.0,
        rng=random.Random(7),
    )


def _collector(journal: Journal, sizes: list[int]) -> FleetCollector:
    c = FleetCollector(journal.host)
    # the collector's note key is its receipt key, named after it ("coll" in the receipts)
    c.signer = Signer("coll", c.key._key.private_bytes_raw())
    c.sizes = sizes
    return c


def test_keeps_the_largest_fleet_checkpoint(journal: Journal, tmp_path: Path) -> None:
    journal.fill(100, seal_every=10)
    collector = _collector(journal, [3, 9, 4, 7, 2, 1])
    fwd = _forwarder(journal, collector, tmp_path)
    for _ in range(50):
        if fwd.step().idle:
            break
    assert fwd.fleet is not None and fwd.fleet.size == 9
    kept = Note.parse((tmp_path / FILE).read_bytes())
    assert Checkpoint.parse(kept.text).size == 9
    assert kept.open([collector.signer.verifier])
    assert fwd.status()["fleet"] == {"size": 9, "index": 8, "host_size": 5}
    # journaled too, each larger one once (the run directory does not survive a reboot)
    kept_records = [f for t, f in fwd.take_records() if t == "fleet_checkpoint"]
    sizes = [Checkpoint.parse(Note.parse(str(f["checkpoint"]).encode()).text).size
             for f in kept_records]  # fmt: skip
    assert sizes == [3], sizes  # at most one a minute (FLEET_RECORD_INTERVAL)
    assert kept_records[-1]["index"] == 2 and kept_records[-1]["collector"] == "coll"
    check_fields("fleet_checkpoint", kept_records[-1])  # a record the journal takes


def test_ignores_a_fleet_checkpoint_the_collector_did_not_sign(
    journal: Journal, tmp_path: Path
) -> None:
    journal.fill(60, seal_every=10)
    collector = _collector(journal, [5, 6])
    collector.forge = True
    fwd = _forwarder(journal, collector, tmp_path)
    for _ in range(50):
        if fwd.step().idle:
            break
    assert collector.lines  # forwarding went on
    assert fwd.fleet is None and not (tmp_path / FILE).exists()
    assert not [t for t, _ in fwd.take_records() if t == "fleet_checkpoint"]
