"""The collector's Ed25519 receipt key, in the journal's own key file formats.

``collector.pub`` is one line ``sealtrail-ed25519 <b64 raw key> <key id>``, exactly a journal
public key, so the agent loads it with ``agent.journal.keys.PublicKey.load``. ``collector.key``
is one line ``sealtrail-ed25519-private <b64 raw 32-byte seed> <key id>`` (mode 0600), the
format of the journal's epoch keys. The collector key never rotates by itself: a receipt must
stay checkable with the key a host got at enrollment.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.collector.errors import PkiError
from agent.collector.keyfiles import read_private, write_private, write_public
from agent.errors import FormatError
from agent.journal.keys import PRIVATE_TAG, SigningKey, b64


def create_signing_key(key_path: Path, pub_path: Path) -> SigningKey:
    """A new receipt key: private half (0600) first, then the public line."""
    seed = os.urandom(32)
    key = SigningKey(seed)
    write_private(key_path, f"{PRIVATE_TAG} {b64(seed)} {key.key_id}\n".encode("ascii"))
    write_public(pub_path, key.public.to_line().encode("ascii"))
    return key


def load_signing_key(key_path: Path) -> SigningKey:
    """The receipt key; refuses a key file others can read, or one whose id does not match."""
    try:
        return SigningKey.from_line(read_private(key_path).decode("ascii"))
    except UnicodeDecodeError:
        raise PkiError(f"{key_path} is not a sealtrail private key") from None
    except FormatError as exc:
        raise PkiError(f"{key_path}: {exc}") from None
