"""Signed notes (c2sp.org/signed-note): text, a blank line, signature lines ``— NAME B64``.

``Note.parse`` takes the bytes as received and keeps the text exactly (signatures are checked
over those bytes, never a re-serialisation). ``Note.open`` applies the specification's rules:
signatures from unknown keys are ignored, a known key (same name and key id) whose signature
fails rejects the note, and at least one known key must have signed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.c2sp.keys import NoteError, VerifierKey, b64decode, b64encode, check_name

DASH = "\u2014 "
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f]").search
#: Signature lines accepted at most (the specification asks for at least 16).
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 1 << 20


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: bytes
    blob: bytes

    def line(self) -> str:
        return f"{DASH}{self.name} {b64encode(self.key_id + self.blob)}\n"


@dataclass(frozen=True)
class Verified:
    key: VerifierKey
    signature: Signature
    #: The cosignature's time (None for a plain Ed25519 signature).
    timestamp: int | None


@dataclass(frozen=True)
class Note:
    text: bytes
    signatures: tuple[Signature, ...]

    def to_bytes(self) -> bytes:
        return self.text + b"\n" + "".join(s.line() for s in self.signatures).encode("utf-8")

    def with_signatures(self, more: Iterable[Signature]) -> Note:
        return Note(self.text, (*self.signatures, *more))

    @classmethod
    def parse(cls, data: bytes) -> Note:
        if len(data) > MAX_NOTE_BYTES:
            raise NoteError(f"a note is at most {MAX_NOTE_BYTES} bytes")
        try:
            decoded = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoteError(f"note byte {exc.start} is not UTF-8") from None
        bad = _CONTROL(decoded)
        if bad is not None:
            c = bad.group()
            raise NoteError(f"note character {bad.start()} is a control character ({ord(c):#04x})")
        split = decoded.rfind("\n\n")
        if split < 0:
            raise NoteError("a note needs its text, a blank line and signature lines")
        text, block = decoded[: split + 1], decoded[split + 2 :]
        if not block.endswith("\n"):
            raise NoteError("the last signature line must end with a newline")
        lines = block[:-1].split("\n")
        if len(lines) > MAX_SIGNATURES:
            raise NoteError(f"a note may carry at most {MAX_SIGNATURES} signatures")
        return cls(text.encode("utf-8"), tuple(parse_signature(line) for line in lines))

    def open(self, keys: Sequence[VerifierKey]) -> list[Verified]:
        """The signatures by ``keys`` (checked); NoteError if one fails or none is there."""
        known = {(k.name, k.key_id): k for k in keys}
        good: list[Verified] = []
        seen: set[tuple[str, bytes]] = set()
        for sig in self.signatures:
            key = known.get((sig.name, sig.key_id))
            if key is not None:
                if (sig.name, sig.key_id) in seen:
                    raise NoteError(f"the note carries two signatures by {sig.name}")
                seen.add((sig.name, sig.key_id))
                good.append(Verified(key, sig, key.verify(self.text, sig.blob)))
        if not good:
            names = ", ".join(sorted({k.name for k in keys})) or "none"
            raise NoteError(f"the note is signed by none of the known keys ({names})")
        return good


def parse_signature(line: str) -> Signature:
    """One signature line without its newline: ``— NAME base64(key id || signature)``."""
    if not line.startswith(DASH):
        raise NoteError(f"signature line {line[:40]!r} does not start with an em dash and a space")
    name, sep, encoded = line[len(DASH) :].partition(" ")
    if not sep:
        raise NoteError(f"signature line {line[:40]!r} is not '— NAME SIGNATURE'")
    check_name(name, "signature key name")
    raw = b64decode(encoded, f"signature by {name}")
    if len(raw) < 5:
        raise NoteError(f"signature by {name} is shorter than a key id and a signature")
    return Signature(name, raw[:4], raw[4:])


def parse_signatures(data: bytes) -> list[Signature]:
    """Signature lines alone (a witness's add-checkpoint answer), each ending in a newline."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("the signature lines are not UTF-8") from None
    if not text.endswith("\n"):
        raise NoteError("signature lines must each end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"at most {MAX_SIGNATURES} signature lines")
    return [parse_signature(line) for line in lines]
