"""Kernel e2e: the journal's filesystem fills up (a small tmpfs the test mounts) while the real
agent records every exec on the host: enforcement goes on, status.json and the log say the
journal is not writable, and once space returns the agent journals what it could not record (a
``loss`` record) and the journal, with nothing already written damaged, verifies."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.enforce.cgroups import cgroup2_root
from agent.journal import protect
from tests.agentproc import (
    CONNECT_DENY_POLICY,
    agent_log,
    connect_in_cgroup,
    journal_records,
    start_agent,
    stop_agent,
)

pytestmark = pytest.mark.kernel

PY = sys.executable
SLOW = 10 if os.environ.get("SEALTRAIL_VM") else 1


def status(run_dir: Path) -> dict[str, object]:
    try:
        doc: dict[str, object] = json.loads((run_dir / "status.json").read_text())
        return doc
    except (OSError, ValueError):
        return {}


def test_a_full_journal_disk_stops_recording_not_enforcing_and_the_loss_is_journaled(
    tmp_path: Path,
) -> None:
    root = tmp_path.resolve()
    fs = root / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=384k", "sealtrail-test", str(fs)],
                   check=True)  # fmt: skip
    journal, run_dir, log = fs / "journal", root / "run", root / "agent.log"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    (root / "policies").mkdir()
    (root / "policies" / "p.toml").write_text(
        CONNECT_DENY_POLICY.format(name="full-disk", port=port)
    )
    cgroup = cgroup2_root() / f"sealtrail-full-{os.getpid()}"
    cgroup.mkdir()
    agent = None
    try:
        agent = start_agent(
            "--journal", str(journal), "--keys", str(root / "keys"),
            "--policies", str(root / "policies"), "--cgroup", str(cgroup),
            "--run-dir", str(run_dir), log=log,
        )  # fmt: skip
        deadline = time.monotonic() + 30 * SLOW
        while status(run_dir).get("result") != "loaded":
            assert agent.poll() is None, agent_log(agent, log)
            assert time.monotonic() < deadline, "agent did not start"
            time.sleep(0.1)
        # every exec on the host is journaled: exec until the filesystem is full
        deadline = time.monotonic() + 120 * SLOW
        while status(run_dir).get("journal", "ok") == "ok":
            assert agent.poll() is None, agent_log(agent, log)
            assert time.monotonic() < deadline, "the journal never filled up"
            for _ in range(50):
                subprocess.run(["/bin/true"])
        down = status(run_dir)["journal"]
        assert isinstance(down, dict) and "No space" in str(down["error"]), down
        assert "recording stops, enforcement goes on" in log.read_text()

        out = connect_in_cgroup(cgroup, port)
        assert out == "1", out  # still EPERM: enforcement goes on
        for _ in range(20):
            subprocess.run(["/bin/true"])  # not recorded, counted
        assert agent.poll() is None

        subprocess.run(["mount", "-o", "remount,size=16m", str(fs)], check=True)  # space returns
        deadline = time.monotonic() + 30 * SLOW
        while status(run_dir).get("journal") != "ok":
            assert agent.poll() is None, agent_log(agent, log)
            assert time.monotonic() < deadline, "the agent did not open the journal again"
            time.sleep(0.2)
        assert "the journal is writable again" in log.read_text()
    finally:
        if agent is not None:
            stop_agent(agent, 30 * SLOW, cgroup, journal)
        listener.close()
        if journal.exists():
            protect.clear_all(journal)
    try:
        records = journal_records(journal)
        (loss,) = [r for r in records if r["type"] == "loss" and r.get("reason")]
        assert loss["reason"] == "journal_unwritable"
        assert loss["drops"]["journal_unwritable"] >= 20, loss
        assert loss["records_by_type"].get("event", 0) >= 20, loss
        assert [r for r in records if r["type"] == "verdict"] == []  # denied while down
        assert any(r["type"] == "recovery" for r in records)  # the torn line cut, and said
        verify = subprocess.run(
            [PY, "-m", "agent.cli", "journal", "verify", "--journal", str(journal),
             "--key", str(root / "keys" / "journal.pub")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        subprocess.run(["umount", str(fs)], check=False)
