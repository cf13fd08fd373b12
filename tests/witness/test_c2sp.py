"""The C2SP primitives byte for byte against the examples the specifications and the reference
implementations publish, and against a second implementation (aics-tlog, from PyPI)."""

from __future__ import annotations

import base64
import hashlib

import aics_tlog.checkpoint as other_checkpoint
import aics_tlog.cosign as other_cosign
import aics_tlog.note as other_note
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.c2sp.checkpoint import Checkpoint
from agent.c2sp.keys import COSIGNATURE_V1, ED25519, NoteError, Signer, VerifierKey
from agent.c2sp.note import Note, Signature, parse_signatures
from agent.c2sp.policy import Policy
from agent.c2sp.proof import TlogProof
from agent.journal import merkle

# c2sp.org/signed-note, "Verifier keys", "Example"
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n\u2014 example.com/foo "
    "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
).encode()
# golang.org/x/mod/sumdb/note, package documentation (the reference implementation)
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + (
        "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNX"
        "gKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
    ).encode()
)
# c2sp.org/tlog-cosignature: the example cosigned checkpoint and its signed message
SPEC_CHECKPOINT = (
    b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)
SPEC_COSIGNED = (
    SPEC_CHECKPOINT
    + "\n\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN"
    "7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n\u2014 witness.example.com/w1 "
    "jWbPPwAAAABkGFDLEZMHwSRaJ"
    "NiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n".encode()
)
SPEC_COSIGNED_MESSAGE = b"cosignature/v1\ntime 1679315147\n" + SPEC_CHECKPOINT
# github.com/transparency-dev/formats note/note_cosigv1_test.go: published vkeys
FORMATS_COSIG_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
FORMATS_ED_VKEY = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"
FORMATS_COSIG = (
    "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJ"
    "XORmnFBOBA=="
)


def test_spec_vkey_and_note_verify() -> None:
    key = VerifierKey.from_text(SPEC_VKEY)
    assert (key.name, key.sig_type, key.key_id.hex()) == ("example.com/foo", ED25519, "530d903a")
    assert key.to_text() == SPEC_VKEY
    note = Note.parse(SPEC_NOTE)
    assert note.text == b"This is an example message.\n"
    assert note.to_bytes() == SPEC_NOTE
    [verified] = note.open([key])
    assert verified.timestamp is None


def test_go_reference_key_signs_the_same_bytes() -> None:
    signer = Signer.from_private_text(GO_SKEY)
    assert signer.verifier.to_text() == GO_VKEY
    assert signer.private_text() == GO_SKEY + "\n"
    note = Note(GO_TEXT, (Signature(signer.name, signer.key_id, signer.sign(GO_TEXT)),))
    assert note.to_bytes() == GO_NOTE  # Ed25519 is deterministic: byte for byte
    assert Note.parse(GO_NOTE).open([VerifierKey.from_text(GO_VKEY)])


def test_published_vkeys_key_ids() -> None:
    cosig = VerifierKey.from_text(FORMATS_COSIG_VKEY)
    assert (cosig.sig_type, cosig.key_id.hex()) == (COSIGNATURE_V1, "da77ade7")
    ed = VerifierKey.from_text(FORMATS_ED_VKEY)  # its base64 holds a "+"
    assert (ed.name, ed.sig_type, ed.key_id.hex()) == ("TEST", ED25519, "7997405c")
    wrong = FORMATS_COSIG_VKEY.replace("da77ade7", "da77ade8")
    with pytest.raises(NoteError, match="does not match the key"):
        VerifierKey.from_text(wrong)


def test_spec_cosignature_layout() -> None:
    """The example's cosignature: key id, then the 8-byte big-endian time the example's signed
    message shows, then 64 signature bytes; our signed message is the example's."""
    note = Note.parse(SPEC_COSIGNED)
    assert note.text == SPEC_CHECKPOINT
    log_sig, witness_sig = note.signatures
    assert (log_sig.name, witness_sig.name) == (
        "example.com/behind-the-sofa",
        "witness.example.com/w1",
    )
    assert len(witness_sig.blob) == 72
    assert int.from_bytes(witness_sig.blob[:8], "big") == 1679315147
    from agent.c2sp.keys import cosigned_message

    assert cosigned_message(note.text, 1679315147) == SPEC_COSIGNED_MESSAGE
    cp = Checkpoint.parse(note.text)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)
    assert cp.text() == SPEC_CHECKPOINT
    blob = base64.b64decode(FORMATS_COSIG)
    assert int.from_bytes(blob[4:12], "big") == 1727964367


def test_cosignature_interop_with_aics_tlog() -> None:
    """Our cosignatures verify with aics-tlog, and aics-tlog's with ours, byte for byte."""
    seed = hashlib.sha256(b"witness seed").digest()
    ours = Signer("witness.example/w1", seed, COSIGNATURE_V1)
    theirs = Ed25519PrivateKey.from_private_bytes(seed)
    root = merkle.EMPTY_ROOT
    cp = Checkpoint("example.com/log", 7, root, ("ext line",))
    text = cp.text()
    message = other_cosign.cosignature_message(5, cp.origin, 7, root, ["ext line"])
    assert message == b"cosignature/v1\ntime 5\n" + text
    blob, line = other_cosign.sign_cosignature(
        theirs, ours.name, 1700000000, cp.origin, 7, root, ["ext line"]
    )
    assert ours.sign(text, 1700000000) == blob
    assert line.key_id == ours.key_id
    vkey = other_note.format_vkey(other_cosign.cosignature_vkey(ours.name, theirs.public_key()))
    assert vkey == ours.verifier.to_text()
    assert ours.verifier.verify(text, blob) == 1700000000
    assert other_cosign.verify_cosignature(
        ours.sign(text, 1700000001),
        ours.name,
        theirs.public_key(),
        cp.origin,
        7,
        root,
        ["ext line"],
    )


def test_note_and_checkpoint_interop_with_aics_tlog() -> None:
    seed = hashlib.sha256(b"log seed").digest()
    log = Signer("example.com/log", seed)
    cp = Checkpoint("example.com/log", 3, hashlib.sha256(b"x").digest())
    note = Note(cp.text(), (Signature(log.name, log.key_id, log.sign(cp.text())),))
    theirs = other_note.parse_note(note.to_bytes())
    assert other_note.verify_note(theirs, [other_note.parse_vkey(log.verifier.to_text())])
    parsed = other_checkpoint.parse_checkpoint(theirs.text)
    assert (parsed.origin, parsed.size, parsed.root) == (cp.origin, cp.size, cp.root)
    line = other_note.sign_note(
        cp.text().decode(), Ed25519PrivateKey.from_private_bytes(seed), log.name
    )
    assert Signature(line.name, line.key_id, line.signature).line() == note.signatures[0].line()


def test_note_rules() -> None:
    log = Signer.generate("example.com/log")
    other = Signer.generate("example.com/other")
    text = b"hello\n"
    good = Signature(log.name, log.key_id, log.sign(text))
    unknown = Signature(other.name, other.key_id, other.sign(text))
    assert len(Note(text, (unknown, good)).open([log.verifier])) == 1  # unknown ignored
    bad = Signature(log.name, log.key_id, bytes(64))
    with pytest.raises(NoteError, match="does not verify"):
        Note(text, (unknown, bad)).open([log.verifier])
    with pytest.raises(NoteError, match="two signatures"):
        Note(text, (good, good)).open([log.verifier])
    with pytest.raises(NoteError, match="none of the known keys"):
        Note(text, (unknown,)).open([log.verifier])
    for broken, message in (
        (b"hello\n\xe2\x80\x94 x AAAA\n", "blank line"),
        (b"he\x01llo\n\n" + good.line().encode(), "control character"),
        (b"hello\n\n" + good.line().encode()[:-1], "end with a newline"),
        (b"hello\n\n- x AAAAAAA=\n", "em dash"),
    ):
        with pytest.raises(NoteError, match=message):
            Note.parse(broken)
    assert parse_signatures(good.line().encode()) == [good]


def test_base64_must_be_canonical() -> None:
    # the last character's two spare bits changed: decodes to the same 32 bytes
    b64 = base64.b64encode(bytes(31) + b"\x01").decode()
    assert b64.endswith("AE=")
    with pytest.raises(NoteError, match="canonical"):
        Checkpoint.parse(f"o\n1\n{b64[:-2]}F=\n".encode())


def test_checkpoint_rules() -> None:
    root = base64.b64encode(merkle.EMPTY_ROOT).decode()
    for text, message in (
        (f"o\n01\n{root}\n", "leading zeros"),
        (f"o\n-1\n{root}\n", "decimal"),
        ("o\n1\n", "three lines"),
        (f"o\n1\n{root}\n\nx\n", "empty"),
        (f"o\n1\n{root}", "newline"),
        ("o\n1\nAAAA\n", "3 bytes"),
    ):
        with pytest.raises(NoteError, match=message):
            Checkpoint.parse(text.encode())


def _vkeys(n: int) -> list[Signer]:
    return [Signer.generate(f"w{i}.example", COSIGNATURE_V1) for i in range(n)]


def test_policy_quorum() -> None:
    log = Signer.generate("example.com/log")
    w = _vkeys(4)
    text = "\n".join(
        [
            "# witnesses of the example",
            f"log {log.verifier.to_text()} https://log.example",
            *(
                f"witness W{i}\t{s.verifier.to_text()} http://127.0.0.1:{9000 + i}"
                for i, s in enumerate(w)
            ),
            "group two-of-three 2 W0 W1 W2",
            "group all any two-of-three W3",
            "quorum all",
        ]
    )
    policy = Policy.parse(text)
    assert policy.witnesses["W1"].url == "http://127.0.0.1:9001"
    assert policy.satisfied({"W3"})
    assert policy.satisfied({"W0", "W2"})
    assert not policy.satisfied({"W0"})
    strict = Policy.parse(text.replace("quorum all", "quorum two-of-three"))
    assert not strict.satisfied({"W3", "W0"})
    for bad, message in (
        (text + "\nquorum W1", "second quorum"),
        (text.replace("quorum all", "quorum nobody"), "defined on no earlier line"),
        (text.replace("2 W0 W1 W2", "4 W0 W1 W2"), "threshold 4"),
        (text.replace("2 W0 W1 W2", "2 W0 W0 W2"), "twice"),
        (text.replace("quorum all\n", "").replace("quorum all", ""), "no quorum"),
        (text + f"\nwitness W9 {w[0].verifier.to_text()}", "repeats"),
        (text + f"\nwitness W8 {log.verifier.to_text()}", "signature type 0x01"),
    ):
        with pytest.raises(NoteError, match=message):
            Policy.parse(bad)
    assert Policy.parse("quorum none").satisfied(set())


def test_policy_verify_checkpoint() -> None:
    log = Signer.generate("example.com/log")
    w = _vkeys(3)
    policy = Policy.parse(
        f"log {log.verifier.to_text()}\n"
        + "".join(f"witness W{i} {s.verifier.to_text()}\n" for i, s in enumerate(w))
        + "group g 2 W0 W1 W2\nquorum g\n"
    )
    text = Checkpoint("example.com/log", 1, merkle.leaf_hash(b"a")).text()
    signed = Note(text, (Signature(log.name, log.key_id, log.sign(text)),))
    cosig = [Signature(s.name, s.key_id, s.sign(text, 1700000000 + i)) for i, s in enumerate(w)]
    with pytest.raises(NoteError, match="do not meet the quorum"):
        policy.verify_checkpoint(signed.with_signatures(cosig[:1]), "example.com/log")
    cosigned, _ = policy.verify_checkpoint(signed.with_signatures(cosig[1:]), "example.com/log")
    assert cosigned == {"W1", "W2"}
    with pytest.raises(NoteError, match="no log named"):
        policy.verify_checkpoint(signed, "example.com/other")
    only_witnesses = Note(text, tuple(cosig))
    with pytest.raises(NoteError, match="not signed by the log"):
        policy.verify_checkpoint(only_witnesses, "example.com/log")


def test_tlog_proof_round_trip() -> None:
    log = Signer.generate("example.com/log")
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(5)]
    text = Checkpoint("example.com/log", 5, merkle.subtree_root(leaves)).text()
    note = Note(text, (Signature(log.name, log.key_id, log.sign(text)),))
    proof = TlogProof(3, tuple(merkle.inclusion_proof(3, leaves)), note, b"extra data")
    data = proof.to_bytes()
    assert data.startswith(b"c2sp.org/tlog-proof@v1\nextra ZXh0cmEgZGF0YQ==\nindex 3\n")
    back = TlogProof.parse(data)
    assert back == proof
    assert (
        merkle.root_from_inclusion(3, 5, leaves[3], back.path)
        == Checkpoint.parse(back.note.text).root
    )
