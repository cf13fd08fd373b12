"""BPF-LSM smoke test: lsm/file_open denies one inode with EPERM, its neighbour opens.

Runs only in the stock-kernel VM (``make test-vm``); deselected elsewhere (tests/vm/conftest.py).
It proves the pipeline the LSM mechanism builds on: probes/lsm_smoke.bpf.c, compiled on the host
against the host's vmlinux.h, loaded by agent.kernel.loader on Debian 12's 6.1 kernel (CO-RE),
configured through a map, attached, denying, detached.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.kernel.loader import BpfObject, object_path

pytestmark = [pytest.mark.kernel, pytest.mark.lsm]

PROGRAM = "lsm_smoke_file_open"
ZERO = struct.pack("=I", 0)


def _target(path: Path | None) -> bytes:
    """struct lsm_smoke_target {u64 ino; u32 dev; u32 pad} for path (None: deny nothing)."""
    if path is None:
        return struct.pack("=QII", 0, 0, 0)
    st = os.stat(path)
    kdev = (os.major(st.st_dev) << 20) | os.minor(st.st_dev)  # the kernel's dev_t encoding
    return struct.pack("=QII", st.st_ino, kdev, 0)


def _denied(obj: BpfObject) -> int:
    raw = obj.map("lsm_smoke_counts").lookup(ZERO)
    assert raw is not None
    return int(struct.unpack("=Q", raw)[0])


def _open_errno(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            f.read()
    except OSError as e:
        return e.errno or -1
    return 0


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    denied, neighbour = tmp_path / "denied", tmp_path / "neighbour"
    denied.write_text("secret\n")
    neighbour.write_text("neighbour\n")
    return denied, neighbour


@pytest.fixture
def smoke() -> Iterator[BpfObject]:
    obj = BpfObject(object_path("lsm_smoke"))
    try:
        obj.load()
        yield obj
    finally:
        obj.close()  # destroys any link still attached


def test_file_open_denied_for_one_inode_only(smoke: BpfObject, files: tuple[Path, Path]) -> None:
    denied, neighbour = files
    smoke.map("lsm_smoke_target").update(ZERO, _target(denied))
    link = smoke.attach(PROGRAM)
    try:
        assert _open_errno(denied) == errno.EPERM
        assert neighbour.read_text() == "neighbour\n"
        # another process, as root, through a hard link and a symlink: the same inode, denied
        done = subprocess.run(["cat", str(denied)], capture_output=True, text=True)
        assert done.returncode != 0 and "Operation not permitted" in done.stderr
        hard, soft = denied.with_name("hard"), denied.with_name("soft")
        os.link(denied, hard)
        soft.symlink_to(denied)
        assert _open_errno(hard) == errno.EPERM
        assert _open_errno(soft) == errno.EPERM
        # stat is not open: metadata stays visible
        assert os.stat(denied).st_size == len("secret\n")
        assert _denied(smoke) == 4
    finally:
        link.destroy()
    assert denied.read_text() == "secret\n"  # detached: normal behaviour is back


def test_live_map_update_changes_the_verdict(smoke: BpfObject, files: tuple[Path, Path]) -> None:
    denied, neighbour = files
    targets = smoke.map("lsm_smoke_target")
    link = smoke.attach(PROGRAM)
    try:
        assert _open_errno(denied) == 0  # nothing targeted yet
        targets.update(ZERO, _target(denied))
        assert (_open_errno(denied), _open_errno(neighbour)) == (errno.EPERM, 0)
        targets.update(ZERO, _target(neighbour))  # no reload, no re-attach
        assert (_open_errno(denied), _open_errno(neighbour)) == (0, errno.EPERM)
        targets.update(ZERO, _target(None))
        assert (_open_errno(denied), _open_errno(neighbour)) == (0, 0)
    finally:
        link.destroy()
