"""Checkpoint note text (c2sp.org/tlog-checkpoint): origin, tree size, base64 root, extensions."""

from __future__ import annotations

from dataclasses import dataclass

from agent.c2sp.keys import NoteError, b64decode, b64encode

#: The largest tree size a checkpoint may state (tlog-witness sizes are uint64).
MAX_SIZE = (1 << 63) - 1


def parse_decimal(text: str, what: str) -> int:
    """ASCII decimal with no leading zero (but ``0`` itself), as the C2SP formats write sizes."""
    if not text or not text.isascii() or not text.isdigit() or (text[0] == "0" and text != "0"):
        raise NoteError(f"{what} {text[:24]!r} is not a decimal number without leading zeros")
    if len(text) > 19 or int(text) > MAX_SIZE:
        raise NoteError(f"{what} {text[:24]} is too large")
    return int(text)


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise NoteError("a checkpoint origin is one non-empty line")
        if type(self.size) is not int or not 0 <= self.size <= MAX_SIZE:
            raise NoteError(f"checkpoint size {self.size!r} is out of range")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise NoteError("a checkpoint root hash has 32 bytes")
        if any(not e or "\n" in e for e in self.extensions):
            raise NoteError("checkpoint extension lines must be non-empty single lines")

    def text(self) -> bytes:
        lines = [self.origin, str(self.size), b64encode(self.root), *self.extensions]
        return "".join(f"{line}\n" for line in lines).encode("utf-8")

    @classmethod
    def parse(cls, text: bytes) -> Checkpoint:
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("the checkpoint text is not UTF-8") from None
        if not decoded.endswith("\n"):
            raise NoteError("the checkpoint text must end with a newline")
        lines = decoded[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError("a checkpoint has at least three lines: origin, size, root hash")
        if any(not line for line in lines):
            raise NoteError("a checkpoint line is empty")
        root = b64decode(lines[2], "checkpoint root hash")
        if len(root) != 32:
            raise NoteError(f"checkpoint root hash has {len(root)} bytes, not 32")
        return cls(lines[0], parse_decimal(lines[1], "checkpoint size"), root, tuple(lines[3:]))
