"""Genesis keys, file modes, and forward-secure erasure of epoch keys."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from agent.errors import KeyStoreError
from agent.journal.keys import KeyStore, PublicKey, key_id

from .conftest import Journal


def test_init_writes_private_0600_and_documented_public_line(tmp_path: Path) -> None:
    old = os.umask(0)  # even a permissive umask must not widen the private key's mode
    try:
        public = KeyStore(tmp_path / "keys").init()
    finally:
        os.umask(old)
    keys = tmp_path / "keys"
    (private,) = keys.glob("epoch-*.key")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    line = (keys / "journal.pub").read_text()
    tag, b64key, kid = line.split()
    assert line.endswith("\n") and tag == "sealtrail-ed25519"
    assert base64.b64decode(b64key) == public.raw and kid == key_id(public.raw)
    assert PublicKey.from_line(line) == public
    assert private.name == f"epoch-{kid}.key"


def test_private_key_is_created_0600_from_the_first_instant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes: list[tuple[int, int]] = []
    real_open = os.open

    def spy(path: object, flags: int, mode: int = 0o777, **kw: object) -> int:
        if str(path).endswith(".key") or ".epoch-" in str(path):
            modes.append((flags, mode))
        return real_open(path, flags, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    KeyStore(tmp_path / "keys").init()
    flags, mode = modes[0]
    assert flags & os.O_EXCL and flags & os.O_CREAT and mode == 0o600


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    store.init()
    with pytest.raises(KeyStoreError, match="already exists"):
        store.init()


def test_public_key_line_with_wrong_id_is_rejected(tmp_path: Path) -> None:
    public = KeyStore(tmp_path / "keys").init()
    line = public.to_line().replace(public.key_id, "0" * 32)
    with pytest.raises(Exception, match="does not match"):
        PublicKey.from_line(line)


def test_rotation_erases_the_old_private_key_from_disk(journal: Journal) -> None:
    w = journal.writer()
    w.append("start", {})
    old_id = w.key_id
    old_file = journal.keys / f"epoch-{old_id}.key"
    old_text = old_file.read_bytes()
    seed_b64 = old_text.split()[1]
    seed = base64.b64decode(seed_b64)
    # Keep the inode alive through an open descriptor to see what happens to its blocks.
    fd = os.open(old_file, os.O_RDONLY)
    try:
        w.rotate_key()
        assert w.key_id != old_id
        assert not old_file.exists()
        after = os.pread(fd, len(old_text) + 16, 0)
        assert after == b"\0" * len(old_text), "the key bytes were unlinked, not overwritten"
    finally:
        os.close(fd)
    w.close()
    for directory in (journal.keys, journal.dir):
        for path in directory.iterdir():
            content = path.read_bytes()
            assert seed not in content and seed_b64 not in content, path
    assert [p.name for p in journal.keys.glob("epoch-*.key")] == [f"epoch-{w.key_id}.key"]
    summary = journal.verify(strict=True)
    assert summary.ok and summary.rotations == 1


def test_tick_rotates_when_the_epoch_ends(journal: Journal) -> None:
    now = [10**18]
    w = journal.writer(epoch_seconds=1.0, clock=lambda: now[0])
    first = w.key_id
    w.append("start", {})
    w.tick()
    assert w.key_id == first
    now[0] += 2 * 10**9
    w.tick()
    assert w.key_id != first
    w.close()
    assert journal.verify(strict=True).rotations == 1


def test_stray_keys_from_a_crash_mid_rotation_are_erased(journal: Journal) -> None:
    w = journal.writer()
    w.append("start", {})
    os.close(w._live.fd)  # crash ...
    stray = KeyStore(journal.keys).create_epoch_key()  # ... after the new key was written
    w = journal.writer()
    assert w.key_id != stray.key_id
    assert not (journal.keys / f"epoch-{stray.key_id}.key").exists()
    w.close()
    assert journal.verify(strict=True).ok


def test_leftover_temporary_key_files_are_cleaned_safely(journal: Journal) -> None:
    w = journal.writer()
    w.append("start", {})
    os.close(w._live.fd)  # crash
    live = journal.keys / f"epoch-{w.key_id}.key"
    linked = journal.keys / f".{live.name}.tmp-aaaa"  # crash between link and unlink
    os.link(live, linked)
    unused = journal.keys / ".epoch-ffff.key.tmp-bbbb"  # crash before the link
    unused.write_bytes(b"sealtrail-ed25519-private c2VjcmV0 ffff\n")
    w = journal.writer()
    assert not linked.exists() and not unused.exists()
    assert live.read_bytes().startswith(b"sealtrail-ed25519-private ")  # not zeroed
    w.close()
    assert journal.verify(strict=True).ok
