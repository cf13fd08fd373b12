"""Kernel e2e: fileless and loader execution (issue 9, defect 5), against a real agent.

- An exec of a memfd (fexecve, execveat(fd, "", AT_EMPTY_PATH), /proc/self/fd/N, with and
  without MFD_CLOEXEC) or of a file unlinked while open is journaled with ``fileless: true`` and
  what really ran (``memfd:NAME`` as the kernel names it; a deleted file's former path).
- A ``targets.fileless`` rule stops each of them: with BPF-LSM (the stock-kernel VM) EPERM in
  bprm_check_security; on this kind of host the guard kills the caller at sched_prepare_exec,
  before one instruction of the payload runs. Either way the payload's side effect is absent.
- ``ld.so /path/bin`` is journaled with ``loader_target``; with BPF-LSM the loader cannot map a
  binary an exec rule denies (lsm/mmap_file), so it never runs.

One agent for the module; its rules name only paths this test created, and the fileless rule
only processes in a cgroup this test created (a fileless rule has no path to scope it by).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.enforce.guard import cgroup2_root
from agent.events.loader import is_dynamic_loader
from agent.policy.mechanisms import host_capabilities
from tests.agentproc import journal_records, start_agent, stop_agent

pytestmark = pytest.mark.kernel

PY = sys.executable
SLOW = 10 if os.environ.get("SEALTRAIL_VM") else 1
MEMFD_NAME = "sealtrail-payload"
LOADER = "/lib64/ld-linux-x86-64.so.2"

POLICY = """
name = "bypass-exec"
description = "fileless and loader execution: targets created by the test"
mode = "enforce"

[[rules]]
id = "no-fileless-exec"
description = "nothing in the test cgroup runs a binary that has no name"
operation = "exec"
targets.fileless = true
action = "deny"
fallback = "kill"

[rules.subjects]
cgroup = ["{cgroup_rel}"]

[[rules]]
id = "no-exec-denied"
description = "the denied tool never runs, not even through the dynamic loader"
operation = "exec"
targets.paths = ["{work}/bin/denied"]
action = "deny"
fallback = "kill"
"""

# argv: how, payload binary, witness path. Puts the payload in a memfd (or a file it unlinks),
# then execs it the way `how` says; prints "errno N" if the exec fails.
EXEC_FILELESS = textwrap.dedent(
    """
    import ctypes, os, sys
    how, payload, witness = sys.argv[1:4]
    data = open(payload, "rb").read()
    if how == "unlinked":
        tmp = witness + ".bin"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o755)
        fd = os.open(tmp, os.O_RDONLY)
        os.unlink(tmp)
    else:
        fd = os.memfd_create("MEMFD_NAME", os.MFD_CLOEXEC if how == "cloexec" else 0)
        os.write(fd, data)
    argv = [b"payload", witness.encode()]
    try:
        if how == "execveat":
            libc = ctypes.CDLL(None, use_errno=True)
            args = (ctypes.c_char_p * 3)(*argv, None)
            env = (ctypes.c_char_p * 1)(None)
            libc.syscall(322, fd, b"", args, env, 0x1000)  # SYS_execveat, AT_EMPTY_PATH
            raise OSError(ctypes.get_errno(), "execveat")
        if how == "procfd":
            os.execv(f"/proc/self/fd/{fd}", argv)
        os.execve(fd, argv, {})  # fexecve
    except OSError as e:
        print("errno", e.errno)
    """
).replace("MEMFD_NAME", MEMFD_NAME)
WAYS = ("fexecve", "execveat", "procfd", "cloexec", "unlinked")


@dataclass
class Env:
    root: Path
    work: Path
    journal: Path
    cgroup: Path
    agent: subprocess.Popen[str]
    lsm: bool

    def wait_for(self, what: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        """The first record of type ``what`` with fields ``match``, waiting for it."""
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            for r in journal_records(self.journal):
                if r["type"] == what and all(r.get(k) == v for k, v in match.items()):
                    return r
            time.sleep(0.1)
        raise AssertionError(f"no {what} record with {match}")

    def run(self, argv: list[str], in_cgroup: bool) -> subprocess.Popen[str]:
        """Start argv (in the test cgroup if asked); returns the process (its pid is the exec's)."""
        script = f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"' if in_cgroup else 'exec "$@"'
        return subprocess.Popen(["/bin/sh", "-c", script, "sh", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("bypass-exec").resolve()
    work = root / "work"
    (work / "bin").mkdir(parents=True)
    shutil.copy("/usr/bin/touch", work / "bin" / "denied")
    policies = root / "policies"
    policies.mkdir()
    cgroup = cgroup2_root() / f"sealtrail-bypass-exec-{os.getpid()}"
    (policies / "bypass.toml").write_text(POLICY.format(work=work, cgroup_rel="/" + cgroup.name))
    cgroup.mkdir()
    lsm = host_capabilities().lsm
    if os.environ.get("SEALTRAIL_EXPECT_LSM"):
        assert lsm, "this host must load BPF-LSM programs (SEALTRAIL_EXPECT_LSM is set)"
    journal, run_dir = root / "journal", root / "run"
    agent = start_agent(
        "--journal", str(journal), "--keys", str(root / "keys"), "--policies", str(policies),
        "--cgroup", str(cgroup), "--run-dir", str(run_dir),
    )  # fmt: skip
    env = Env(root, work, journal, cgroup, agent, lsm)
    try:
        deadline = time.monotonic() + 30 * SLOW
        while not (run_dir / "status.json").exists():
            assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
            assert time.monotonic() < deadline, "agent did not start"
            time.sleep(0.1)
        status = json.loads((run_dir / "status.json").read_text())
        assert status["result"] == "loaded", status
        yield env
    finally:
        stop_agent(agent, 30 * SLOW, cgroup, journal)


def _fileless(
    env: Env, how: str, name: str, in_cgroup: bool
) -> tuple[subprocess.Popen[str], Path, str]:
    """Run EXEC_FILELESS `how`; the process (ended), the witness path, its output."""
    witness = env.root / f"{name}-{how}"
    proc = env.run([PY, "-c", EXEC_FILELESS, how, "/usr/bin/touch", str(witness)], in_cgroup)
    out, err = proc.communicate(timeout=30 * SLOW)
    return proc, witness, out + err


@pytest.mark.parametrize("how", WAYS)
def test_fileless_exec_is_journaled_with_what_ran(env: Env, how: str) -> None:
    proc, witness, _ = _fileless(env, how, "journaled", in_cgroup=False)
    assert proc.returncode == 0 and witness.exists(), "outside the cgroup the payload runs"
    ev = env.wait_for("event", kind="exec", pid=proc.pid, argv=["payload", str(witness)])
    assert ev["fileless"] is True, ev
    if how == "unlinked":
        assert ev["exe"] == f"{witness}.bin", ev  # the path it had: no name now
    else:
        assert ev["exe"] == f"memfd:{MEMFD_NAME}", ev  # not "/"
    if how == "procfd":
        assert ev["filename"].startswith("/proc/self/fd/")


def test_an_ordinary_exec_is_not_fileless(env: Env) -> None:
    witness = env.root / "ordinary"
    proc = env.run(["/usr/bin/touch", str(witness)], in_cgroup=False)
    proc.communicate(timeout=30 * SLOW)
    ev = env.wait_for("event", kind="exec", pid=proc.pid, argv=["/usr/bin/touch", str(witness)])
    assert (ev["exe"], ev["fileless"], ev["loader_target"]) == ("/usr/bin/touch", False, None)


@pytest.mark.parametrize("how", WAYS)
def test_fileless_exec_denied_payload_never_runs(env: Env, how: str) -> None:
    proc, witness, out = _fileless(env, how, "denied", in_cgroup=True)
    if env.lsm:  # bprm_check_security: EPERM, the caller lives on
        assert proc.returncode == 0 and "errno 1" in out, (proc.returncode, out)
        mechanism = "lsm"
    else:  # sched_prepare_exec: the caller is killed before the new image runs
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, out)
        mechanism = "exec-tracepoint+sigkill"
    assert not witness.exists(), "the payload ran"
    v = env.wait_for("verdict", rule="no-fileless-exec", pid=proc.pid)
    assert v["action"] == ("deny" if env.lsm else "kill") and v["mechanism"] == mechanism, v
    want = f"{witness}.bin" if how == "unlinked" else f"memfd:{MEMFD_NAME}"
    assert v["object"]["path"] == want, v


def test_named_exec_in_the_cgroup_is_not_fileless(env: Env) -> None:
    """The fileless rule leaves ordinary binaries alone, in its own cgroup too."""
    witness = env.root / "named-in-cgroup"
    proc = env.run(["/usr/bin/touch", str(witness)], in_cgroup=True)
    proc.communicate(timeout=30 * SLOW)
    assert proc.returncode == 0 and witness.exists()


def test_loader_exec_is_journaled_with_its_target(env: Env) -> None:
    """`ld.so BINARY` is an exec of the loader only; the event names the binary it loads."""
    assert is_dynamic_loader(os.path.realpath(LOADER))
    witness = env.root / "loader-target-ran"
    tool = env.root / "allowed-tool"
    shutil.copy("/usr/bin/touch", tool)
    proc = env.run([LOADER, "--inhibit-cache", str(tool), str(witness)], in_cgroup=False)
    proc.communicate(timeout=30 * SLOW)
    assert proc.returncode == 0 and witness.exists()
    ev = env.wait_for("event", kind="exec", pid=proc.pid, exe=os.path.realpath(LOADER))
    assert ev["loader_target"] == str(tool), ev
    # relative to the kernel's cwd
    proc = subprocess.Popen([LOADER, f"./{tool.name}", str(witness) + "-rel"], cwd=env.root)
    proc.wait(timeout=30 * SLOW)
    ev = env.wait_for("event", kind="exec", pid=proc.pid, exe=os.path.realpath(LOADER))
    assert ev["loader_target"] == str(tool), ev


def test_loader_cannot_run_a_denied_binary(env: Env) -> None:
    """`ld.so /denied/bin` fails and the binary never runs; the loader itself is untouched.
    With BPF-LSM the loader's PROT_EXEC mapping is refused (lsm/mmap_file); without it the
    fanotify mechanism judges the loader's open of the binary (agent/enforce)."""
    witness = env.root / "loader-denied-ran"
    proc = env.run([LOADER, str(env.work / "bin" / "denied"), str(witness)], in_cgroup=False)
    _, err = proc.communicate(timeout=30 * SLOW)
    assert proc.returncode != 0 and not witness.exists(), (proc.returncode, err)
    assert "Operation not permitted" in err or "failed to map" in err, err
    v = env.wait_for("verdict", rule="no-exec-denied", pid=proc.pid)
    assert v["mechanism"] == ("lsm" if env.lsm else "fanotify"), v
    assert v["object"]["path"] == str(env.work / "bin" / "denied"), v
    ev = env.wait_for("event", kind="exec", pid=proc.pid, exe=os.path.realpath(LOADER))
    assert ev["loader_target"] == str(env.work / "bin" / "denied")
    ok = subprocess.run([LOADER, "/usr/bin/touch", str(env.root / "loader-neighbour")])
    assert ok.returncode == 0, "another binary through the loader still runs"
