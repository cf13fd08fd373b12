"""Starting a real `sealtrail agent` from a test, tied to the test's life.

The agent holds fanotify marks and BPF hooks; if the test runner dies (a kill rule, a timeout),
an orphaned agent would keep enforcing on the machine. PR_SET_PDEATHSIG makes the kernel send
it SIGTERM when the runner exits, whatever way it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
#: test agents pin under here, never in the machine's own /sys/fs/bpf/sealtrail
PIN_ROOT = Path("/sys/fs/bpf/sealtrail-tests")
_pin_numbers = itertools.count()
_pin_dirs: dict[int, Path] = {}  # agent pid -> its pin directory
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def fresh_pin_dir() -> Path:
    """A pin directory of this test run's own: a test agent never takes over (or leaves
    behind) the machine's /sys/fs/bpf/sealtrail. Removed at exit (``unpin_all``)."""
    return PIN_ROOT / f"test-{os.getpid()}-{next(_pin_numbers)}"


def unpin_all() -> None:
    """Detach what the test agents pinned (conftest, at the end of the session): nothing a
    test started stays enforcing. A pin directory an agent still holds is left to it."""
    from agent.kernel.pins import PinError, unpin

    for path in sorted(PIN_ROOT.glob(f"test-{os.getpid()}-*")) if PIN_ROOT.exists() else []:
        with contextlib.suppress(PinError):
            unpin(path)
    with contextlib.suppress(OSError):
        PIN_ROOT.rmdir()  # when no other test run uses it


def start_agent(
    *args: str,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    wrap: tuple[str, ...] = (),
) -> subprocess.Popen[str]:
    """The agent, its stderr a pipe (for short runs read with ``communicate``) or, with
    ``log``, that file: an agent that runs for a whole module must not block on a full pipe
    nobody reads (it logs every policy load and mark update at INFO). Its pins go to a
    directory of the test run's own unless ``--pin-dir`` is among ``args``. ``wrap`` runs it
    under another command (``setpriv``, ``unshare``) that execs it."""
    pin_dir = None
    if "--pin-dir" not in args and "--no-pin" not in args:
        pin_dir = fresh_pin_dir()
        args = (*args, "--pin-dir", str(pin_dir))
    stderr = open(log, "a") if log is not None else subprocess.PIPE  # noqa: SIM115
    try:
        agent = subprocess.Popen(
            [*wrap, sys.executable, "-m", "agent.cli", "agent", *args],
            stderr=stderr,
            text=True,
            preexec_fn=_die_with_parent,
            env=env,
        )
        if pin_dir is not None:
            _pin_dirs[agent.pid] = pin_dir
        return agent
    finally:
        if log is not None:
            stderr.close()  # type: ignore[union-attr]


def unpin_agent(agent: subprocess.Popen[str]) -> None:
    """Detach what a stopped test agent pinned (an agent stops, its pins stay: by design)."""
    from agent.kernel.pins import unpin

    pin_dir = _pin_dirs.pop(agent.pid, None)
    if pin_dir is not None:
        unpin(pin_dir)


def agent_log(agent: subprocess.Popen[str], log: Path) -> str:
    """What a module-long agent logged so far (for an assertion message)."""
    del agent
    return log.read_text() if log.exists() else ""


def wait_started(agent: subprocess.Popen[str], run_dir: Path, log: Path, timeout: float) -> None:
    """Until the agent (started with ``log`` and ``--run-dir run_dir``) wrote its status, i.e.
    enforces; fails with its log if it stops or takes longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (run_dir / "status.json").exists():
        assert agent.poll() is None, agent_log(agent, log)
        assert time.monotonic() < deadline, "agent did not start"
        time.sleep(0.1)


def journal_records(journal: Path) -> list[dict[str, Any]]:
    """Every complete record of a live journal (the agent may be writing the last line)."""
    out = []
    for seg in sorted(journal.glob("seg-*.jsonl")):
        complete = seg.read_bytes().split(b"\n")[:-1]
        out += [json.loads(line) for line in complete if line]
    return out


def rule_verdicts(journal: Path, rule: str) -> list[dict[str, Any]]:
    """The verdict records ``rule`` has in a live journal so far."""
    return [r for r in journal_records(journal)
            if r.get("type") == "verdict" and r.get("rule") == rule]  # fmt: skip


def end_process(proc: subprocess.Popen[str], sig: int, timeout: float) -> None:
    """Send ``sig`` to a process the test started (unless it is gone), wait for it, and
    SIGKILL it if it does not end in ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout)


def remove_cgroup(cgroup: Path) -> None:
    """rmdir a cgroup the test made, once the kernel let go of it (its last task gone)."""
    for _ in range(50):
        try:
            cgroup.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def stop_agent(agent: subprocess.Popen[str], timeout: float, cgroup: Path, journal: Path) -> None:
    """SIGTERM the agent (SIGKILL if it does not stop), remove the test's cgroup once the
    agent let go of it, and clear the journal's append-only flags so pytest can delete it."""
    from agent.journal import protect

    end_process(agent, signal.SIGTERM, timeout)
    unpin_agent(agent)
    remove_cgroup(cgroup)
    if journal.exists():
        protect.clear_all(journal)


#: A policy of one rule the in-kernel guard judges: connect to 127.0.0.1:{port} is denied,
#: for processes in the cgroup the test attaches the guard to (``connect_in_cgroup``).
CONNECT_DENY_POLICY = """
name = "{name}"
description = "a connect deny to a port the test listens on"
mode = "enforce"

[[rules]]
id = "deny-connect"
description = "connect to the test's listening port"
operation = "connect"
targets.addresses = ["127.0.0.1/32"]
targets.ports = [{port}]
action = "deny"
"""


def connect_in_cgroup(cgroup: Path, port: int) -> str:
    """connect(2) to 127.0.0.1:``port`` from a new process in ``cgroup``: "ok", or the errno
    as a string ("1": EPERM)."""
    code = (f"import socket; s = socket.socket()\ntry: s.connect(('127.0.0.1', {port}))"
            "; print('ok')\nexcept OSError as e: print(e.errno)")  # fmt: skip
    script = f'echo $$ > {cgroup}/cgroup.procs && exec "$@"'
    out = subprocess.run(["/bin/sh", "-c", script, "sh", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    return out.stdout.strip()


@contextlib.contextmanager
def agent_in(root: Path, policy: str, name: str) -> Iterator[tuple[Path, Path]]:
    """A real agent for one test: ``policy`` (TOML text) in ``root``/policies, journal, keys
    and run dir in ``root``, its guard on a new cgroup ``name``-PID; yields (journal, cgroup)
    once it enforces, stops it and removes the cgroup at the end (``root`` is the caller's)."""
    from agent.enforce.guard import cgroup2_root

    policies = root / "policies"
    policies.mkdir()
    (policies / "p.toml").write_text(policy)
    cgroup = cgroup2_root() / f"{name}-{os.getpid()}"
    cgroup.mkdir()
    journal, run_dir, log = root / "journal", root / "run", root / "agent.log"
    agent = start_agent("--journal", str(journal), "--keys", str(root / "keys"), "--policies",
                        str(policies), "--cgroup", str(cgroup), "--run-dir", str(run_dir),
                        log=log)  # fmt: skip
    try:
        wait_started(agent, run_dir, log, 60)
        yield journal, cgroup
    finally:
        stop_agent(agent, 30, cgroup, journal)
