"""Kernel e2e: the agent short of what its judgement relies on fails closed or refuses, and says
so. Without CAP_SYS_PTRACE the binary of another user's task cannot be read: a rule scoped to a
binary then judges that task as if it ran any binary (it used to be skipped: fail-open). In a
PID namespace of its own (a container) the pids the kernel reports name other processes: a rule
that needs a kill by pid is refused in enforce mode, and the agent and doctor say why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.enforce.cgroups import cgroup2_root
from tests.agentproc import journal_records, start_agent, stop_agent, wait_started

pytestmark = pytest.mark.kernel

PY = sys.executable
SLOW = 10 if os.environ.get("SEALTRAIL_VM") else 1
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]

POLICY = """
name = "privileges"
description = "an open rule scoped to a binary, on a file the test made"
mode = "enforce"

[[rules]]
id = "cat-may-not-read"
operation = "open"
targets.paths = ["{secret}"]
access = ["read"]
subjects.exe = ["{cat}"]
action = "deny"
fallback = "{fallback}"
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="sealtrail-priv-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_without_cap_sys_ptrace_a_binary_scoped_deny_judges_other_users_fail_closed(
    tmp_path: Path, shared_dir: Path
) -> None:
    secret = shared_dir / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    cat = os.path.realpath(shutil.which("cat") or "/usr/bin/cat")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.toml").write_text(POLICY.format(secret=secret, cat=cat, fallback="audit"))
    journal, run_dir, log = tmp_path / "journal", tmp_path / "run", tmp_path / "agent.log"
    cgroup = cgroup2_root() / f"sealtrail-priv-{os.getpid()}"
    cgroup.mkdir()
    # root, but without CAP_SYS_PTRACE: /proc/PID/exe of another user's task is refused
    drop = ("setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace")
    agent = start_agent(
        "--journal", str(journal), "--keys", str(tmp_path / "keys"),
        "--policies", str(policies), "--cgroup", str(cgroup), "--run-dir", str(run_dir),
        log=log, wrap=drop,
    )  # fmt: skip
    try:
        wait_started(agent, run_dir, log, 30 * SLOW)
        status = json.loads((run_dir / "status.json").read_text())
        assert status["result"] == "loaded", status
        logged = log.read_text()
        assert "CAP_SYS_PTRACE" in logged and "fail-closed" in logged, logged
        # another user's cat: its binary cannot be read, so the rule holds (EPERM)
        out = subprocess.run([*NOBODY, cat, str(secret)], capture_output=True, text=True,
                             timeout=30 * SLOW)  # fmt: skip
        assert out.returncode != 0 and "Operation not permitted" in out.stderr, out
        # ... and another binary of that user is judged the same way: it may be any binary
        head = os.path.realpath(shutil.which("head") or "/usr/bin/head")
        out = subprocess.run([*NOBODY, head, str(secret)], capture_output=True, text=True,
                             timeout=30 * SLOW)  # fmt: skip
        assert out.returncode != 0 and "Operation not permitted" in out.stderr, out
        # a task the agent may read (root, holding no capability the agent lacks): its binary
        # is known and is not cat: allowed, as the rule says
        out = subprocess.run([*drop, head, str(secret)], capture_output=True, text=True,
                             timeout=30 * SLOW)  # fmt: skip
        assert out.stdout == "s3cret\n", out
    finally:
        stop_agent(agent, 30 * SLOW, cgroup, journal)
    records = journal_records(journal)
    (start,) = [r for r in records if r["type"] == "start"]
    assert start["missing_capabilities"] == ["CAP_SYS_PTRACE"], start
    verdicts = [r for r in records if r["type"] == "verdict" and r["rule"] == "cat-may-not-read"]
    assert len(verdicts) >= 2, verdicts
    assert all(v["action"] == "deny" and v["object"]["exe_unknown"] for v in verdicts), verdicts


def test_in_a_pid_namespace_of_its_own_a_kill_fallback_is_refused_and_doctor_says_why(
    tmp_path: Path, shared_dir: Path
) -> None:
    secret = shared_dir / "secret"
    secret.write_text("x\n")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.toml").write_text(POLICY.format(secret=secret, cat="/usr/bin/cat",
                                                   fallback="kill"))  # fmt: skip
    container = ("unshare", "--pid", "--fork", "--mount-proc")
    cgroup = cgroup2_root() / f"sealtrail-pidns-{os.getpid()}"
    cgroup.mkdir()
    journal = tmp_path / "journal"
    agent = start_agent(
        "--journal", str(journal), "--keys", str(tmp_path / "keys"),
        "--policies", str(policies), "--cgroup", str(cgroup),
        "--run-dir", str(tmp_path / "run"), wrap=container,
    )  # fmt: skip
    try:
        _, err = agent.communicate(timeout=60 * SLOW)
    finally:
        stop_agent(agent, 30 * SLOW, cgroup, journal)
    assert agent.returncode != 0, err
    assert "not in the host's PID namespace" in err and "cat-may-not-read" in err, err
    assert "policy rejected, not starting" in err, err

    doctor = subprocess.run(
        [*container, PY, "-m", "agent.cli", "doctor", "--json"],
        capture_output=True, text=True, timeout=60 * SLOW,
    )  # fmt: skip
    check = json.loads(doctor.stdout)["checks"]["host_pid_namespace"]
    assert not check["ok"] and "a container" in check["detail"], check
    check_host = subprocess.run(
        [*container, PY, "-m", "agent.cli", "policy", "check", "--host", str(policies)],
        capture_output=True, text=True, timeout=60 * SLOW,
    )  # fmt: skip
    assert check_host.returncode == 1, check_host.stdout + check_host.stderr
    assert "not in the host's PID namespace" in check_host.stdout, check_host.stdout
    # on the host itself the same policy is enforceable
    on_host = subprocess.run(
        [PY, "-m", "agent.cli", "policy", "check", "--host", str(policies)],
        capture_output=True, text=True, timeout=60 * SLOW,
    )  # fmt: skip
    assert on_host.returncode == 0, on_host.stdout + on_host.stderr
