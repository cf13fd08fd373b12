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
    } or os.environ.get("SEALTRAIL_EXPECT_LSM")
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
