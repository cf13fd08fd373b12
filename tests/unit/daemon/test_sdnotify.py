"""sd_notify through systemd-python, received as systemd receives it: a datagram socket of this
test's at $NOTIFY_SOCKET, the fds of FDSTORE=1 taken from SCM_RIGHTS. The fds systemd passes
back at start, as it passes them: at 3 and up, LISTEN_* in the environment of the process it
execs (here a shell that execs Python)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import Notifier, check_fdname, watchdog_interval_s

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def systemd_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """The socket systemd would listen on, as $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5.0)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def received(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One datagram and the fds that came with it (each a new fd of this process)."""
    msg, fds, _flags, _addr = socket.recv_fds(sock, 4096, 8)
    return msg, fds


def test_each_notification_is_one_datagram(systemd_socket: socket.socket) -> None:
    notifier = Notifier()
    assert notifier.enabled
    notifier.ready("policy 0123456789ab; 0.0 events/s; recorded 0, lost 0")
    assert received(systemd_socket) == (
        b"READY=1\nSTATUS=policy 0123456789ab; 0.0 events/s; recorded 0, lost 0",
        [],
    )
    notifier.status("policy 0123456789ab (reload rejected, kept)")
    assert received(systemd_socket) == (b"STATUS=policy 0123456789ab (reload rejected, kept)", [])
    notifier.watchdog()
    assert received(systemd_socket) == (b"WATCHDOG=1", [])
    notifier.stopping()
    assert received(systemd_socket) == (b"STOPPING=1", [])


def test_reloading_carries_the_monotonic_clock_as_notify_reload_needs(
    systemd_socket: socket.socket,
) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msg, fds = received(systemd_socket)
    first, second = msg.decode().split("\n")
    assert (first, fds) == ("RELOADING=1", [])
    key, usec = second.split("=")
    assert key == "MONOTONIC_USEC" and before <= int(usec) <= after


def test_store_fds_hands_systemd_the_same_open_file(
    systemd_socket: socket.socket, tmp_path: Path
) -> None:
    held = tmp_path / "held"
    held.write_text("x")
    notifier = Notifier()
    with held.open() as f:
        assert notifier.store_fds([f.fileno()], "fanotify")
        msg, fds = received(systemd_socket)
        assert msg == b"FDSTORE=1\nFDNAME=fanotify" and len(fds) == 1
        try:
            ours, theirs = os.fstat(f.fileno()), os.fstat(fds[0])
            assert (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)
            assert fds[0] != f.fileno()  # a duplicate: systemd's own, kept when this one closes
        finally:
            os.close(fds[0])
    notifier.remove_fds("fanotify")
    assert received(systemd_socket) == (b"FDSTOREREMOVE=1\nFDNAME=fanotify", [])


def test_store_fds_takes_only_names_systemd_takes(systemd_socket: socket.socket) -> None:
    notifier = Notifier()
    for bad in ("", "a:b", "line\nbreak", "x" * 256):
        with pytest.raises(ValueError, match="fd name"):
            notifier.store_fds([0], bad)
    with pytest.raises(ValueError, match="no fds"):
        notifier.store_fds([], "fanotify")
    assert check_fdname("sealtrail-fanotify.1") == "sealtrail-fanotify.1"
    systemd_socket.settimeout(0.2)
    with pytest.raises(TimeoutError):
        systemd_socket.recv(4096)  # nothing was sent


def test_an_abstract_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"sealtrail-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5.0)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        Notifier().watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_outside_systemd_nothing_is_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    notifier = Notifier()
    assert not notifier.enabled and notifier.watchdog_interval_s is None
    with (tmp_path / "f").open("w") as f:
        assert notifier.store_fds([f.fileno()], "fanotify") is False
    notifier.ready("x")
    notifier.reloading()
    notifier.remove_fds("fanotify")
    notifier.stopping()


def test_the_watchdog_interval_is_half_the_timeout_for_this_pid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 1.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier().watchdog_interval_s == 1.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for off in ("0", "", "3s"):
        monkeypatch.setenv("WATCHDOG_USEC", off)
        assert watchdog_interval_s() is None


# What the started process reports: received_fds(), each fd's inode and close-on-exec flag, and
# LISTEN_FDS after the call.
_CHILD = """
import fcntl, json, os
from agent.sdnotify import received_fds
got = received_fds()
print(json.dumps({
    "fds": got,
    "ino": {str(fd): os.fstat(fd).st_ino for fds in got.values() for fd in fds},
    "cloexec": [bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
                for fds in got.values() for fd in fds],
    "left": os.environ.get("LISTEN_FDS"),
}))
"""


def start_with_fds(files: list[Path], names: str | None, pid: str = "$$") -> dict[str, object]:
    """Start Python as systemd starts a service with stored fds: ``files`` open at 3, 4, …,
    ``LISTEN_PID`` its pid (``$$`` of the shell that execs it), LISTEN_FDS, LISTEN_FDNAMES."""
    redirects = " ".join(f'{3 + i}<"$F{i}"' for i in range(len(files)))
    named = "" if names is None else f" LISTEN_FDNAMES={names}"
    script = (
        f"export LISTEN_PID={pid} LISTEN_FDS={len(files)}{named}; "
        f'exec "$PY" -c "$CHILD" {redirects}'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    env.update(PY=sys.executable, CHILD=_CHILD)
    env.update({f"F{i}": str(path) for i, path in enumerate(files)})
    run = ["sh", "-c", script]
    out = subprocess.run(run, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_received_fds_by_name(tmp_path: Path) -> None:
    files = [tmp_path / "group", tmp_path / "other", tmp_path / "again"]
    for f in files:
        f.write_text(f.name)
    got = start_with_fds(files, "fanotify:ringbuf:fanotify")
    assert got["fds"] == {"fanotify": [3, 5], "ringbuf": [4]}
    assert got["ino"] == {str(3 + i): f.stat().st_ino for i, f in enumerate(files)}
    assert got["cloexec"] == [True, True, True]  # a child the agent starts does not hold them
    assert got["left"] is None  # read once: nothing left for a child to take as its own


def test_fds_meant_for_another_process_are_not_taken(tmp_path: Path) -> None:
    (tmp_path / "group").write_text("x")
    got = start_with_fds([tmp_path / "group"], "fanotify", pid="1")
    assert got["fds"] == {} and got["ino"] == {} and got["left"] is None


def test_no_names_passed_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "group").write_text("x")
    got = start_with_fds([tmp_path / "group"], None)
    assert got["fds"] == {"unknown": [3]}
