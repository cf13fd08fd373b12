"""Transparency log proofs (c2sp.org/tlog-proof@v1)::

c2sp.org/tlog-proof@v1
extra <base64>            (optional)
index <n>
<base64 hash>...          inclusion proof, leaf's sibling first
<blank line>
<checkpoint signed note, verbatim>
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.c2sp.checkpoint import parse_decimal
from agent.c2sp.keys import NoteError, b64decode, b64encode
from agent.c2sp.note import Note

HEADER = "c2sp.org/tlog-proof@v1"
#: A proof path longer than this is of no tree a uint64 can count.
MAX_PATH = 64


@dataclass(frozen=True)
class TlogProof:
    index: int
    path: tuple[bytes, ...]
    note: Note
    extra: bytes | None = None

    def to_bytes(self) -> bytes:
        lines = [HEADER]
        if self.extra is not None:
            lines.append(f"extra {b64encode(self.extra)}")
        lines.append(f"index {self.index}")
        lines.extend(b64encode(h) for h in self.path)
        head = "".join(f"{line}\n" for line in lines) + "\n"
        return head.encode("ascii") + self.note.to_bytes()

    @classmethod
    def parse(cls, data: bytes) -> TlogProof:
        split = data.find(b"\n\n")
        if split < 0:
            raise NoteError("a tlog-proof needs its proof lines, a blank line and a checkpoint")
        try:
            lines = data[:split].decode("ascii").split("\n")
        except UnicodeDecodeError:
            raise NoteError("the tlog-proof header lines are not ASCII") from None
        if lines[0] != HEADER:
            raise NoteError(f"line 1 must be {HEADER!r}")
        n = 1
        extra = None
        if n < len(lines) and lines[n].startswith("extra "):
            extra = b64decode(lines[n][6:], "tlog-proof extra data")
            n += 1
        if n >= len(lines) or not lines[n].startswith("index "):
            raise NoteError(f"line {n + 1} must be 'index N'")
        index = parse_decimal(lines[n][6:], "tlog-proof index")
        path = []
        for i, line in enumerate(lines[n + 1 :], n + 2):
            h = b64decode(line, f"tlog-proof line {i}")
            if len(h) != 32:
                raise NoteError(f"tlog-proof line {i} is not a 32-byte hash")
            path.append(h)
        if len(path) > MAX_PATH:
            raise NoteError(f"a tlog-proof inclusion path has at most {MAX_PATH} hashes")
        return cls(index, tuple(path), Note.parse(data[split + 2 :]), extra)
