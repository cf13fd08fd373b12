"""The tlog-witness v1 wire format (c2sp.org/tlog-witness), shared by server and client.

``POST <prefix>/add-checkpoint``, body: ``old N`` line, up to 63 base64 consistency proof lines,
an empty line, then the checkpoint note. 200: cosignature lines; 409: ``text/x.tlog.size`` body
``<size>\\n``; 400, 403, 404, 422 otherwise. ``GET <prefix>/<hex SHA-256 of origin>/checkpoint``:
the latest cosigned checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.c2sp.checkpoint import parse_decimal
from agent.c2sp.keys import NoteError, b64decode, b64encode
from agent.c2sp.note import Note

ADD_CHECKPOINT = "/add-checkpoint"
SIZE_TYPE = "text/x.tlog.size"
MAX_PROOF = 63
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class AddCheckpoint:
    old: int
    proof: tuple[bytes, ...]
    note: Note

    def to_bytes(self) -> bytes:
        head = f"old {self.old}\n" + "".join(f"{b64encode(h)}\n" for h in self.proof) + "\n"
        return head.encode("ascii") + self.note.to_bytes()

    @classmethod
    def parse(cls, body: bytes) -> AddCheckpoint:
        split = body.find(b"\n\n")
        if split < 0:
            raise NoteError(
                "the body needs an old size line, proof lines, an empty line and a note"
            )
        try:
            lines = body[:split].decode("ascii").split("\n")
        except UnicodeDecodeError:
            raise NoteError("the old size and proof lines are not ASCII") from None
        if not lines[0].startswith("old "):
            raise NoteError("the first line must be 'old N'")
        old = parse_decimal(lines[0][4:], "old size")
        if len(lines) - 1 > MAX_PROOF:
            raise NoteError(f"at most {MAX_PROOF} consistency proof lines")
        proof = []
        for i, line in enumerate(lines[1:], 2):
            h = b64decode(line, f"proof line {i}")
            if len(h) != 32:
                raise NoteError(f"proof line {i} is not a 32-byte hash")
            proof.append(h)
        return cls(old, tuple(proof), Note.parse(body[split + 2 :]))
