"""``sealtrail witness serve`` as a real process on loopback, answering tlog-witness v1."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.c2sp.keys import Signer
from agent.c2sp.note import Note, Signature, parse_signatures
from agent.journal import merkle
from agent.witness.protocol import AddCheckpoint
from tests.collector.server_proc import sealtrail
from tests.witness.witnessproc import Log, WitnessProc


@pytest.fixture
def log() -> Log:
    return Log.new(n=20)


@pytest.fixture
def witness(tmp_path: Path, log: Log) -> Iterator[WitnessProc]:
    w = WitnessProc(tmp_path / "w1", "w1.example", [log])
    try:
        yield w.start()
    finally:
        w.cleanup()


def _cosigned(w: WitnessProc, log: Log, size: int, body: bytes) -> int:
    status, _, answer = w.post(body)
    assert status == 200, answer
    [sig] = parse_signatures(answer)
    note = log.note(size).with_signatures([sig])
    [verified] = note.open([w.vkey])
    assert verified.timestamp is not None and abs(verified.timestamp - time.time()) < 60
    return verified.timestamp


def test_cosigns_a_consistent_history(witness: WitnessProc, log: Log) -> None:
    _cosigned(witness, log, 3, log.request(0, 3))
    _cosigned(witness, log, 7, log.request(3, 7))
    _cosigned(witness, log, 7, log.request(7, 7))  # the same checkpoint again: a fresh time
    _cosigned(witness, log, 20, log.request(7, 20))
    hashed = hashlib.sha256(log.origin.encode()).hexdigest()
    status, _, body = witness.http("GET", f"/{hashed}/checkpoint")
    assert status == 200
    note = Note.parse(body)
    assert note.text == log.checkpoint(20).text()
    assert note.open([log.signer.verifier])
    assert note.open([witness.vkey])
    assert witness.http("GET", f"/{'0' * 64}/checkpoint")[0] == 404


def test_error_answers(witness: WitnessProc, log: Log) -> None:
    other = Log.new("example.com/other", 3)
    status, _, body = witness.post(other.request(0, 3))
    assert (status, body) == (404, b"unknown log origin 'example.com/other'\n")
    impostor = Log(Signer.generate(log.origin), log.leaves)  # same name, another key
    assert witness.post(impostor.request(0, 3))[0] == 403
    forged = log.note(3)
    sig = forged.signatures[0]
    bad = Note(forged.text, (Signature(sig.name, sig.key_id, bytes(64)),))
    assert witness.post(AddCheckpoint(0, (), bad).to_bytes())[0] == 403
    assert witness.post(b"old 1\nnot a proof")[0] == 400
    status, _, body = witness.post(log.request(0, 3).replace(b"old 0", b"old 4", 1))
    assert status == 400, body
    _cosigned(witness, log, 5, log.request(0, 5))
    status, ctype, body = witness.post(log.request(3, 7))
    assert (status, ctype, body) == (409, "text/x.tlog.size", b"5\n")
    status, ctype, body = witness.post(log.request(0, 7))
    assert (status, ctype, body) == (409, "text/x.tlog.size", b"5\n")
    # a proof from 0 must be empty; size 0 needs the empty root
    assert witness.post(AddCheckpoint(5, (bytes(32),), log.note(5)).to_bytes())[0] == 422


def test_empty_tree_rules(tmp_path: Path, log: Log) -> None:
    w = WitnessProc(tmp_path / "w", "w.example", [log])
    try:
        w.start()
        bad_empty = AddCheckpoint(0, (), log.note(0, merkle.leaf_hash(b"x"))).to_bytes()
        assert w.post(bad_empty)[0] == 422
        proof_from_zero = AddCheckpoint(0, (bytes(32),), log.note(3)).to_bytes()
        assert w.post(proof_from_zero)[0] == 422
        _cosigned(w, log, 0, AddCheckpoint(0, (), log.note(0)).to_bytes())
    finally:
        w.cleanup()


def test_split_view_is_refused_and_kept(witness: WitnessProc, log: Log) -> None:
    _cosigned(witness, log, 8, log.request(0, 8))
    fork = Log(
        log.signer, log.leaves[:5] + [merkle.leaf_hash(b"rewritten %d" % i) for i in range(15)]
    )
    status, _, body = witness.post(fork.request(8, 8))  # same size, another root
    assert status == 422 and b"another root" in body
    status, _, body = witness.post(fork.request(8, 12))  # a history that drops entries 5..7
    assert status == 422 and b"does not verify" in body
    _cosigned(witness, log, 12, log.request(8, 12))  # the true history goes on
    out = json.loads(
        sealtrail("witness", "status", "--dir", str(witness.dir), "--json", check=False).stdout
    )
    [row] = out["logs"]
    assert (row["size"], row["conflicts"]) == (12, 2)
    from agent.witness.state import WitnessState

    witness.stop()
    state = WitnessState(witness.dir / "state.sqlite", witness.dir / "cosigned.log")
    try:
        conflicts = state.conflicts(log.origin)
    finally:
        state.close()
    # each conflict is a pair of notes both signed by the log: the proof of a split view
    for c in conflicts:
        theirs, ours = Note.parse(c.note), Note.parse(c.cosigned)
        assert theirs.open([log.signer.verifier]) and ours.open([log.signer.verifier])
        assert theirs.text != ours.text
    assert Note.parse(conflicts[0].note).text == fork.checkpoint(8).text()
    assert Note.parse(conflicts[0].cosigned).text == log.checkpoint(8).text()


def test_persisted_before_the_answer(witness: WitnessProc, log: Log) -> None:
    _cosigned(witness, log, 9, log.request(0, 9))
    witness.stop(signal.SIGKILL)  # no clean shutdown
    witness.start()
    assert witness.post(log.request(0, 9))[2] == b"9\n"
    _cosigned(witness, log, 10, log.request(9, 10))


def test_restarted_from_an_older_state_refuses(witness: WitnessProc, log: Log) -> None:
    _cosigned(witness, log, 4, log.request(0, 4))
    witness.stop()
    backup = witness.dir.parent / "backup.sqlite"
    shutil.copy(witness.dir / "state.sqlite", backup)
    witness.start()
    _cosigned(witness, log, 9, log.request(4, 9))
    witness.stop()
    for leftover in ("state.sqlite-wal", "state.sqlite-shm"):
        (witness.dir / leftover).unlink(missing_ok=True)
    shutil.copy(backup, witness.dir / "state.sqlite")  # the old state restored
    with pytest.raises(AssertionError, match="older than what this witness cosigned"):
        witness.start()
    witness.proc = None
    status = sealtrail("witness", "status", "--dir", str(witness.dir), check=False)
    assert status.returncode != 0 and "refusing to start" in status.stderr
