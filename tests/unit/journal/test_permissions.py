"""Keys others can reach are refused, naming the file, its mode and the fix (real files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import KeyPermissionError
from agent.journal.keys import KeyStore

from .conftest import Journal


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    """A journal whose genesis key exists: the agent's first start has been."""
    j = Journal(tmp_path)
    j.writer().close({"reason": "test"})
    return j


def private_key(journal: Journal) -> Path:
    (path,) = journal.keys.glob("epoch-*.key")
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_a_private_key_others_can_reach_stops_the_writer(journal: Journal, mode: int) -> None:
    key = private_key(journal)
    key.chmod(mode)
    with pytest.raises(KeyPermissionError) as info:
        journal.writer()
    message = str(info.value)
    assert message.startswith(f"private key {key} has mode {mode:04o}: group or others have")
    assert message.endswith(f"(chmod 600 {key})")
    key.chmod(0o600)
    journal.writer().close({"reason": "test"})  # and the fix is all it takes


def test_the_public_key_may_be_read_by_all_but_written_by_its_owner_only(
    journal: Journal,
) -> None:
    public = journal.keys / "journal.pub"
    public.chmod(0o444)
    journal.writer().close({"reason": "test"})
    public.chmod(0o664)
    with pytest.raises(KeyPermissionError, match=rf"{public} has mode 0664: .*chmod 644 {public}"):
        journal.writer()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o702])
def test_a_keys_directory_others_can_write_stops_the_writer(journal: Journal, mode: int) -> None:
    journal.keys.chmod(mode)
    with pytest.raises(
        KeyPermissionError,
        match=rf"keys directory {journal.keys} has mode {mode:04o}: .*chmod go-w {journal.keys}",
    ):
        journal.writer()
    journal.keys.chmod(0o755)  # readable by others is fine: it holds no secret but the keys
    journal.writer().close({"reason": "test"})


def test_keys_of_another_user_are_refused(journal: Journal) -> None:
    other = os.geteuid() + 1
    with pytest.raises(KeyPermissionError, match=rf"keys directory {journal.keys} belongs to "):
        KeyStore(journal.keys, owner=other).bootstrap(create=False)
    with pytest.raises(KeyPermissionError, match=r"chown "):
        KeyStore(journal.keys, owner=other).load(KeyStore(journal.keys).genesis().key_id)


def test_every_private_key_in_the_directory_is_checked_not_only_the_live_one(
    journal: Journal,
) -> None:
    stray = KeyStore(journal.keys).create_epoch_key()  # a crash in a rotation leaves one
    path = journal.keys / f"epoch-{stray.key_id}.key"
    path.chmod(0o644)
    with pytest.raises(KeyPermissionError, match=rf"private key {path} has mode 0644"):
        journal.writer()


def test_a_symlinked_private_key_is_refused(journal: Journal, tmp_path: Path) -> None:
    key = private_key(journal)
    elsewhere = tmp_path / "elsewhere.key"
    key.rename(elsewhere)
    key.symlink_to(elsewhere)
    with pytest.raises(KeyPermissionError, match=rf"private key {key} is not a regular file"):
        journal.writer()


def test_keys_init_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    keys.chmod(0o777)
    with pytest.raises(KeyPermissionError, match=r"has mode 0777"):
        KeyStore(keys).init()
    assert list(keys.iterdir()) == []  # refused before any key was made


def test_a_first_start_makes_keys_that_pass_the_check(tmp_path: Path) -> None:
    old = os.umask(0)  # whatever the umask, the agent's own keys are its own
    try:
        Journal(tmp_path).writer().close({"reason": "test"})
    finally:
        os.umask(old)
    KeyStore(tmp_path / "keys").check_access()
