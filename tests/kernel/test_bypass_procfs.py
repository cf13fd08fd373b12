"""Kernel e2e: what a process writes into its own /proc text cannot change who it is judged as.

A process names itself (``prctl(PR_SET_NAME)``, 15 bytes, the first line of
``/proc/PID/status``) and the kernel escapes only ``\\n`` and ``\\\\`` there. A name holding
``"\\rUid:\\t0\\rGid:\\t0"`` once made the agent read uid 0 (``str.splitlines`` splits at
``\\r``), so a rule for another user let that user's exec through; a forged ``Tgid`` would have
aimed a kill rule's SIGKILL at a pid of the caller's choice. The fanotify decision reads the
ids as the kernel wrote them.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.enforce.process import process_of
from agent.journal import protect
from agent.policy.mechanisms import host_capabilities
from tests.agentproc import end_process, journal_records, start_agent, unpin_agent, wait_started

pytestmark = pytest.mark.kernel

NOBODY = 65534
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"
POLICY = """
name = "bypass-procfs"
description = "an exact exec rule for uid 65534 only: a binary the test made"
mode = "enforce"

[[rules]]
id = "nobody-runs-nothing"
operation = "exec"
targets.paths = ["{binary}"]
action = "deny"
fallback = "kill"

[rules.subjects]
uid = [{uid}]
"""
#: runs as uid 65534: names itself NAME, then execs argv[2]; prints the errno it got
CALLER = textwrap.dedent("""
    import ctypes, os, sys
    ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME
    try:
        os.execv(sys.argv[2], [sys.argv[2]])
    except OSError as exc:
        print(exc.errno, flush=True)
""")
FORGED_NAMES = ["\rUid:\t0\rGid:\t0", "\x1cUid:\t0\x1cGid:", "\vUid:\t0\vGid:\t0"]


@pytest.fixture(scope="module")
def where() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sealtrail-procfs-", dir="/var/tmp"))  # others may exec
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def _caller(name: str, binary: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", CALLER, name, str(binary)],
        user=NOBODY, group=NOBODY, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_a_forged_name_does_not_change_the_ids_read(where: Path) -> None:
    script = "import ctypes, sys, time; ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)"
    for name in FORGED_NAMES:
        proc = subprocess.Popen(
            [PYTHON, "-c", script + "; print(1, flush=True); time.sleep(30)", name],
            user=NOBODY, group=NOBODY, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "1\n"
            process, tgid = process_of(proc.pid, with_ancestors=True)
            assert (process.uid, process.gid, tgid) == (NOBODY, NOBODY, proc.pid), name
            assert process.ancestors[1:2] == (os.path.realpath(os.readlink("/proc/self/exe")),)
        finally:
            proc.kill()
            proc.wait()


def test_a_forged_name_does_not_let_the_rules_user_exec(tmp_path: Path, where: Path) -> None:
    if not host_capabilities().fanotify:
        pytest.fail("this host kind has fanotify")
    binary = where / "only-not-for-nobody"
    shutil.copy2("/bin/true", binary)
    policies, journal = tmp_path / "policies", tmp_path / "journal"
    policies.mkdir()
    (policies / "p.toml").write_text(POLICY.format(binary=binary, uid=NOBODY))
    run, log = tmp_path / "run", tmp_path / "agent.log"
    agent = start_agent("--journal", str(journal), "--keys", str(tmp_path / "keys"),
                        "--policies", str(policies), "--run-dir", str(run), log=log)  # fmt: skip
    try:
        wait_started(agent, run, log, 60)
        ran = {name: _caller(name, binary) for name in ["plain", *FORGED_NAMES]}
        root = subprocess.run([str(binary)], timeout=30)
    finally:
        end_process(agent, signal.SIGTERM, 30)
        unpin_agent(agent)
    protect.clear_all(journal)
    for name, result in ran.items():
        assert result.stdout.strip() == str(errno.EPERM), (name, result)
    assert root.returncode == 0  # the rule is uid 65534's only
    denies = [
        r for r in journal_records(journal)
        if r["type"] == "verdict" and r["rule"] == "nobody-runs-nothing" and r["action"] == "deny"
    ]  # fmt: skip
    assert len(denies) == len(ran), denies
    # refused at the permission event (not let through and caught afterwards)
    assert {(r["mechanism"], r["after_the_fact"]) for r in denies} == {("fanotify", False)}
