"""The collector's fleet log witnessed by real ``sealtrail witness`` processes: published only
with the policy's quorum, evidence bundles that verify offline, and witnesses that are down,
slow, lying, or shown a split view."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from agent.c2sp.checkpoint import Checkpoint
from agent.c2sp.keys import NoteError
from agent.c2sp.note import Note, Signature
from agent.c2sp.policy import Policy
from agent.c2sp.proof import TlogProof
from agent.collector.fleet import note_signer
from agent.collector.store import open_store
from agent.journal import merkle
from agent.journal.keys import PublicKey
from agent.witness.client import Cosigners
from agent.witness.evidence import BundleError, verify_bundle
from tests.collector.server_proc import ROOT, sealtrail
from tests.witness.fleetenv import Fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """On SQLite; the first test runs on PostgreSQL as well (``fleet_on``)."""
    f = Fleet(tmp_path, str(tmp_path / "store.sqlite"))
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def fleet_on(tmp_path: Path, store_url: str) -> Iterator[Fleet]:
    f = Fleet(tmp_path, store_url)
    try:
        yield f
    finally:
        f.close()


def _three(fleet: Fleet) -> Path:
    ws = [fleet.witness(f"w{i}") for i in (1, 2, 3)]
    return fleet.policy([(f"W{i + 1}", w.vkey.to_text(), w.url) for i, w in enumerate(ws)])


def _size(note: bytes) -> int:
    return Checkpoint.parse(Note.parse(note).text).size


def test_witnessed_fleet_checkpoint_and_evidence_bundle(fleet_on: Fleet, tmp_path: Path) -> None:
    fleet = fleet_on
    policy_path = _three(fleet)
    policy = Policy.parse(policy_path.read_text())
    fleet.send(600)
    with open_store(fleet.collector.store or "") as store:
        entries = store.fleet_size()
    assert entries >= 5  # one per accepted batch
    note = fleet.wait_published(lambda n: _size(n) == entries)
    cosigned, _ = policy.verify_checkpoint(Note.parse(note), fleet.origin)
    assert cosigned == {"W1", "W2", "W3"} or len(cosigned) >= 2
    # the next answers carry it, and the agent's check of it passes with collector.pub
    fleet.send(100)
    answered = Note.parse(fleet.last_answer["fleet"]["checkpoint"].encode())
    assert policy.verify_checkpoint(answered, fleet.origin)  # witnessed, as published
    from agent.forward import fleetnote

    kept = fleetnote.check(
        fleet.last_answer["fleet"],
        fleet.origin,
        PublicKey.load(tmp_path / "host-a-bundle" / "collector.pub"),
    )
    assert kept.size >= entries and kept.host_size > 0
    # the witnesses serve what they cosigned (monitoring GET)
    for w in fleet.witnesses:
        assert sealtrail("witness", "status", "--dir", str(w.dir)).returncode == 0
    bundle = tmp_path / "record-123.tlog-proof"
    with open(bundle, "wb") as out:
        subprocess.run(
            [sys.executable, "-m", "agent.cli", "collector", "prove", "--dir",
             str(fleet.collector.dir), "--host", "host-a", "--seq", "123"],
            stdout=out, check=True, cwd=ROOT,
        )  # fmt: skip
    ok = sealtrail(
        "verify-bundle", str(bundle), "--host-key", str(fleet.host.pub), "--policy",
        str(policy_path),
    )  # fmt: skip
    assert "verified: record 123" in ok.stdout
    print(ok.stdout)
    data = bundle.read_bytes()
    assert data.startswith(b"c2sp.org/tlog-proof@v1\nextra ")
    key = PublicKey.load(fleet.host.pub)
    assert verify_bundle(data, key, policy).record.seq == 123
    # hostile JSON in the host proof is refused with a message, never a traceback
    proof = TlogProof.parse(data)
    assert proof.extra is not None
    doc = json.loads(proof.extra)
    rotation = {"type": "verdict", "action": [], "policy": "p", "rule": "r", "seq": 1, "ts": "1",
                "host": "host-a", "boot_id": "b", "prev": "0" * 64}  # fmt: skip
    doc["checkpoint"]["rotations"] = [rotation]
    for extra in (b"[" * 100_000 + b"]" * 100_000, json.dumps(doc).encode()):
        hostile = dataclasses.replace(proof, extra=extra).to_bytes()
        with pytest.raises(BundleError, match=r"^bundle: "):
            verify_bundle(hostile, key, policy)
    # every single-byte change of the bundle, at every position, fails with a message
    messages: dict[str, int] = {}
    started = time.perf_counter()
    for pos in range(len(data)):
        for flip in (0x01, 0x20):
            changed = bytearray(data)
            changed[pos] ^= flip
            with pytest.raises(BundleError) as caught:
                verify_bundle(bytes(changed), key, policy)
            text = str(caught.value)
            assert text.startswith("bundle: ") and len(text) > 20
            step = text.split(":")[1].strip()
            messages[step] = messages.get(step, 0) + 1
    assert len(messages) > 5  # the failures name different steps
    took = time.perf_counter() - started
    print(
        f"{took:.1f} s: {2 * len(data)} changes of a {len(data)}-byte bundle refused, "
        f"{len(messages)} distinct messages"
    )
    other = sealtrail(
        "verify-bundle", str(bundle), "--host-key", str(fleet.root / "coll" / "collector.pub"),
        "--policy", str(policy_path), check=False,
    )  # fmt: skip
    assert other.returncode == 1 and "sealtrail: error: bundle: host proof" in other.stderr


def test_down_slow_and_lying_witnesses_against_2_of_3(fleet: Fleet) -> None:
    good = fleet.witness("w1")
    down = fleet.witness("w2")
    liar = fleet.fake("w3", "lying")
    slow = fleet.fake("w4", "slow")
    members = [
        ("W1", good.vkey.to_text(), good.url),
        ("W2", down.vkey.to_text(), down.url),
        ("W3", liar.signer.verifier.to_text(), liar.url),
    ]
    down.stop()
    fleet.policy(members)
    fleet.send(200)
    # W1 cosigns, W2 is down, W3's cosignatures do not verify: 1 of 3, never published
    assert fleet.wait_log("not published: the witnesses' quorum is not met", 30)
    assert liar.requests > 0
    assert fleet.published() is None
    # with W2 back (the collector asks again at the next heartbeat or growth) it is published,
    # with the cosignatures of W1 and W2 only
    down.start()
    note = fleet.wait_published(lambda n: True)
    names = {s.name for s in Note.parse(note).signatures}
    assert names == {fleet.origin, "w1.example", "w2.example"}
    # a slow witness in place of the liar: the quorum of the two others publishes without it
    fleet.collector.stop()
    members[2] = ("W3", slow.signer.verifier.to_text(), slow.url)
    fleet.policy(members)
    before = _size(note)
    grown = fleet.send(200)
    assert grown > 0
    note = fleet.wait_published(lambda n: _size(n) > before, 15)
    assert {s.name for s in Note.parse(note).signatures} == names
    assert slow.requests > 0
    # after the restart the collector knew no witness's size: each 409 named it, and it went on


def test_split_view_gets_no_quorum(fleet: Fleet) -> None:
    _three(fleet)
    fleet.send(300)
    with open_store(fleet.collector.store or "") as store:
        size = store.fleet_size()
        entries = list(store.fleet_entries(0, size))
    fleet.wait_published(lambda n: _size(n) == size)
    fleet.collector.stop()
    policy = Policy.parse((fleet.collector.dir / "witnesses.policy").read_text())
    signer = note_signer(fleet.collector.dir / "collector.key", fleet.origin)
    leaves = [merkle.leaf_hash(e) for e in entries]

    def present(leaves: list[bytes], old_known: dict[str, int]) -> set[str]:
        cp = Checkpoint(signer.name, len(leaves), merkle.subtree_root(leaves))
        note = Note(cp.text(), (Signature(signer.name, signer.key_id, signer.sign(cp.text())),))

        async def go() -> set[str]:
            async with aiohttp.ClientSession() as session:
                client = Cosigners(policy, session)
                client.known.update(old_known)
                out = await client.cosign(
                    note, cp, lambda old: merkle.consistency_proof(old, leaves) if old else []
                )
                return set(out.cosignatures)

        return asyncio.run(go())

    known = {n: size for n in policy.witnesses}
    # the same size with another history: a host checkpoint dropped, another in its place
    forged = [*leaves[:2], merkle.leaf_hash(b"rewritten"), *leaves[3:]]
    assert present(forged, known) == set()
    # a history that drops a host's entry and is rebuilt longer: no proof can link it
    rebuilt = [*leaves[:2], *leaves[3:], *(merkle.leaf_hash(b"new %d" % i) for i in range(4))]
    assert present(rebuilt, known) == set()
    # each witness kept the conflicting checkpoints, signed by the collector's key
    for w in fleet.witnesses:
        out = sealtrail("witness", "status", "--dir", str(w.dir), "--json", check=False)
        assert out.returncode == 1 and '"conflicts": 2' in out.stdout
    # the true history still gets its cosignatures
    # (the call returns once the quorum is met: 2 of 3 at least)
    assert policy.satisfied(present([*leaves, merkle.leaf_hash(b"next")], known))
    with pytest.raises(NoteError):
        policy.verify_checkpoint(Note.parse(b"x\n\n\xe2\x80\x94 a AAAAAAA=\n"), signer.name)
