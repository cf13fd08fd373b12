"""Host signing keys: the genesis Ed25519 key pair and forward-secure epoch keys.

Files in the keys directory (format in docs/journal-format.md):

- ``journal.pub``: the genesis public key, one line ``sealtrail-ed25519 <b64 raw key> <key id>``;
  this is what an auditor enrolls and never changes.
- ``epoch-<key id>.key``: the one live private key (mode 0600), one line
  ``sealtrail-ed25519-private <b64 raw 32-byte seed> <key id>``.

Keys that others than their owner may reach, or that belong to another user than the one using
them, are refused before they are used (``agent.journal.permissions``): the store fails closed.

Forward security: when an epoch ends the writer creates the next key, writes a ``key_rotation``
record signed by the old key, and then *erases* the old private key (overwrite with zeros, fsync,
unlink, fsync the directory), so a later intruder cannot re-sign the past. Overwriting in place
erases the bytes on ext4/xfs with ordinary block devices; on copy-on-write filesystems (btrfs,
zfs) or SSD wear levelling old blocks may survive; see the format document.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.errors import FormatError, JournalError, KeyStoreError
from agent.journal import permissions
from agent.journal.durable import create_file, fsync_dir, leftovers
from agent.paths import PUBLIC_KEY_NAME

log = logging.getLogger(__name__)

KEY_ID_PREFIX = b"sealtrail/key/v1\x00"
PUBLIC_TAG = "sealtrail-ed25519"
PRIVATE_TAG = "sealtrail-ed25519-private"


def key_id(raw_public: bytes) -> str:
    """32 hex digits: the first 128 bits of SHA-256 over a prefix and the raw public key."""
    return hashlib.sha256(KEY_ID_PREFIX + raw_public).hexdigest()[:32]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str) -> bytes:
    """Decode canonical base64 only: the one spelling ``b64`` writes.

    The decoder ignores the unused low bits of the last character, so several texts decode to
    the same bytes; a signature whose spelling can change without failing would leave bytes of
    a signed line that nothing covers. Re-encoding and comparing refuses every other spelling.
    """
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise FormatError(f"{what} is not valid base64") from None
    if b64(raw) != text:
        raise FormatError(f"{what} is not canonical base64 (non-zero padding bits)")
    return raw


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise FormatError(f"an Ed25519 public key has 32 bytes, not {len(self.raw)}")

    @property
    def key_id(self) -> str:
        return key_id(self.raw)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def to_line(self) -> str:
        return f"{PUBLIC_TAG} {b64(self.raw)} {self.key_id}\n"

    @classmethod
    def from_line(cls, text: str) -> PublicKey:
        parts = text.split()
        if len(parts) != 3 or parts[0] != PUBLIC_TAG:
            raise FormatError(f"not a sealtrail public key (expected '{PUBLIC_TAG} KEY ID')")
        key = cls(unb64(parts[1], "public key"))
        if key.key_id != parts[2]:
            raise FormatError(f"public key id {parts[2]} does not match the key ({key.key_id})")
        return key

    @classmethod
    def load(cls, path: Path) -> PublicKey:
        try:
            return cls.from_line(path.read_text(encoding="ascii"))
        except OSError as exc:
            raise KeyStoreError(f"cannot read public key {path}: {exc.strerror}") from None
        except (FormatError, UnicodeDecodeError) as exc:
            raise KeyStoreError(f"{path}: {exc}") from None


class SigningKey:
    """A private epoch key in memory."""

    def __init__(self, seed: bytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public = PublicKey(self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(32))

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    @classmethod
    def from_line(cls, text: str) -> SigningKey:
        """A private key line ``PRIVATE_TAG SEED ID``; raises ``FormatError`` saying what is
        wrong (the caller names the file)."""
        parts = text.split()
        if len(parts) != 3 or parts[0] != PRIVATE_TAG:
            raise FormatError(f"not a sealtrail private key ('{PRIVATE_TAG} SEED ID')")
        try:
            key = cls(unb64(parts[1], "private key"))
        except ValueError as exc:
            raise FormatError(str(exc)) from None
        if key.key_id != parts[2]:
            raise FormatError(f"holds key {key.key_id}, but names {parts[2]}")
        return key


class KeyStore:
    """The keys directory: genesis public key plus the live epoch private key. ``owner``: the
    user the keys must belong to, the one who uses them (default: this process's)."""

    def __init__(self, directory: Path, *, owner: int | None = None) -> None:
        self.directory = Path(directory)
        self.owner = os.geteuid() if owner is None else owner

    @property
    def public_path(self) -> Path:
        return self.directory / PUBLIC_KEY_NAME

    def private_path(self, kid: str) -> Path:
        return self.directory / f"epoch-{kid}.key"

    def exists(self) -> bool:
        return self.public_path.exists()

    def init(self) -> PublicKey:
        """Create the genesis key pair; refuse if one exists. Returns the public key."""
        if self.exists():
            raise KeyStoreError(
                f"{self.public_path} already exists; the genesis key is created once"
            )
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.check_access()  # a directory that was there already: others must not reach in
        key = self.create_epoch_key()
        try:
            create_file(self.public_path, key.public.to_line().encode("ascii"), 0o644)
        except FileExistsError:
            raise KeyStoreError(f"{self.public_path} already exists") from None
        return key.public

    def genesis(self) -> PublicKey:
        return PublicKey.load(self.public_path)

    def check_access(self) -> None:
        """Refuse (``KeyPermissionError``) the directory, the public key or any private key
        file when others than their owner, or another user than ``owner``, may change or read
        them (``agent.journal.permissions``)."""
        permissions.check_directory(self.directory, self.owner)
        if self.exists():
            permissions.check_public(self.public_path, self.owner)
        for kid in self.private_key_ids():
            path = self.private_path(kid)
            permissions.check_private(path, os.lstat(path), self.owner)

    def bootstrap(self, *, create: bool) -> None:
        """Before a journal is written: the genesis key must exist. ``create`` (the agent's
        first start) makes it when the directory has none; otherwise its absence is an error,
        since nobody could verify what would be written. Keys others may reach are refused
        (``check_access``), whether they were there or are about to be made."""
        if self.exists():
            self.check_access()
            return
        if not create:
            raise JournalError(f"no genesis key in {self.directory}; run `sealtrail keys init`")
        public = self.init()
        log.info(  # the first start's normal course, not a problem
            "created genesis key %s in %s; enroll it with the collector",
            public.key_id,
            self.directory,
        )

    def resume(self, kid: str | None) -> SigningKey:
        """The epoch key a reopened journal goes on with: ``kid`` (from its last key rotation;
        None: the genesis key). Every other private key file is erased: left by a crash in the
        middle of a key rotation (a new key whose rotation record never reached disk, or an old
        key whose erasure was interrupted) or of a key's creation."""
        kid = kid or self.genesis().key_id
        key = self.load(kid)
        self.erase_leftovers()
        for stray in self.private_key_ids():
            if stray != kid:
                self.erase(stray)
        return key

    def create_epoch_key(self) -> SigningKey:
        """Generate a key and store its private half (0600) durably before it is used."""
        key = SigningKey.generate()
        seed = key._key.private_bytes_raw()
        line = f"{PRIVATE_TAG} {b64(seed)} {key.key_id}\n".encode("ascii")
        try:
            create_file(self.private_path(key.key_id), line, 0o600)
        except FileExistsError:  # a fresh random key cannot collide unless something is wrong
            raise KeyStoreError(f"{self.private_path(key.key_id)} already exists") from None
        return key

    def load(self, kid: str) -> SigningKey:
        path = self.private_path(kid)
        try:
            text = permissions.read_private(path, self.owner).decode("ascii")
        except FileNotFoundError:
            raise KeyStoreError(
                f"private key for epoch key {kid} is missing from {self.directory}: the journal "
                "cannot be continued with a valid signature chain"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyStoreError(f"cannot read {path}: {exc}") from None
        try:
            key = SigningKey.from_line(text)
        except FormatError as exc:
            raise KeyStoreError(f"{path}: {exc}") from None
        if key.key_id != kid:
            raise KeyStoreError(f"{path} holds key {key.key_id}, not {kid}")
        return key

    def private_key_ids(self) -> list[str]:
        return sorted(
            p.name[len("epoch-") : -len(".key")] for p in self.directory.glob("epoch-*.key")
        )

    def erase_leftovers(self) -> None:
        """Erase temporary key files a crash during key creation left behind."""
        for path in leftovers(self.directory):
            if path.stat().st_nlink > 1:  # crashed after the link: the key file is the same inode
                path.unlink()
            else:
                self._erase_file(path)

    def erase(self, kid: str) -> None:
        """Overwrite the private key file with zeros, fsync, unlink, fsync the directory."""
        self._erase_file(self.private_path(kid))
        log.info("erased epoch key %s", kid)

    def _erase_file(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            size = os.fstat(fd).st_size
            os.pwrite(fd, b"\0" * max(size, 1), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fsync_dir(self.directory)
