"""Kernel e2e: fanotify enforcement holds through a crash of the agent, by systemd's fd store
(agent.enforce.handover).

This test plays the service manager's part of the protocol exactly as systemd does it, over a
real ``$NOTIFY_SOCKET``: it keeps the fanotify group the agent sends with ``FDSTORE=1``
(SCM_RIGHTS), and passes it to the next agent at fd 3 with ``LISTEN_FDS``/``LISTEN_FDNAMES``/
``LISTEN_PID``. (The packaging test does the same under real systemd, tests/packaging.) A
forbidden exec is attempted in a loop while the agent is killed with SIGKILL: no attempt
succeeds, the attempt made while no agent ran waits in the kernel and is denied and journaled
by the next agent; the next agent can itself be started while the group waits (its exec chain
is exempt); and a group that is not passed back is journaled as a gap.
"""

from __future__ import annotations

import array
import ctypes
import json
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.journal import protect
from tests.agentproc import end_process, fresh_pin_dir, journal_records
from tests.conftest import REPO

pytestmark = pytest.mark.kernel

PY = sys.executable
SLOW = 10 if os.environ.get("SEALTRAIL_VM") else 1
_libc = ctypes.CDLL(None, use_errno=True)

POLICY = """
name = "fdstore"
description = "an exec deny that fanotify judges (no BPF-LSM here)"
mode = "enforce"

[[rules]]
id = "no-forbidden"
description = "the test's forbidden binary"
operation = "exec"
targets.paths = ["{forbidden}"]
action = "deny"
fallback = "kill"  # what fanotify cannot stop (io_uring, a race with a rename) is killed after
"""

OPEN_RULE = """
name = "policies"
description = "an open rule on a directory the agent opens as it starts"
mode = "enforce"

[[rules]]
id = "no-policy-writes"
description = "nobody writes the policy directory"
operation = "open"
access = ["write"]
targets.paths = ["{dir}/"]
action = "deny"
fallback = "kill"
"""

# exec the forbidden binary in a loop; a line per attempt: "<start> <end> ok|eperm|<error>"
LOOP = textwrap.dedent(
    """
    import os, subprocess, sys, time
    forbidden, witness, out, stop = sys.argv[1:5]
    log = open(out, "w", buffering=1)
    while not os.path.exists(stop):
        t0 = time.monotonic()
        try:
            subprocess.run([forbidden, witness], timeout=60)
            what = "ok"
        except PermissionError:
            what = "eperm"
        except Exception as e:
            what = type(e).__name__
        log.write(f"{t0} {time.monotonic()} {what}\\n")
        time.sleep(0.005)
    """
)


@dataclass
class Manager:
    """The service manager's side of sd_notify and the fd store."""

    root: Path
    sock: socket.socket = field(init=False)
    stored: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = self.root / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)

    def receive(self) -> list[dict[str, str]]:
        msgs = []
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
            except TimeoutError:
                return msgs
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            fds = array.array("i")
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(raw[: len(raw) - len(raw) % fds.itemsize])
            if fields.get("FDSTORE") == "1":
                name = fields.get("FDNAME", "stored")
                old = self.stored.pop(name, None)
                if old is not None:
                    os.close(old)
                self.stored[name] = fds[0]
                for extra in fds[1:]:
                    os.close(extra)
            else:
                for fd in fds:
                    os.close(fd)
            msgs.append(fields)

    def wait_ready(self, agent: subprocess.Popen[str], log: Path) -> None:
        deadline = time.monotonic() + 30 * SLOW
        while time.monotonic() < deadline:
            assert agent.poll() is None, log.read_text()
            if any(m.get("READY") == "1" for m in self.receive()):
                return
        raise AssertionError("no READY=1: " + log.read_text())

    def start(
        self, args: list[str], log: Path, *, pass_group: bool, python: Path | None = None
    ) -> subprocess.Popen[str]:
        """The agent with $NOTIFY_SOCKET, and with the stored group at fd 3 if asked; run by
        ``python`` (the agent's private interpreter, ``private_python``) if given."""
        group = self.stored.get("fanotify") if pass_group else None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
        env["NOTIFY_SOCKET"] = str(self.path)
        if python is not None:  # the checkout and its venv's packages, on another interpreter
            env["PYTHONPATH"] = os.pathsep.join([str(REPO), *site.getsitepackages()])
        if group is not None:
            env.update(LISTEN_FDS="1", LISTEN_FDNAMES="fanotify")

        def child() -> None:
            _libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG: dies with the runner
            if group is not None:
                os.dup2(group, 3)  # inheritable, as systemd passes it
                os.environ["LISTEN_PID"] = str(os.getpid())

        saved = dict(os.environ)
        os.environ.update(env)  # the child's environ is this process's at exec (env=None)
        try:
            with open(log, "a") as err:
                argv = [str(python or PY), "-m", "agent.cli", "agent", *args]
                return subprocess.Popen(argv, stderr=err, text=True, preexec_fn=child,
                                        close_fds=False)  # fmt: skip
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def release(self) -> None:
        """What systemd does when the unit stops for good: close the store."""
        for fd in self.stored.values():
            os.close(fd)
        self.stored.clear()


def private_python(root: Path) -> Path:
    """The agent's own interpreter, as the package has it: a copy in a virtual environment
    whose ELF loader is a private copy too (patchelf), both only root may execute; the agent
    exempts exactly these from its group, so that its restart can exec while the group waits."""
    venv = root / "venv"
    subprocess.run([PY, "-m", "venv", "--copies", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python3-agent"
    shutil.copy2(venv / "bin" / "python3", python)
    loader = venv / "lib" / "ld-agent.so"
    shutil.copy2(os.path.realpath("/lib64/ld-linux-x86-64.so.2"), loader)
    subprocess.run(["patchelf", "--set-interpreter", str(loader), str(python)], check=True)
    for path in (python, loader):
        path.chmod(0o700)
    return python


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Manager, list[str], Path]]:
    root = tmp_path.resolve()
    work = root / "work"
    (work / "bin").mkdir(parents=True)
    forbidden = work / "bin" / "forbidden"
    forbidden.write_bytes(Path("/usr/bin/touch").read_bytes())
    forbidden.chmod(0o755)
    (root / "policies").mkdir()
    (root / "policies" / "fdstore.toml").write_text(POLICY.format(forbidden=forbidden))
    pin_dir = fresh_pin_dir()
    args = ["--journal", str(root / "journal"), "--keys", str(root / "keys"),
            "--policies", str(root / "policies"), "--run-dir", str(root / "run"),
            "--pin-dir", str(pin_dir)]  # fmt: skip
    manager = Manager(root)
    try:
        yield manager, args, root
    finally:
        manager.release()
        manager.sock.close()
        from agent.kernel.pins import unpin

        unpin(pin_dir)
        if (root / "journal").exists():
            protect.clear_all(root / "journal")


def kill(agent: subprocess.Popen[str], sig: int) -> None:
    end_process(agent, sig, 30 * SLOW)


def test_a_forbidden_exec_waits_through_a_kill_and_the_next_agent_denies_it(
    setup: tuple[Manager, list[str], Path],
) -> None:
    manager, args, root = setup
    log = root / "agent.log"
    python = private_python(root)
    first = manager.start(args, log, pass_group=False, python=python)
    second = None
    loop = None
    try:
        manager.wait_ready(first, log)
        assert "fanotify" in manager.stored, "the agent did not hand its group to the store"
        status = json.loads((root / "run" / "status.json").read_text())
        assert status["fanotify_restart"] == "held", status
        forbidden, witness = root / "work" / "bin" / "forbidden", root / "witness"
        out, stop = root / "attempts.txt", root / "stop"
        loop = subprocess.Popen([PY, "-c", LOOP, str(forbidden), str(witness), str(out),
                                 str(stop)])  # fmt: skip
        time.sleep(1.0)
        kill(first, signal.SIGKILL)
        dead_at = time.monotonic()
        time.sleep(1.0)  # no agent: the loop's exec waits in the kernel
        second = manager.start(args, log, pass_group=True, python=python)
        manager.wait_ready(second, log)
        back_at = time.monotonic()
        time.sleep(0.5)
    finally:
        (root / "stop").touch()
        if loop is not None:
            loop.wait(60)
    rows = [line.split() for line in out.read_text().splitlines()]
    assert {what for _, _, what in rows} == {"eperm"}, rows
    assert not witness.exists(), "the forbidden binary ran"
    # an attempt begun while no agent ran waited for the next one (fail closed), and was denied
    waited = [r for r in rows if float(r[0]) < back_at and float(r[1]) > back_at - 0.05
              and float(r[0]) > dead_at - 0.1]  # fmt: skip
    assert waited, f"no attempt spanned the restart: {rows[-5:]}"
    assert second is not None
    deadline = time.monotonic() + 10 * SLOW
    while True:
        records = journal_records(root / "journal")
        last_start = max(i for i, r in enumerate(records) if r["type"] == "start")
        verdicts = [r for r in records[last_start:] if r["type"] == "verdict"
                    and r["rule"] == "no-forbidden"]  # fmt: skip
        if verdicts or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert verdicts and verdicts[0]["mechanism"] == "fanotify", verdicts
    assert not [r for r in records[last_start:] if r["type"] == "enforcement_gap"]
    (takeover,) = [r for r in records[last_start:] if r["type"] == "fanotify_takeover"]
    assert takeover["marks"] >= 1, takeover
    kill(second, signal.SIGTERM)
    status = json.loads((root / "run" / "status.json").read_text())
    assert status["pid"] == second.pid


def test_a_group_systemd_released_is_journaled_as_a_gap(
    setup: tuple[Manager, list[str], Path],
) -> None:
    manager, args, root = setup
    log = root / "agent.log"
    python = private_python(root)
    first = manager.start(args, log, pass_group=False, python=python)
    manager.wait_ready(first, log)
    assert (root / "fanotify-held").exists()
    kill(first, signal.SIGKILL)
    manager.release()  # the start limit was hit: systemd let the group go
    witness = root / "after-release"
    assert subprocess.run([str(root / "work" / "bin" / "forbidden"), str(witness)]).returncode == 0
    second = manager.start(args, log, pass_group=False, python=python)
    try:
        manager.wait_ready(second, log)
        records = journal_records(root / "journal")
        last_start = max(i for i, r in enumerate(records) if r["type"] == "start")
        gaps = [r for r in records[last_start:] if r["type"] == "enforcement_gap"]
        assert len(gaps) == 1 and gaps[0]["mechanism"] == "fanotify", gaps
    finally:
        kill(second, signal.SIGTERM)
    # a clean stop is no gap: the note is gone, the next start journals nothing
    assert not (root / "fanotify-held").exists()


@pytest.mark.parametrize("why", ["shared interpreter", "open rule on the policies"])
def test_a_group_that_would_hang_the_restart_is_not_held_and_the_agent_says_why(
    setup: tuple[Manager, list[str], Path], why: str
) -> None:
    """Held, the group would make the next agent wait on itself: on an interpreter the host
    shares (exempting it would exempt every python on the host), or when a rule asks for opens
    the agent makes as it starts. Then nothing is stored, and status.json says why."""
    manager, args, root = setup
    python = None
    if why == "open rule on the policies":
        python = private_python(root)
        (root / "policies" / "own.toml").write_text(OPEN_RULE.format(dir=root / "policies"))
    log = root / "agent.log"
    agent = manager.start(args, log, pass_group=False, python=python)
    try:
        manager.wait_ready(agent, log)
        assert "fanotify" not in manager.stored
        status = json.loads((root / "run" / "status.json").read_text())
        expected = "is the host's, not the agent's own" if python is None else "agent itself opens"
        assert expected in status["fanotify_restart"], status
        assert not (root / "fanotify-held").exists()
    finally:
        kill(agent, signal.SIGTERM)
