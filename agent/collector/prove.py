"""``collector prove``: the evidence bundle of one stored record (agent.witness.evidence).

It takes the latest published (witnessed) fleet checkpoint, the host's first fleet entry that
covers the record, and builds from the store: the record's inclusion proof in the host's
journal at that entry's host checkpoint (with the key rotations from the genesis key), and the
entry's inclusion proof in the fleet tree. Reads every record hash of the host up to that
checkpoint and every fleet entry up to the fleet size once.
"""

from __future__ import annotations

from agent.collector.errors import CollectorError
from agent.collector.hoststate import enrolled_host
from agent.collector.store.base import Store
from agent.journal import merkle
from agent.journal.checkpoint import InclusionProof, SignedCheckpoint
from agent.journal.record import Record, parse_line
from agent.witness.evidence import make_bundle, parse_entry

_ROTATION_MARK = b'"type":"key_rotation"'


def prove(store: Store, host: str, seq: int) -> bytes:
    enrolled_host(store, host)
    published = store.fleet_published()
    if published is None:
        raise CollectorError("no fleet checkpoint is published yet (witnessed): nothing to prove")
    fleet_size, note = published
    found = store.fleet_find(host, seq, fleet_size)
    if found is None:
        raise CollectorError(
            f"record {seq} of host {host} is in no host checkpoint that the published fleet "
            f"checkpoint (size {fleet_size}) covers yet: try again after the next one"
        )
    index, entry = found
    checkpoint, sig = parse_entry(entry)
    size = checkpoint.size
    rotations: list[Record] = []
    line = b""
    for n, stored in store.records(host, 0, size):
        if n == seq:
            line = stored
        if _ROTATION_MARK in stored:
            record = parse_line(stored)
            if record.type == "key_rotation":
                rotations.append(record)
    path = merkle.stream_inclusion_proof(seq, size, store.record_hashes(host, 0, size))
    host_proof = InclusionProof(
        SignedCheckpoint(checkpoint, sig, size, tuple(rotations)), seq, line, tuple(path)
    )
    leaves = [merkle.leaf_hash(e) for e in store.fleet_entries(0, fleet_size)]
    return make_bundle(host_proof, index, merkle.inclusion_proof(index, leaves), note)
