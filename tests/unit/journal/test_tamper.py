"""The tamper corpus of issue 5: every attack is caught, naming the first affected seq."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from agent.journal.canonical import canonical
from agent.journal.checkpoint import Checkpoint, rotation_signing_input
from agent.journal.keys import KeyStore, SigningKey, b64
from agent.journal.reader import latest_checkpoint
from agent.journal.record import record_hash
from agent.journal.verify import Finding, Summary

from .conftest import Journal, assert_caught_at, assert_ranges_cover, errors, first_error_seq


def find(journal: Journal, seq: int) -> tuple[Path, int, list[bytes]]:
    for path in journal.segments():
        lines = path.read_bytes().splitlines()
        for i, line in enumerate(lines):
            if json.loads(line)["seq"] == seq:
                return path, i, lines
    raise AssertionError(f"seq {seq} not found")


def line_of(journal: Journal, seq: int) -> bytes:
    _, i, lines = find(journal, seq)
    return lines[i]


def seals(journal: Journal) -> list[int]:
    return [int(json.loads(d)["seq"]) for _, _, d in journal.lines() if b'"type":"seal"' in d]


def seq_of_type(journal: Journal, rtype: str, nth: int = 0) -> int:
    found = [json.loads(d)["seq"] for _, _, d in journal.lines() if json.loads(d)["type"] == rtype]
    return int(found[nth])


def edit(line: bytes, **changes: object) -> bytes:
    data = json.loads(line)
    data.update(changes)
    return canonical(data)


def rebuild_from(journal: Journal, seq: int, signer: SigningKey | None = None) -> None:
    """Re-chain every record from ``seq`` on with fresh hashes; re-sign seals if given a key."""
    prev: str | None = None
    from agent.journal.merkle import CompactTree

    tree = CompactTree()
    for path in journal.segments():
        out = []
        for line in path.read_bytes().splitlines():
            data = json.loads(line)
            if data["seq"] >= seq:
                assert prev is not None
                data["prev"] = prev
                if data["type"] == "seal" and signer is not None:
                    cp = Checkpoint(
                        data["host"],
                        tree.size,
                        tree.root().hex(),
                        prev,
                        int(data["ts"]),
                        signer.key_id,
                    )
                    data.update(
                        key_id=signer.key_id,
                        root=cp.root,
                        size=cp.size,
                        sig=b64(signer.sign(cp.signing_input())),
                    )
                line = canonical(data)
            digest = record_hash(line)
            tree.append(digest)
            prev = digest.hex()
            out.append(line)
        journal.rewrite(path, out)


@pytest.fixture
def built(journal: Journal) -> Journal:
    journal.fill(240, seal_every=20)
    assert journal.verify().ok, errors(journal.verify())
    assert len(journal.segments()) >= 4
    return journal


TARGET = 101  # an event record in the middle of a sealed batch


def test_untouched_journal_verifies(built: Journal) -> None:
    summary = built.verify(strict=True)
    assert summary.ok and summary.unsealed == 0 and summary.seals >= 12


@pytest.mark.parametrize("trial", range(24))
def test_one_bit_flipped(built: Journal, trial: int) -> None:
    path, i, lines = find(built, TARGET)
    rnd = random.Random(trial)
    pos = rnd.randrange(len(lines[i]))
    raw = bytearray(lines[i])
    raw[pos] ^= 1 << rnd.randrange(8)
    lines[i] = bytes(raw)
    built.rewrite(path, lines)
    summary = built.verify()
    assert not summary.ok
    assert_caught_at(summary, TARGET)


def test_field_changed_hash_not_stored(built: Journal) -> None:
    """The record hash is not stored in the line, so 'recomputing it' changes nothing:
    the next record's prev still names the old hash."""
    path, i, lines = find(built, TARGET)
    lines[i] = edit(lines[i], path="/usr/bin/innocent")
    built.rewrite(path, lines)
    summary = built.verify()
    assert_caught_at(summary, TARGET, "hash mismatch")


def test_field_changed_and_next_link_recomputed(built: Journal) -> None:
    """The attacker also patches the next record's prev. Then record TARGET+1's link is the
    first broken one, and only the seal over the batch, whose Merkle root no longer matches,
    covers TARGET: the first affected seq is named as the first of that batch."""
    path, i, lines = find(built, TARGET)
    lines[i] = edit(lines[i], pid=1)
    built.rewrite(path, lines)
    path, i, lines = find(built, TARGET + 1)
    lines[i] = edit(lines[i], prev=record_hash(line_of(built, TARGET)).hex())
    built.rewrite(path, lines)
    summary = built.verify()
    root = [f for f in summary.findings if "Merkle root" in f.message]
    assert root and root[0].seq is not None and root[0].seq_end is not None
    assert root[0].seq <= TARGET <= root[0].seq_end
    assert first_error_seq(summary) == TARGET + 1
    assert_ranges_cover(summary, TARGET)


def test_record_deleted(built: Journal) -> None:
    path, i, lines = find(built, TARGET)
    del lines[i]
    built.rewrite(path, lines)
    summary = built.verify()
    assert_caught_at(summary, TARGET, "missing")


def test_two_records_swapped(built: Journal) -> None:
    path, i, lines = find(built, TARGET)
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    built.rewrite(path, lines)
    assert_caught_at(built.verify(), TARGET)


def test_record_inserted(built: Journal) -> None:
    path, i, lines = find(built, TARGET)
    forged = edit(lines[i], pid=4242, prev=record_hash(line_of(built, TARGET - 1)).hex())
    lines.insert(i, forged)
    built.rewrite(path, lines)
    assert_caught_at(built.verify(), TARGET)


def test_chain_rebuilt_without_key(built: Journal) -> None:
    path, i, lines = find(built, TARGET)
    lines[i] = edit(lines[i], argv=["rm", "-rf", "/"])
    built.rewrite(path, lines)
    rebuild_from(built, TARGET + 1)
    summary = built.verify()
    first = next(f for f in summary.findings if f.severity == "error")
    assert first.seq is not None and first.seq_end is not None
    assert first.seq <= TARGET <= first.seq_end, str(first)
    assert "Merkle root" in first.message
    assert_ranges_cover(summary, TARGET)
    # Nothing but the seals can tell: the first single-record finding is the seal itself.
    assert first_error_seq(summary) == first.seq_end + 1


def test_chain_rebuilt_and_seals_signed_by_another_key(built: Journal) -> None:
    path, i, lines = find(built, TARGET)
    lines[i] = edit(lines[i], argv=["rm", "-rf", "/"])
    built.rewrite(path, lines)
    rebuild_from(built, TARGET + 1, signer=SigningKey.generate())
    summary = built.verify()
    # The roots are right and the chain is whole: the first evidence is the first re-signed
    # seal, which says which batch it leaves unsealed.
    first_seal_after = min(seq for seq in seals(built) if seq > TARGET)
    assert first_error_seq(summary) == first_seal_after
    assert "not in the rotation chain" in errors(summary)[0]


def test_seal_signature_from_another_key(built: Journal) -> None:
    seal_seq = seq_of_type(built, "seal", 5)
    path, i, lines = find(built, seal_seq)
    data = json.loads(lines[i])
    cp, _ = Checkpoint.from_seal(
        __import__("agent.journal.record").journal.record.parse_line(lines[i])
    )
    other = SigningKey.generate()
    lines[i] = edit(lines[i], sig=b64(other.sign(cp.signing_input())))
    built.rewrite(path, lines)
    summary = built.verify()
    assert_caught_at(summary, seal_seq)
    assert any("signature is not valid" in e for e in errors(summary))
    assert data["key_id"] != other.key_id
    # And with the other key's id, too: named as outside the rotation chain.
    lines[i] = edit(lines[i], key_id=other.key_id)
    built.rewrite(path, lines)
    summary = built.verify()
    assert_caught_at(summary, seal_seq)
    assert any(
        f"seal {seal_seq}" not in e and "not in the rotation chain" in e for e in errors(summary)
    )


def first_seq_of(path: Path) -> int:
    return int(json.loads(path.read_bytes().splitlines()[0])["seq"])


def test_whole_segment_deleted(built: Journal) -> None:
    victim = built.segments()[1]
    first = first_seq_of(victim)
    victim.unlink()
    summary = built.verify()
    assert_caught_at(summary, first)
    assert any("seg-000002.jsonl" in e and "missing" in e for e in errors(summary))


def test_segment_from_another_host_spliced(built: Journal, tmp_path: Path) -> None:
    other = Journal(tmp_path / "other", host="host-b")
    other.fill(240, seal_every=20)
    victim = built.segments()[1]
    first = first_seq_of(victim)
    shutil.copy(other.segments()[1], victim)
    summary = built.verify()
    assert_caught_at(summary, first)
    assert any("host-b" in e for e in errors(summary))


def test_old_segment_replayed(built: Journal) -> None:
    segs = built.segments()
    first = first_seq_of(segs[2])
    shutil.copy(segs[1], segs[2])
    summary = built.verify()
    assert_caught_at(summary, first)


NOT_STOPPED = "does not end with the agent's stop record and final seal"


def end_findings(summary: Summary) -> list[Finding]:
    return [f for f in summary.findings if NOT_STOPPED in f.message]


def cut_after_seal(journal: Journal, nth_last: int) -> int:
    """Delete every record after the ``nth_last`` seal from the end (1: the final seal), and
    the segments that then hold nothing; returns the first seq removed."""
    seal_seqs = seals(journal)
    keep_to = seal_seqs[-nth_last]
    for path in journal.segments():
        lines = path.read_bytes().splitlines()
        kept = [ln for ln in lines if json.loads(ln)["seq"] <= keep_to]
        if kept:
            journal.rewrite(path, kept)
        else:
            path.unlink()
    return keep_to + 1


def test_clean_journal_ends_with_stop_and_final_seal(built: Journal) -> None:
    summary = built.verify(strict=True)
    assert summary.ok and summary.clean_end and not end_findings(summary)
    assert [f for f in summary.findings if f.severity != "info"] == []


def test_clean_stop_cut_at_an_earlier_seal_fails_strict(built: Journal) -> None:
    """The stop record, its final seal and the last batches deleted, exactly at a seal: every
    remaining seal still verifies, so only the missing stop tells."""
    records = built.verify().records
    first_removed = cut_after_seal(built, 3)
    assert first_removed < records - 2
    summary = built.verify(strict=True)
    assert not summary.ok and not summary.clean_end
    (finding,) = end_findings(summary)
    assert finding.severity == "error" and errors(summary) == [str(finding)]
    assert "cut or crash (a local verify cannot tell which)" in finding.message
    assert finding.seq == first_removed - 1
    lenient = built.verify()  # without --strict: passes, but says so
    assert lenient.ok and [f.severity for f in end_findings(lenient)] == ["warning"]


def test_only_the_final_seal_cut_fails_strict(built: Journal) -> None:
    assert cut_after_seal(built, 2) == built.verify().records  # removes stop and its seal
    summary = built.verify(strict=True)
    assert not summary.ok and len(end_findings(summary)) == 1


def test_stop_without_its_final_seal_fails_strict(built: Journal) -> None:
    last = built.segments()[-1]
    built.rewrite(last, last.read_bytes().splitlines()[:-1])  # the journal ends with `stop`
    summary = built.verify(strict=True)
    assert not summary.ok and len(end_findings(summary)) == 1
    assert any("unsealed tail, 1 records" in e for e in errors(summary))


def test_tail_truncated_at_a_seal_boundary_caught_against_checkpoint(built: Journal) -> None:
    checkpoint = latest_checkpoint(built.dir)
    first_removed = cut_after_seal(built, 2)
    summary = built.verify(strict=True)  # on its own: a journal that did not stop cleanly
    assert errors(summary) == [str(f) for f in end_findings(summary)] != []
    summary = built.verify(against=checkpoint)
    assert_caught_at(summary, first_removed, "truncated")


def test_history_rewritten_before_checkpoint(built: Journal) -> None:
    checkpoint = latest_checkpoint(built.dir)
    path, i, lines = find(built, TARGET)
    lines[i] = edit(lines[i], pid=7)
    built.rewrite(path, lines)
    summary = built.verify(against=checkpoint)
    assert_caught_at(summary, TARGET)
    assert any("does not extend the checkpoint" in e for e in errors(summary))


def test_rotation_forged_with_erased_epoch_key(journal: Journal) -> None:
    journal.fill(200, seal_every=20, rotate_every=60)
    assert journal.verify().ok
    rotation = seq_of_type(journal, "key_rotation", 1)
    old_key_id = json.loads(line_of(journal, rotation))["old_key_id"]
    # The old epoch key is gone from disk: only the live key remains in the keys directory.
    assert not (journal.keys / f"epoch-{old_key_id}.key").exists()
    assert len(list(journal.keys.glob("epoch-*.key"))) == 1
    # So the attacker signs the forged rotation with a key of their own and re-signs what follows.
    evil = SigningKey.generate()
    path, i, lines = find(journal, rotation)
    data = json.loads(lines[i])
    data.update(new_key=b64(evil.public.raw), new_key_id=evil.key_id)
    data["sig"] = b64(evil.sign(rotation_signing_input(data)))
    lines[i] = canonical(data)
    journal.rewrite(path, lines)
    rebuild_from(journal, rotation + 1, signer=evil)
    summary = journal.verify()
    assert_caught_at(summary, rotation, "key rotation rejected")
    assert any("not in the rotation chain" in e for e in errors(summary))


def test_unsealed_tail_removed_caught_against_checkpoint(journal: Journal) -> None:
    w = journal.fill(100, seal_every=20, close=False)
    w.flush_and_seal()
    for i in range(5):
        w.append("event", {"kind": "exit", "pid": i})
    checkpoint = latest_checkpoint(journal.dir)
    assert checkpoint.tail is not None and checkpoint.tail.count == 5
    summary = journal.verify()
    assert summary.ok and summary.unsealed == 5
    assert not journal.verify(strict=True).ok
    last = journal.segments()[-1]
    lines = last.read_bytes().splitlines()
    first_removed = int(json.loads(lines[-5])["seq"])
    journal.rewrite(last, lines[:-5])
    summary = journal.verify(strict=True)  # the agent never stopped: only that is reported
    assert errors(summary) == [str(f) for f in end_findings(summary)] != []
    summary = journal.verify(against=checkpoint)
    assert_caught_at(summary, first_removed, "unsealed tail changed")
    os.close(w._live.fd)


def test_torn_last_line_is_recovered_not_tampering(journal: Journal) -> None:
    w = journal.fill(50, seal_every=10, close=False)
    w.append("event", {"kind": "exit", "pid": 1})
    os.close(w._live.fd)  # crash
    last = journal.segments()[-1]
    whole = last.read_bytes()
    last.write_bytes(whole[:-17])  # the tail of the last line never reached the disk
    summary = journal.verify()
    assert summary.ok and any("torn last line" in str(f) for f in summary.findings)
    assert not journal.verify(strict=True).ok
    w = journal.writer()
    assert w.recovery is not None
    assert w.recovery.cut_bytes == len(whole.splitlines()[-1]) + 1 - 17
    assert w.recovery.partial_seq == w.recovery.last_good_seq + 1
    w.close()
    summary = journal.verify(strict=True)
    assert summary.ok, errors(summary)
    recovery = [json.loads(d) for _, _, d in journal.lines() if b'"recovery"' in d]
    assert recovery and recovery[0]["cut_bytes"] == w.recovery.cut_bytes


def crash_and_restart(journal: Journal) -> None:
    """An agent run that dies after a seal (no stop record), then a run that stops cleanly."""
    w = journal.fill(50, seal_every=10, close=False)
    w.flush_and_seal()
    os.close(w._live.fd)  # crash: nothing torn, nothing unsealed, no stop record
    summary = journal.verify(strict=True)
    assert errors(summary) == [str(f) for f in end_findings(summary)] != []
    w = journal.writer(boot_id="boot-2")
    assert w.recovery is not None and w.recovery.cut_bytes == 0
    w.append("start", {"version": "0.1.0"})
    w.close({"reason": "test"})


def test_crash_accounted_for_by_the_recovery_record_passes_strict(journal: Journal) -> None:
    crash_and_restart(journal)
    summary = journal.verify(strict=True)
    assert summary.ok and summary.clean_end and summary.recoveries == 1, errors(summary)
    (note,) = [f for f in summary.findings if f.severity == "warning"]
    assert "crash or cut (a local verify cannot tell which)" in note.message
    assert note.seq == seq_of_type(journal, "recovery")


def test_cut_at_a_seal_then_restarted_looks_like_a_crash(built: Journal) -> None:
    """What a local verify cannot see: the cut batches are gone and the next run's recovery
    record says only that the run before it did not stop cleanly (the collector can tell)."""
    cut_after_seal(built, 3)
    w = built.writer(boot_id="boot-2")
    assert w.recovery is not None and w.recovery.cut_bytes == 0
    w.close()
    summary = built.verify(strict=True)
    assert summary.ok and summary.recoveries == 1
    assert any("crash or cut" in f.message for f in summary.findings if f.severity == "warning")


def test_recovery_record_that_misstates_the_journal_before_it(journal: Journal) -> None:
    crash_and_restart(journal)
    rec = seq_of_type(journal, "recovery")
    path, i, lines = find(journal, rec)
    lines[i] = edit(lines[i], last_sealed_seq=3, unsealed_kept=rec - 4)
    journal.rewrite(path, lines)
    store = KeyStore(journal.keys)
    rebuild_from(journal, rec + 1, signer=store.load(store.genesis().key_id))
    summary = journal.verify(strict=True)
    assert_caught_at(summary, rec, "recovery record does not describe the journal before it")


def current_key(journal: Journal) -> SigningKey:
    """The live epoch key, as an intruder holding the host finds it on disk."""
    store = KeyStore(journal.keys)
    (kid,) = store.private_key_ids()
    return store.load(kid)


def append_resealed(journal: Journal, types: list[str], signer: SigningKey) -> None:
    """Append records of ``types`` (a seal where named) and re-sign every seal from there on."""
    last = journal.segments()[-1]
    lines = last.read_bytes().splitlines()
    seq = int(json.loads(lines[-1])["seq"]) + 1
    template = json.loads(lines[-1])
    for n, rtype in enumerate(types):
        data = {k: template[k] for k in ("boot_id", "host", "prev", "ts")}
        data.update(seq=seq + n, type=rtype)
        if rtype == "seal":
            data.update(size=0, root="", key_id="", sig="")
        elif rtype == "event":
            data.update(kind="exit", pid=7)
        lines.append(canonical(data))
    journal.rewrite(last, lines)
    rebuild_from(journal, seq, signer=signer)


def test_cut_given_a_new_stop_with_the_current_epoch_key_passes(built: Journal) -> None:
    """The limit docs/journal-format.md states: whoever holds the live epoch key can cut within
    its epoch and write a stop and a final seal that verify. Only the collector can tell."""
    cut_after_seal(built, 3)
    append_resealed(built, ["stop", "seal"], current_key(built))
    summary = built.verify(strict=True)
    assert summary.ok and summary.clean_end, errors(summary)


def test_cut_in_an_erased_epoch_cannot_be_given_a_new_stop(journal: Journal) -> None:
    """Forward security: the key of an earlier epoch is erased, so a cut before the last key
    rotation cannot be resealed; the live key is not the one the chain expects there."""
    journal.fill(200, seal_every=20, rotate_every=60)
    rotation = seq_of_type(journal, "key_rotation", 2)
    cut_after_seal(journal, len([s for s in seals(journal) if s > rotation]) + 1)
    assert seq_of_type(journal, "key_rotation", 1) < journal.verify().records <= rotation
    append_resealed(journal, ["stop", "seal"], current_key(journal))
    summary = journal.verify(strict=True)
    assert any("not in the rotation chain" in e for e in errors(summary))


def test_records_after_the_stop_record_fail_strict(built: Journal) -> None:
    """Ordinary records between a stop and the final seal (the native fast path takes them):
    the journal does not end with stop and its seal, in both verify paths alike."""
    last = built.segments()[-1]
    built.rewrite(last, last.read_bytes().splitlines()[:-1])  # drop the final seal
    append_resealed(built, ["event"] * 3 + ["seal"], current_key(built))
    summary = built.verify(strict=True)
    assert errors(summary) == [str(f) for f in end_findings(summary)] != []


def test_current_epoch_rewritten_with_its_key_passes(journal: Journal) -> None:
    """Also stated as a limit: the live epoch's records, changed and resealed with its key."""
    journal.fill(200, seal_every=20, rotate_every=60)
    target = seq_of_type(journal, "key_rotation", 2) + 5
    path, i, lines = find(journal, target)
    lines[i] = edit(lines[i], argv=["rm", "-rf", "/"])
    journal.rewrite(path, lines)
    rebuild_from(journal, target, signer=current_key(journal))
    assert journal.verify(strict=True).ok
    earlier = seq_of_type(journal, "key_rotation", 1) + 5  # the same before the last rotation
    path, i, lines = find(journal, earlier)
    lines[i] = edit(lines[i], argv=["rm", "-rf", "/"])
    journal.rewrite(path, lines)
    rebuild_from(journal, earlier, signer=current_key(journal))
    assert any("not in the rotation chain" in e for e in errors(journal.verify()))


@pytest.mark.parametrize("change", ["extra-field", "padding-bits"])
def test_every_byte_of_the_final_seal_is_covered(journal: Journal, change: str) -> None:
    """Nothing follows the final seal: its line may hold only what its signature covers."""
    journal.fill(40, seal_every=20)
    path = journal.segments()[-1]
    stored = path.read_bytes().splitlines()
    seal = json.loads(stored[-1])
    assert seal["type"] == "seal" and journal.verify(strict=True).ok
    if change == "extra-field":
        seal["note"] = "all clear, nothing happened"
    else:  # the last character before "==" carries 4 bits the decoder ignores
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        sig = seal["sig"]
        seal["sig"] = sig[:-3] + alphabet[alphabet.index(sig[-3]) ^ 1] + "=="
    stored[-1] = canonical(seal)
    journal.rewrite(path, stored)
    summary = journal.verify(strict=True)  # the Python and the native path alike
    assert not summary.ok
    expected = "nothing signs" if change == "extra-field" else "not canonical base64"
    assert any(f"record {seal['seq']} " in e and expected in e for e in errors(summary))
