"""Kernel e2e: the in-kernel guard outlives the agent (agent.kernel.pins).

A forbidden connect is attempted in a tight loop, from a process in a cgroup the test created,
while the agent is killed with SIGKILL and started again: no attempt may succeed, the restarted
agent takes the pinned guard over (one program per hook, not two), every attempt made while no
agent ran is judged by the kernel and journaled by the next agent under its rule, and the
journal verifies across the restart. A clean stop leaves the guard enforcing too; only
``sealtrail agent --unpin`` detaches it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.enforce.cgroups import cgroup2_root
from agent.kernel.loader import cgroup_program_ids
from tests.agentproc import (
    CONNECT_DENY_POLICY,
    agent_log,
    connect_in_cgroup,
    end_process,
    journal_records,
    remove_cgroup,
    start_agent,
)

pytestmark = pytest.mark.kernel

PY = sys.executable
SLOW = 10 if os.environ.get("SEALTRAIL_VM") else 1
# enum bpf_attach_type: the cgroup hooks of the network guard
ATTACH_TYPES = {"bind4": 8, "bind6": 9, "connect4": 10, "connect6": 11, "sendmsg4": 14,
                "sendmsg6": 15}  # fmt: skip


AUDIT_OPEN = """
name = "pinning"
description = "no rule the in-kernel guard judges here"
mode = "enforce"

[[rules]]
id = "audit-open"
description = "opens of a file the test created are recorded"
operation = "open"
targets.paths = ["{path}"]
action = "audit"
"""

# connect(2) to the port in a loop; one line per attempt: "<monotonic> ok|eperm|<errno>"
LOOP = textwrap.dedent(
    """
    import errno, os, socket, sys, time
    port, out, stop = int(sys.argv[1]), open(sys.argv[2], "w", buffering=1), sys.argv[3]
    while not os.path.exists(stop):
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
            what = "ok"
        except OSError as e:
            what = "eperm" if e.errno == errno.EPERM else str(e.errno)
        finally:
            s.close()
        out.write(f"{time.monotonic()} {what}\\n")
        time.sleep(0.002)
    """
)


@dataclass
class Env:
    root: Path
    cgroup: Path
    pin_dir: Path
    port: int

    def agent_args(self) -> tuple[str, ...]:
        r = self.root
        return ("--journal", str(r / "journal"), "--keys", str(r / "keys"),
                "--policies", str(r / "policies"), "--cgroup", str(self.cgroup),
                "--run-dir", str(r / "run"), "--pin-dir", str(self.pin_dir))  # fmt: skip

    def start(self) -> subprocess.Popen[str]:
        """An agent on this environment, once it enforces (status.json names its pid)."""
        log = self.root / "agent.log"
        agent = start_agent(*self.agent_args(), log=log)
        status = self.root / "run" / "status.json"
        deadline = time.monotonic() + 30 * SLOW
        while True:
            assert agent.poll() is None, agent_log(agent, log)
            assert time.monotonic() < deadline, "agent did not start"
            try:
                st = json.loads(status.read_text())
                if st["pid"] == agent.pid:
                    assert st["result"] == "loaded", st
                    return agent
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)

    def connect_from_cgroup(self) -> str:
        return connect_in_cgroup(self.cgroup, self.port)

    def sealtrail(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "agent.cli", *args], capture_output=True, text=True,
                              timeout=60 * SLOW)  # fmt: skip

    def programs(self) -> dict[str, set[int]]:
        return {hook: cgroup_program_ids(self.cgroup, t) for hook, t in ATTACH_TYPES.items()}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    root = tmp_path.resolve()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    (root / "policies").mkdir()
    (root / "policies" / "pinning.toml").write_text(
        CONNECT_DENY_POLICY.format(name="pinning", port=port)
    )
    cgroup = cgroup2_root() / f"sealtrail-pin-{os.getpid()}"
    cgroup.mkdir()
    pin_dir = Path("/sys/fs/bpf/sealtrail-tests") / f"pinning-{os.getpid()}"
    env = Env(root, cgroup, pin_dir, port)
    try:
        yield env
    finally:
        listener.close()
        unpinned = env.sealtrail("agent", "--unpin", "--pin-dir", str(pin_dir))
        assert unpinned.returncode == 0, unpinned.stderr
        remove_cgroup(cgroup)
        from agent.journal import protect

        if (root / "journal").exists():
            protect.clear_all(root / "journal")


def stop(agent: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    end_process(agent, sig, 30 * SLOW)


def attempts(path: Path) -> list[tuple[float, str]]:
    rows = []
    for line in path.read_text().splitlines():
        t, what = line.split()
        rows.append((float(t), what))
    return rows


def test_the_guard_denies_through_a_kill_and_a_restart_takes_it_over(env: Env) -> None:
    first = env.start()
    before = env.programs()
    assert all(len(ids) == 1 for ids in before.values()), before
    out, stop_file = env.root / "attempts.txt", env.root / "stop"
    script = f'echo $$ > {env.cgroup}/cgroup.procs && exec "$@"'
    loop = subprocess.Popen(["/bin/sh", "-c", script, "sh", PY, "-c", LOOP, str(env.port),
                             str(out), str(stop_file)])  # fmt: skip
    second = None
    try:
        time.sleep(1.0)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        dead_at = time.monotonic()
        time.sleep(1.5)  # no agent: the pinned guard alone judges
        while_down = env.programs()
        second = env.start()
        ready_at = time.monotonic()
        time.sleep(1.0)
        taken_over = env.programs()
    finally:
        stop_file.touch()
        loop.wait(30)
    rows = attempts(out)
    outcomes = {what for _, what in rows}
    assert outcomes == {"eperm"}, f"an attempt was not denied: {outcomes}"
    down = [t for t, _ in rows if dead_at <= t <= ready_at]
    assert len(down) > 100, "the loop did not run while the agent was down"
    # the pinned links kept the very programs attached, and the new agent switched them over
    # to its own: one per hook, never two stacked
    assert while_down == before
    assert all(len(ids) == 1 for ids in taken_over.values()), taken_over
    assert taken_over["connect4"] != before["connect4"], "the new agent's program is not live"

    # every attempt made while no agent ran was judged in the kernel and is journaled now,
    # under its rule (the rule table of the pinned generation was kept beside the pins)
    assert second is not None
    deadline = time.monotonic() + 15 * SLOW
    while True:
        records = journal_records(env.root / "journal")
        starts = [i for i, r in enumerate(records) if r["type"] == "start"]
        after = records[starts[-1] :]
        verdicts = [r for r in after if r["type"] == "verdict" and r["pid"] == loop.pid]
        if len(verdicts) >= len(down) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(verdicts) >= len(down), (len(verdicts), len(down))
    assert {(v["rule"], v["action"], v["mechanism"]) for v in verdicts} == {
        ("deny-connect", "deny", "cgroup-sock")
    }
    assert not [r for r in after if r["type"] == "loss"], "records lost across the restart"
    takeover = [r for r in after if r["type"] == "guard_takeover"]
    assert len(takeover) == 1 and takeover[0]["generation"] >= 1, takeover

    # a clean stop leaves the guard enforcing; --unpin detaches it
    stop(second)
    verify = env.sealtrail("journal", "verify", "--journal", str(env.root / "journal"),
                           "--key", str(env.root / "keys" / "journal.pub"))  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert env.connect_from_cgroup() == "1"  # EPERM, with no agent running
    unpin = env.sealtrail("agent", "--unpin", "--pin-dir", str(env.pin_dir))
    assert unpin.returncode == 0, unpin.stderr
    assert all(not ids for ids in env.programs().values()), env.programs()
    assert env.connect_from_cgroup() == "ok"
    assert not env.pin_dir.exists()


def test_a_second_agent_on_the_same_pins_is_refused_and_unpin_waits_for_the_agent(
    env: Env,
) -> None:
    first = env.start()
    try:
        other = env.sealtrail("agent", *env.agent_args())
        assert other.returncode != 0
        assert "another sealtrail agent holds it" in other.stderr, other.stderr
        assert "Traceback" not in other.stderr
        unpin = env.sealtrail("agent", "--unpin", "--pin-dir", str(env.pin_dir))
        assert unpin.returncode != 0 and "another sealtrail agent" in unpin.stderr
        assert env.connect_from_cgroup() == "1"  # the running agent still enforces
    finally:
        stop(first)


def test_a_policy_without_network_rules_replaces_the_pinned_guard(env: Env) -> None:
    """The guard an earlier agent pinned must not go on enforcing a rule the new policy
    dropped: the new agent takes it over and installs its (empty) tables."""
    stop(env.start(), signal.SIGKILL)
    assert env.connect_from_cgroup() == "1"
    watched = env.root / "watched.txt"
    watched.write_text("")
    (env.root / "policies" / "pinning.toml").write_text(AUDIT_OPEN.format(path=watched))
    agent = env.start()
    try:
        assert env.connect_from_cgroup() == "ok"
    finally:
        stop(agent)
