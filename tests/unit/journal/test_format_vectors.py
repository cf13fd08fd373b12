"""The test vectors of docs/journal-format.md section 12 are what the code produces."""

from __future__ import annotations

from pathlib import Path

from agent.journal.canonical import canonical
from agent.journal.checkpoint import Checkpoint
from agent.journal.keys import PublicKey, SigningKey, b64, unb64
from agent.journal.merkle import CompactTree, leaf_hash
from agent.journal.record import GENESIS_PREV, parse_line, record_hash

DOC = (Path(__file__).resolve().parents[3] / "docs" / "journal-format.md").read_text()
BOOT = "0f3c1a2b-9d4e-4c6f-8a7b-112233445566"


def test_section_12_vectors() -> None:
    r0 = {"seq": 0, "ts": "1764146065000000000", "host": "web-01", "boot_id": BOOT,
          "type": "start", "prev": GENESIS_PREV, "version": "0.1.0"}  # fmt: skip
    line0 = canonical(r0)  # type: ignore[arg-type]
    h0 = record_hash(line0)
    r1 = {"seq": 1, "ts": "1764146065000100000", "host": "web-01", "boot_id": BOOT,
          "type": "verdict", "prev": h0.hex(), "action": "deny", "policy": "ab" * 32,
          "rule": "no-nc", "pid": 4242, "exe": "/usr/bin/nc"}  # fmt: skip
    line1 = canonical(r1)  # type: ignore[arg-type]
    h1 = record_hash(line1)
    tree = CompactTree()
    tree.append(h0)
    tree.append(h1)
    key = SigningKey(bytes(range(32)))
    cp = Checkpoint("web-01", 2, tree.root().hex(), h1.hex(), 1764146065000200000, key.key_id)
    signing_input = cp.signing_input()
    assert signing_input.startswith(b"sealtrail/checkpoint/v1\x00")
    sig = b64(key.sign(signing_input))
    for text in (line0.decode(), h0.hex(), leaf_hash(h0).hex(), line1.decode(), h1.hex(),
                 tree.root().hex(), b64(key.public.raw), key.key_id,
                 signing_input[len(b"sealtrail/checkpoint/v1\x00"):].decode(), sig):  # fmt: skip
        assert text in DOC, text
    assert parse_line(line1).fields["rule"] == "no-nc"
    assert PublicKey(key.public.raw).verify(unb64(sig, "sig"), signing_input)
