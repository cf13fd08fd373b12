"""Starting a real `sealtrail agent` from a test, tied to the test's life.

The agent holds fanotify marks and BPF hooks; if the test runner dies (a kill rule, a timeout),
an orphaned agent would keep enforcing on the machine. PR_SET_PDEATHSIG makes the kernel send
it SIGTERM when the runner exits, whatever way it exits.
"""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def start_agent(
    *args: str, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[str]:
    """The agent, its stderr a pipe (for short runs read with ``communicate``) or, with
    ``log``, that file: an agent that runs for a whole module must not block on a full pipe
    nobody reads (it logs every policy load and mark update at INFO)."""
    stderr = open(log, "a") if log is not None else subprocess.PIPE  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "agent", *args],
            stderr=stderr,
            text=True,
            preexec_fn=_die_with_parent,
            env=env,
        )
    finally:
        if log is not None:
            stderr.close()  # type: ignore[union-attr]


def agent_log(agent: subprocess.Popen[str], log: Path) -> str:
    """What a module-long agent logged so far (for an assertion message)."""
    del agent
    return log.read_text() if log.exists() else ""


def journal_records(journal: Path) -> list[dict[str, Any]]:
    """Every complete record of a live journal (the agent may be writing the last line)."""
    out = []
    for seg in sorted(journal.glob("seg-*.jsonl")):
        complete = seg.read_bytes().split(b"\n")[:-1]
        out += [json.loads(line) for line in complete if line]
    return out


def stop_agent(agent: subprocess.Popen[str], timeout: float, cgroup: Path, journal: Path) -> None:
    """SIGTERM the agent (SIGKILL if it does not stop), remove the test's cgroup once the
    agent let go of it, and clear the journal's append-only flags so pytest can delete it."""
    from agent.journal import protect

    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout)
    finally:
        if agent.poll() is None:
            agent.kill()
    for _ in range(50):
        try:
            cgroup.rmdir()
            break
        except OSError:
            time.sleep(0.1)
    if journal.exists():
        protect.clear_all(journal)
