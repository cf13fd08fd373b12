"""Signed-note keys: verifier keys (vkeys), key ids, note signers and cosigners.

c2sp.org/signed-note: a vkey is ``<name>+hex(key id)+base64(signature type || public key)``,
the key id ``SHA-256(name || 0x0A || type || public key)[:4]``. Type 0x01 is an Ed25519
signature over the note text; type 0x04 (c2sp.org/tlog-cosignature) a timestamped Ed25519
cosignature: 8-byte big-endian POSIX time || Ed25519 over ``cosignature/v1\\ntime T\\n`` and the
note text. Private keys are kept in the format of golang.org/x/mod/sumdb/note,
``PRIVATE+KEY+<name>+hex(key id)+base64(0x01 || 32-byte seed)``, so Go tools read them.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.errors import FormatError

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
_TYPES = {ED25519: "Ed25519", COSIGNATURE_V1: "cosignature/v1"}
COSIGNATURE_HEADER = b"cosignature/v1\n"
PRIVATE_PREFIX = "PRIVATE+KEY+"
#: A cosignature time must not exceed 2**63 - 1 (tlog-cosignature).
MAX_TIME = (1 << 63) - 1


class NoteError(FormatError):
    """A note, key, checkpoint, policy or proof does not follow its C2SP specification."""


def b64decode(text: str, what: str) -> bytes:
    """Standard base64, and only its canonical form: text that decodes but does not encode back
    the same (other padding bits, missing padding) is refused, so one value has one spelling."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise NoteError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def check_name(name: str, what: str = "key name") -> str:
    """Key names are non-empty, without Unicode spaces, ``+`` or control characters."""
    if not isinstance(name, str) or not name:
        raise NoteError(f"{what} must not be empty")
    if "+" in name or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in name):
        raise NoteError(f"{what} {name!r} must not hold spaces, '+' or control characters")
    return name


def key_id(name: str, sig_type: int, public: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4] (signed-note, "Signatures")."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public).digest()[:4]


def cosigned_message(text: bytes, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: header, time line, then the checkpoint text."""
    return COSIGNATURE_HEADER + b"time %d\n" % timestamp + text


@dataclass(frozen=True)
class VerifierKey:
    """One trusted key: its name, signature type (0x01 or 0x04) and 32-byte Ed25519 key."""

    name: str
    sig_type: int
    public: bytes

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.sig_type not in _TYPES:
            t = self.sig_type
            raise NoteError(f"key {self.name}: signature type 0x{t:02x} is not supported")
        if not isinstance(self.public, bytes) or len(self.public) != 32:
            raise NoteError(f"key {self.name}: an Ed25519 public key has 32 bytes")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.sig_type, self.public)

    def to_text(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{b64encode(bytes([self.sig_type]) + self.public)}"

    @classmethod
    def from_text(cls, text: str) -> VerifierKey:
        parts = text.strip().split("+", 2)  # base64 may hold "+", a name may not
        if len(parts) != 3:
            raise NoteError(f"vkey {text.strip()!r} is not NAME+KEYID+KEY")
        name, hex_id, material = parts
        if len(hex_id) != 8 or any(c not in "0123456789abcdef" for c in hex_id):
            raise NoteError(f"vkey {name}: key id {hex_id!r} is not 8 lowercase hex digits")
        raw = b64decode(material, f"vkey {name}")
        if not raw:
            raise NoteError(f"vkey {name}: no key material")
        key = cls(name, raw[0], raw[1:])
        if key.key_id.hex() != hex_id:
            raise NoteError(
                f"vkey {name}: key id {hex_id} does not match the key ({key.key_id.hex()})"
            )
        return key

    @functools.cached_property
    def _ed25519(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public)

    def verify(self, text: bytes, blob: bytes) -> int | None:
        """Check a signature ``blob`` (the bytes after the key id) over note ``text``. Returns
        None for a good Ed25519 signature, the time for a good cosignature; raises NoteError
        saying what is wrong otherwise."""
        public = self._ed25519
        if self.sig_type == ED25519:
            if len(blob) != 64:
                raise NoteError(f"signature by {self.name} has {len(blob)} bytes, not 64")
            message, sig, timestamp = text, blob, None
        else:
            if len(blob) != 72:
                raise NoteError(f"cosignature by {self.name} has {len(blob)} bytes, not 8 + 64")
            timestamp = int.from_bytes(blob[:8], "big")
            if not 0 < timestamp <= MAX_TIME:
                raise NoteError(f"cosignature by {self.name} has time {timestamp}")
            message, sig = cosigned_message(text, timestamp), blob[8:]
        try:
            public.verify(sig, message)
        except InvalidSignature:
            what = "signature" if timestamp is None else "cosignature"
            raise NoteError(f"{what} by {self.name} does not verify") from None
        return timestamp


class Signer:
    """An Ed25519 note signer (type 0x01) or cosigner (type 0x04) with its private seed."""

    def __init__(self, name: str, seed: bytes, sig_type: int = ED25519) -> None:
        if len(seed) != 32:
            raise NoteError("an Ed25519 seed has 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self._seed = seed
        public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.verifier = VerifierKey(name, sig_type, public)

    @classmethod
    def generate(cls, name: str, sig_type: int = ED25519) -> Signer:
        return cls(name, os.urandom(32), sig_type)

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def key_id(self) -> bytes:
        return self.verifier.key_id

    def sign(self, text: bytes, timestamp: int | None = None) -> bytes:
        """The signature blob for ``text`` (a cosigner needs ``timestamp``, POSIX seconds)."""
        if self.verifier.sig_type == ED25519:
            return self._key.sign(text)
        if timestamp is None or not 0 < timestamp <= MAX_TIME:
            raise NoteError(f"a cosignature needs a time from 1 to 2**63-1, not {timestamp}")
        return timestamp.to_bytes(8, "big") + self._key.sign(cosigned_message(text, timestamp))

    def private_text(self) -> str:
        """The sumdb/note private key line (the seed is always stored with type 0x01: the
        cosigner type is the file's, given when it is loaded)."""
        kid = key_id(self.name, ED25519, self.verifier.public).hex()
        return f"{PRIVATE_PREFIX}{self.name}+{kid}+{b64encode(bytes([ED25519]) + self._seed)}\n"

    @classmethod
    def from_private_text(cls, text: str, sig_type: int = ED25519) -> Signer:
        line = text.strip()
        if not line.startswith(PRIVATE_PREFIX):
            raise NoteError(f"not a note private key (it starts with {PRIVATE_PREFIX!r})")
        parts = line[len(PRIVATE_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise NoteError("a note private key is PRIVATE+KEY+NAME+KEYID+KEY")
        name, hex_id, material = parts
        raw = b64decode(material, "private key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError("the private key is not an Ed25519 seed (0x01 and 32 bytes)")
        signer = cls(check_name(name), raw[1:], sig_type)
        if key_id(name, ED25519, signer.verifier.public).hex() != hex_id:
            raise NoteError(f"private key {name}: key id {hex_id} does not match the key")
        return signer
