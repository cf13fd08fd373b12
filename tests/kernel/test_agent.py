"""Kernel e2e: `sealtrail agent` records real activity into a journal that verifies."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.journal import protect
from tests.agentproc import start_agent

pytestmark = pytest.mark.kernel
# qemu TCG (tests/vm) emulates every instruction: starting the agent takes ~15 s there
SLOW = 10 if os.environ.get("SEALTRAIL_VM") else 1


def records(journal: Path) -> list[dict[str, Any]]:
    out = []
    for seg in sorted(journal.glob("seg-*.jsonl")):
        complete = seg.read_bytes().split(b"\n")[:-1]  # a line being written is not yet a record
        out += [json.loads(line) for line in complete if line]
    return out


def sealtrail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60 * SLOW,
    )


def test_agent_journals_exec_and_connect_and_the_journal_verifies(tmp_path: Path) -> None:
    journal, keys, policies = tmp_path / "journal", tmp_path / "keys", tmp_path / "policies"
    policies.mkdir()
    marker = f"marker-{os.getpid()}-{time.monotonic_ns()}"
    agent = start_agent("--journal", str(journal), "--keys", str(keys), "--policies", str(policies))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        deadline = time.monotonic() + 20 * SLOW
        seen = False
        while not seen and time.monotonic() < deadline:
            subprocess.run(["/bin/echo", marker], stdout=subprocess.DEVNULL, check=True)
            time.sleep(0.3)
            seen = any(marker.encode() in seg.read_bytes() for seg in journal.glob("seg-*.jsonl"))
        assert seen, "exec never reached the journal"
        subprocess.run(
            [sys.executable, "-c",
             f"import socket; socket.create_connection(('127.0.0.1', {port})).close()"],
            check=True,
        )  # fmt: skip
        time.sleep(0.5)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30 * SLOW)
        listener.close()
    try:
        assert agent.returncode == 0, err
        check_journal(journal, keys, marker, port)
    finally:
        protect.clear_all(journal)  # segments are append-only/immutable: let pytest delete them


def check_journal(journal: Path, keys: Path, marker: str, port: int) -> None:
    recs = records(journal)
    assert [r["seq"] for r in recs] == list(range(len(recs)))  # gapless from 0
    assert recs[0]["type"] == "start" and recs[0]["record_kinds"]
    assert recs[0]["capabilities"] == {
        "lsm": False,
        "cgroup_sock": True,
        "fanotify": True,
        "send_signal": True,
        "fileless_exec_hook": True,  # sched_prepare_exec (6.10+)
        "cgroup_egress": True,  # cgroup_skb programs may name their task (not 6.1)
        "host_pids": True,  # the host's PID namespace
    } or os.environ.get("SEALTRAIL_EXPECT_LSM")
    assert recs[0]["missing_capabilities"] == []  # root: every capability judgement relies on
    assert recs[-1]["type"] == "seal" and recs[-2]["type"] == "stop"
    execs = [r for r in recs if r["type"] == "event" and r["kind"] == "exec"]
    mine = [r for r in execs if r["argv"] == ["/bin/echo", marker]]
    assert mine and mine[0]["exe"] == os.path.realpath("/bin/echo")
    connects = [
        r for r in recs
        if r["type"] == "event" and r["kind"] == "connect" and r["remote_port"] == port
    ]  # fmt: skip
    assert connects and connects[0]["remote_addr"] == "127.0.0.1" and connects[0]["result"] == 0

    verify = sealtrail("journal", "verify", "--journal", str(journal),
                       "--key", str(keys / "journal.pub"), "--strict")  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def agent_on(tmp_path: Path, path: str, *args: str) -> tuple[subprocess.Popen[str], Path, Path]:
    """The agent on the native record path or the Python one (SEALTRAIL_NATIVE=0), no policy;
    its journal and key directories."""
    from agent import native

    if path == "native" and not native.available():
        pytest.fail("native core not built: run `make native`")
    journal, keys, policies = tmp_path / "journal", tmp_path / "keys", tmp_path / "policies"
    policies.mkdir()
    env = dict(os.environ, SEALTRAIL_NATIVE="1" if path == "native" else "0")
    agent = start_agent(
        "--journal", str(journal), "--keys", str(keys), "--policies", str(policies), *args,
        env=env,
    )  # fmt: skip
    return agent, journal, keys


def wait_loaded(agent: subprocess.Popen[str], journal: Path) -> None:
    """Until the journal says policy_loaded, and a moment more: the probes are attached
    before the policy is loaded."""
    deadline = time.monotonic() + 20 * SLOW
    while not any(
        b'"type":"policy_loaded"' in seg.read_bytes() for seg in journal.glob("seg-*.jsonl")
    ):
        assert time.monotonic() < deadline and agent.poll() is None, "agent did not start"
        time.sleep(0.1)
    time.sleep(0.5 * SLOW)


NET_CLIENT = """
import os, socket, sys
port4, port6 = int(sys.argv[1]), int(sys.argv[2])
a = socket.create_connection(("127.0.0.1", port4)); a.close()
b = socket.socket(socket.AF_INET6); b.connect(("::1", port6)); b.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
u.connect(("127.0.0.1", 9)); u.close()
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(7)
c = socket.create_connection(l.getsockname()); s, _ = l.accept()
for x in (c, s, l): x.close()
print(os.getpid(), flush=True)
"""


@pytest.mark.parametrize("path", ["native", "python"])
def test_agent_records_network_events_the_same_either_way(tmp_path: Path, path: str) -> None:
    """connect/bind/listen/accept records: exact fields, whether the native encoder wrote them
    (the default) or the Python path did (SEALTRAIL_NATIVE=0)."""
    agent, journal, keys = agent_on(tmp_path, path)
    l4, l6 = socket.socket(), socket.socket(socket.AF_INET6)
    try:
        for sock, addr in ((l4, "127.0.0.1"), (l6, "::1")):
            sock.bind((addr, 0))
            sock.listen(4)
        port4, port6 = l4.getsockname()[1], l6.getsockname()[1]
        wait_loaded(agent, journal)
        client = subprocess.run(
            [sys.executable, "-c", NET_CLIENT, str(port4), str(port6)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        pid = int(client.stdout)
        time.sleep(0.5)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30 * SLOW)
        l4.close()
        l6.close()
    try:
        assert agent.returncode == 0, err
        recs = [r for r in records(journal) if r["type"] == "event" and r["pid"] == pid]
        net = [r for r in recs if r["kind"] in ("connect", "bind", "listen", "accept")]
        exe = os.path.realpath(sys.executable)
        common = {
            "type": "event", "pid": pid, "uid": os.getuid(), "gid": os.getgid(),
            "ppid": os.getpid(), "exe": exe, "truncated": False,
        }  # fmt: skip
        for r in net:
            assert {k: r[k] for k in common} == common, r
            # comm is the name the program was exec'd by: the binary's, or the venv's link
            assert r["comm"] in (Path(exe).name[:15], Path(sys.executable).name[:15]), r
            assert isinstance(r["ts_ns"], str) and isinstance(r["cgroup_id"], str)
        lport = next(r["local_port"] for r in net if r["kind"] == "listen")
        cport = next(r["local_port"] for r in net if r["remote_port"] == lport)
        got = [
            (r["kind"], r["family"], r["protocol"], r["remote_addr"], r["remote_port"]) for r in net
        ]
        assert got == [
            ("connect", "ipv4", "tcp", "127.0.0.1", port4),
            ("connect", "ipv6", "tcp", "::1", port6),
            ("bind", "ipv4", "udp", "0.0.0.0", 0),
            ("connect", "ipv4", "udp", "127.0.0.1", 9),
            ("bind", "ipv4", "tcp", "0.0.0.0", 0),
            ("listen", "ipv4", "tcp", "0.0.0.0", 0),
            ("connect", "ipv4", "tcp", "127.0.0.1", lport),
            ("accept", "ipv4", "tcp", "127.0.0.1", cport),
        ]
        assert [r["result"] for r in net[:-1]] == [0] * 7 and net[-1]["result"] >= 0
        assert net[5]["backlog"] == 7 and net[5]["local_addr"] == "127.0.0.1"
        assert all(set(r) == set(net[0]) for r in net if r["kind"] != "listen")
        stop = next(r for r in records(journal) if r["type"] == "stop")
        if path == "native":
            assert stop["recorded_native"] >= len(net)
        else:
            assert stop["recorded_native"] == 0
        verify = sealtrail("journal", "verify", "--journal", str(journal),
                           "--key", str(keys / "journal.pub"), "--strict")  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        protect.clear_all(journal)


FORK_CLIENT = """
import os, signal, socket, sys, time
kids = []
pid = os.fork()
if pid == 0:  # the child: runs its parent's binary, connects, exits 3
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(("127.0.0.1", 9))
    os._exit(3)
kids.append(pid)
os.waitpid(pid, 0)
pid = os.fork()
if pid == 0:
    time.sleep(60)
    os._exit(0)
kids.append(pid)
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
print(os.getpid(), *kids, flush=True)
"""


@pytest.mark.parametrize("path", ["native", "python"])
def test_agent_records_forks_and_exits_the_same_either_way(tmp_path: Path, path: str) -> None:
    """fork and exit records, and the binary a forked child's own events name (its parent's,
    learned from the fork), whether the native encoder wrote them or the Python path did."""
    agent, journal, keys = agent_on(tmp_path, path, "--record", "exec,fork,exit,connect")
    try:
        wait_loaded(agent, journal)
        client = subprocess.run(
            [sys.executable, "-c", FORK_CLIENT], capture_output=True, text=True, check=True
        )
        parent, child, killed = (int(x) for x in client.stdout.split())
        time.sleep(0.5)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30 * SLOW)
    try:
        assert agent.returncode == 0, err
        recs = [r for r in records(journal) if r["type"] == "event"]
        exe = os.path.realpath(sys.executable)
        forks = [r for r in recs if r["kind"] == "fork" and r["pid"] == parent]
        assert [r["child_pid"] for r in forks] == [child, killed]
        assert all(r["exe"] == exe and r["ppid"] == os.getpid() for r in forks)
        connect = next(r for r in recs if r["kind"] == "connect" and r["pid"] == child)
        assert connect["exe"] == exe and connect["remote_port"] == 9  # the parent's binary
        exits = {r["pid"]: r for r in recs if r["kind"] == "exit" and r["pid"] in (child, killed)}
        got = {pid: (r["exit_code"], r["signal"], r["core_dumped"], r["exe"])
               for pid, r in exits.items()}  # fmt: skip
        assert got == {child: (3, None, False, exe), killed: (None, 9, False, exe)}
        assert int(exits[killed]["duration_ns"]) > 0
        assert all(isinstance(r["ts_ns"], str) for r in [*forks, *exits.values()])
        stop = next(r for r in records(journal) if r["type"] == "stop")
        if path == "native":
            assert stop["recorded_native"] >= len(forks) + len(exits) + 1
        else:
            assert stop["recorded_native"] == 0
        verify = sealtrail("journal", "verify", "--journal", str(journal),
                           "--key", str(keys / "journal.pub"), "--strict")  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        protect.clear_all(journal)


def test_a_file_name_that_is_not_utf8_is_journaled_escaped(tmp_path: Path) -> None:
    """Anyone can name a file with bytes that are not UTF-8 and run it: the agent must record
    it (bytes as \\xNN, "escaped": true) and keep running, not stop on an encoding error."""
    journal, keys, policies = tmp_path / "journal", tmp_path / "keys", tmp_path / "policies"
    policies.mkdir()
    odd = os.fsencode(str(tmp_path)) + b"/run-\xff\xfe-me"
    with open(odd, "wb") as f:
        f.write(b"#!/bin/sh\nexit 0\n")
    os.chmod(odd, 0o755)
    agent = start_agent("--journal", str(journal), "--keys", str(keys), "--policies", str(policies))
    try:
        deadline = time.monotonic() + 20 * SLOW
        seen = False
        while not seen and time.monotonic() < deadline:
            assert agent.poll() is None, "the agent stopped"
            subprocess.run([odd], check=True)
            time.sleep(0.3)
            seen = any(b"run-\\\\xff\\\\xfe-me" in seg.read_bytes()
                       for seg in journal.glob("seg-*.jsonl"))  # fmt: skip
        assert seen, "the exec never reached the journal"
        subprocess.run(["/bin/true"], check=True)
        time.sleep(0.3)
        assert agent.poll() is None, "the agent stopped"
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30 * SLOW)
    try:
        assert agent.returncode == 0, err
        execs = [r for r in records(journal) if r["type"] == "event" and r["kind"] == "exec"]
        mine = [r for r in execs if "run-\\xff\\xfe-me" in r["filename"]]
        assert mine and mine[0]["escaped"] is True
        assert mine[0]["filename"] == str(tmp_path) + "/run-\\xff\\xfe-me"
        verify = sealtrail("journal", "verify", "--journal", str(journal),
                           "--key", str(keys / "journal.pub"), "--strict")  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        protect.clear_all(journal)


def test_a_policies_path_that_cannot_be_listed_stops_the_start(tmp_path: Path) -> None:
    """Only a missing directory means "no policies, observe only"; one that cannot be listed
    (here a file) must not start the agent unenforced."""
    not_a_dir = tmp_path / "policies"
    not_a_dir.write_text("")
    agent = start_agent(
        "--journal", str(tmp_path / "journal"), "--keys", str(tmp_path / "keys"),
        "--policies", str(not_a_dir), "--run-dir", str(tmp_path / "run"),
    )  # fmt: skip
    try:
        rc = agent.wait(60 * SLOW)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    stderr = agent.stderr.read() if agent.stderr else ""
    assert rc != 0 and "cannot list the policy directory" in stderr, stderr
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["result"] == "rejected", status
    protect.clear_all(tmp_path / "journal")
