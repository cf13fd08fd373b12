"""Kernel e2e: `sealtrail agent --policies` enforces for real, with the host's best mechanisms.

On the development machines (no BPF-LSM) file operations go through fanotify or after-the-fact
kills; in the stock-kernel VM (tests/vm) the same suite runs with BPF-LSM, where every file
operation is denied before it happens. Each test states both expectations.

One agent runs for the module, with a policy scoped to paths this test created and a cgroup it
created (the network guard attaches there, so nothing else on the machine is affected). Each
test does the forbidden thing from a real process and checks the outcome the user cares about:
EPERM or SIGKILL, no side effect, neighbours unaffected, and the verdict in the journal.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
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
from agent.policy.mechanisms import host_capabilities
from tests.agentproc import agent_log, start_agent, stop_agent, unpin_agent

pytestmark = pytest.mark.kernel

PY = sys.executable
# qemu TCG (tests/vm) emulates every instruction: the verifier alone takes tens of seconds there
SLOW = 10 if os.environ.get("SEALTRAIL_VM") else 1

POLICY = """
name = "e2e"
description = "kernel e2e policy: every target was created by the test"
mode = "enforce"

[[rules]]
id = "deny-connect"
description = "connect to the deny port"
operation = "connect"
targets.addresses = ["127.0.0.1/32", "::1/128"]
targets.ports = [{deny_port}]
action = "deny"

[[rules]]
id = "kill-connect"
description = "connect to the kill port"
operation = "connect"
targets.addresses = ["127.0.0.0/8"]
targets.ports = [{kill_port}]
action = "kill"

[[rules]]
id = "deny-bind"
description = "bind of the guarded port"
operation = "bind"
targets.ports = [{bind_port}]
action = "deny"

[[rules]]
id = "no-write-protected"
description = "no writes to the protected file"
operation = "open"
access = ["write", "truncate"]
targets.paths = ["{work}/protected.txt"]
action = "deny"
fallback = "kill"  # what fanotify misses (no BPF-LSM) is killed after the fact

[[rules]]
id = "audit-read-watched"
description = "reads of the watched file are recorded"
operation = "open"
access = ["read"]
targets.paths = ["{work}/watched.txt"]
action = "audit"

[[rules]]
id = "no-exec-forbidden"
description = "the forbidden tool never runs"
operation = "exec"
targets.paths = ["{work}/bin/forbidden"]
action = "deny"
fallback = "kill"  # what fanotify misses (no BPF-LSM) is killed after the fact

[[rules]]
id = "kill-exec-killer"
description = "running the killer tool kills the caller"
operation = "exec"
targets.paths = ["{work}/bin/killer"]
action = "kill"
fallback = "kill"  # what fanotify misses (no BPF-LSM) is killed after the fact

[[rules]]
id = "nobody-may-connect"
description = "an allow exception (by uid) wins over the deny below"
operation = "connect"
targets.ports = [{except_port}]
action = "allow"

[rules.subjects]
uid = [65534]

[[rules]]
id = "deny-connect-but-bash"
description = "everyone but bash (and uid 65534, above) is refused"
operation = "connect"
targets.ports = [{except_port}]
action = "deny"

[rules.subjects.except]
exe = ["/usr/bin/bash"]

[[rules]]
id = "bash-children-no-connect"
description = "bash and everything it starts may not connect to the lineage port"
operation = "connect"
targets.ports = [{lineage_port}]
action = "deny"

[rules.subjects]
exe = ["/usr/bin/bash"]
descendants = true

[[rules]]
id = "audit-connect"
description = "connections to the audit port are recorded"
operation = "connect"
targets.ports = [{audit_port}]
action = "audit"

[[rules]]
id = "kill-bind"
description = "binding the kill port kills"
operation = "bind"
targets.ports = [{kill_bind_port}]
action = "kill"

[[rules]]
id = "kill-read-secret"
description = "reading the secret kills the reader"
operation = "open"
access = ["read"]
targets.paths = ["{work}/secret.txt"]
action = "kill"
fallback = "kill"  # what fanotify misses (no BPF-LSM) is killed after the fact

[[rules]]
id = "audit-exec"
description = "running the audited tool is recorded"
operation = "exec"
targets.paths = ["{work}/bin/audited"]
action = "audit"

[[rules]]
id = "precious-rename"
description = "renames in precious kill after the fact"
operation = "rename"
targets.paths = ["{work}/precious/"]
action = "kill"
fallback = "kill"

[[rules]]
id = "precious-chmod"
description = "chmod in precious kills after the fact"
operation = "chmod"
targets.paths = ["{work}/precious/"]
action = "deny"
fallback = "kill"

[[rules]]
id = "precious-chown"
description = "chown in precious is audited (no deny hook)"
operation = "chown"
targets.paths = ["{work}/precious/"]
action = "deny"
fallback = "audit"

[[rules]]
id = "listen-kill"
description = "listening on the listen port kills after the fact"
operation = "listen"
targets.ports = [{listen_port}]
action = "deny"
fallback = "kill"

[[rules]]
id = "cgroup-unlink"
description = "only processes in the test cgroup are stopped from deleting these"
operation = "unlink"
targets.paths = ["{work}/cgroup-only/"]
action = "deny"
fallback = "kill"

[rules.subjects]
cgroup = ["{cgroup_rel}"]

[[rules]]
id = "precious-unlink"
description = "deleting precious files kills (after the fact: no deny hook without LSM)"
operation = "unlink"
targets.paths = ["{work}/precious/"]
action = "deny"
fallback = "kill"
"""

MONITOR = """
name = "e2e-monitor"
description = "monitor mode blocks nothing"
mode = "monitor"

[[rules]]
id = "monitor-connect"
description = "would deny"
operation = "connect"
targets.ports = [{monitor_port}]
action = "deny"

[[rules]]
id = "monitor-exec-kill"
description = "would kill"
operation = "exec"
targets.paths = ["{work}/bin/monitored"]
action = "kill"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Env:
    root: Path
    work: Path
    journal: Path
    keys: Path
    policies: Path
    run_dir: Path
    cgroup: Path
    agent: subprocess.Popen[str]
    ports: dict[str, int]
    lsm: bool  # BPF-LSM loads here: file operations are denied in the kernel

    @contextlib.contextmanager
    def running(self) -> Iterator[Env]:
        """The agent on this environment's directories, enforcing its policies (status.json
        says loaded) for the ``with`` block; stopped, its cgroup and journal cleaned after."""
        log = self.root / "agent.log"
        self.agent = start_agent(
            "--journal", str(self.journal), "--keys", str(self.keys),
            "--policies", str(self.policies), "--cgroup", str(self.cgroup),
            "--run-dir", str(self.run_dir), log=log,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30 * SLOW
            while not (self.run_dir / "status.json").exists():
                assert self.agent.poll() is None, agent_log(self.agent, log)
                assert time.monotonic() < deadline, "agent did not start"
                time.sleep(0.1)
            status = json.loads((self.run_dir / "status.json").read_text())
            assert status["result"] == "loaded", status
            yield self
        finally:
            stop_agent(self.agent, 30 * SLOW, self.cgroup, self.journal)

    def hook(self, without_lsm: str) -> str:
        """The mechanism name expected for a file rule: lsm here, else ``without_lsm``."""
        return without_lsm.replace("fanotify", "lsm") if self.lsm else without_lsm

    def in_cgroup(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run argv inside the test cgroup (where the network guard is attached)."""
        script = f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"'
        return subprocess.run(
            ["/bin/sh", "-c", script, "sh", *argv], capture_output=True, text=True,
            timeout=30 * SLOW,
            **kw,
        )  # fmt: skip

    def records(self) -> list[dict[str, Any]]:
        out = []
        for seg in sorted(self.journal.glob("seg-*.jsonl")):
            # the agent may be writing the last line right now: only complete lines count
            complete = seg.read_bytes().split(b"\n")[:-1]
            out += [json.loads(line) for line in complete if line]
        return out

    def verdict(self, rule: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        """The first verdict record for ``rule`` (and fields ``match``), waiting for it."""
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            for r in self.records():
                if (
                    r["type"] == "verdict"
                    and r["rule"] == rule
                    and all(r.get(k) == v for k, v in match.items())
                ):
                    return r
            time.sleep(0.1)
        raise AssertionError(f"no verdict for {rule} {match}")

    def sealtrail(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "agent.cli", *args], capture_output=True, text=True,
                              timeout=60 * SLOW)  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("enforce").resolve()
    work = root / "work"
    (work / "bin").mkdir(parents=True)
    (work / "precious").mkdir()
    (work / "cgroup-only").mkdir()
    (work / "protected.txt").write_text("original\n")
    (work / "watched.txt").write_text("watched\n")
    (work / "secret.txt").write_text("secret\n")
    for tool in ("forbidden", "killer", "audited", "monitored"):
        shutil.copy("/usr/bin/touch", work / "bin" / tool)
    policies = root / "policies"
    policies.mkdir()
    names = ("deny", "kill", "bind", "monitor", "other", "except", "lineage", "audit",
             "kill_bind", "listen")  # fmt: skip
    ports = {name: free_port() for name in names}
    cgroup = cgroup2_root() / f"sealtrail-test-{os.getpid()}"
    (policies / "e2e.toml").write_text(
        POLICY.format(work=work, cgroup_rel="/" + cgroup.name,
                      **{f"{name}_port": port for name, port in ports.items()})
    )  # fmt: skip
    (policies / "monitor.toml").write_text(MONITOR.format(monitor_port=ports["monitor"],
                                                          work=work))  # fmt: skip
    cgroup.mkdir()
    lsm = host_capabilities().lsm
    if os.environ.get("SEALTRAIL_EXPECT_LSM"):
        assert lsm, "this host must load BPF-LSM programs (SEALTRAIL_EXPECT_LSM is set)"
    env = Env(root, work, root / "journal", root / "keys", policies, root / "run", cgroup,
              None, ports, lsm)  # type: ignore[arg-type]  # fmt: skip
    with env.running():
        yield env


CONNECT = textwrap.dedent(
    """
    import socket, sys
    host, port = sys.argv[1], int(sys.argv[2])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, port))
        print("connected")
    except OSError as e:
        print("errno", e.errno)
    """
)


class Listener:
    def __init__(self, port: int, family: int = socket.AF_INET) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("::" if family == socket.AF_INET6 else "127.0.0.1", port))
        self.sock.listen(8)
        self.sock.settimeout(0.3)

    def accepted(self) -> int:
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, BlockingIOError):
                return n
            conn.close()
            n += 1

    def close(self) -> None:
        self.sock.close()


def test_connect_denied_with_eperm_listener_never_accepts(env: Env) -> None:
    listener = Listener(env.ports["deny"])
    try:
        r = env.in_cgroup([PY, "-c", CONNECT, "127.0.0.1", str(env.ports["deny"])])
        assert r.stdout.strip() == "errno 1", r  # EPERM
        assert listener.accepted() == 0
    finally:
        listener.close()
    v = env.verdict("deny-connect", action="deny")
    assert v["mechanism"] == "cgroup-sock" and v["object"]["port"] == env.ports["deny"]
    assert v["policy"].startswith("sha256:") and v["policy_name"] == "e2e"


def test_connect_neighbour_port_still_works(env: Env) -> None:
    listener = Listener(env.ports["other"])
    try:
        r = env.in_cgroup([PY, "-c", CONNECT, "127.0.0.1", str(env.ports["other"])])
        assert r.stdout.strip() == "connected", r
        assert listener.accepted() == 1
    finally:
        listener.close()


def test_ipv4_mapped_ipv6_does_not_bypass(env: Env) -> None:
    listener = Listener(env.ports["deny"], socket.AF_INET6)
    try:
        r = env.in_cgroup([PY, "-c", CONNECT, "::ffff:127.0.0.1", str(env.ports["deny"])])
        assert r.stdout.strip() == "errno 1", r
        r6 = env.in_cgroup([PY, "-c", CONNECT, "::1", str(env.ports["deny"])])
        assert r6.stdout.strip() == "errno 1", r6
        assert listener.accepted() == 0
    finally:
        listener.close()


def test_connect_kill_process_dies_and_nothing_connects(env: Env) -> None:
    listener = Listener(env.ports["kill"])
    # the caller waits after its connect: where cgroup programs cannot signal (Linux 6.1) the
    # kernel denies and the agent kills right after, so the caller lives a moment longer
    code = CONNECT + f"\nimport time; time.sleep({20 * SLOW})\nprint('survived')"
    try:
        r = env.in_cgroup([PY, "-c", code, "127.0.0.1", str(env.ports["kill"])])
        assert r.returncode == -signal.SIGKILL, r
        assert "connected" not in r.stdout and "survived" not in r.stdout
        assert listener.accepted() == 0
    finally:
        listener.close()
    v = env.verdict("kill-connect", action="kill")
    assert v["after_the_fact"] is False and v["mechanism"] == "cgroup-sock+sigkill"


def test_bind_denied_and_other_ports_bind(env: Env) -> None:
    code = textwrap.dedent(
        """
        import socket, sys
        for port in map(int, sys.argv[1:]):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port)); print(port, "bound")
            except OSError as e:
                print(port, "errno", e.errno)
            s.close()
        """
    )
    r = env.in_cgroup([PY, "-c", code, str(env.ports["bind"]), str(env.ports["other"])])
    assert r.stdout.split("\n")[:2] == [f"{env.ports['bind']} errno 1",
                                        f"{env.ports['other']} bound"], r  # fmt: skip
    env.verdict("deny-bind", action="deny")


def test_processes_outside_the_guarded_cgroup_are_untouched(env: Env) -> None:
    listener = Listener(env.ports["deny"])
    try:
        r = subprocess.run([PY, "-c", CONNECT, "127.0.0.1", str(env.ports["deny"])],
                           capture_output=True, text=True, timeout=30 * SLOW)  # fmt: skip
        assert r.stdout.strip() == "connected"
    finally:
        listener.close()


def test_monitor_mode_blocks_nothing_and_records_would_deny(env: Env) -> None:
    listener = Listener(env.ports["monitor"])
    try:
        r = env.in_cgroup([PY, "-c", CONNECT, "127.0.0.1", str(env.ports["monitor"])])
        assert r.stdout.strip() == "connected", r
        assert listener.accepted() == 1
    finally:
        listener.close()
    env.verdict("monitor-connect", action="would_deny")


def write(path: Path, text: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; open(sys.argv[1], 'a').write(sys.argv[2])"
    return subprocess.run([PY, "-c", code, str(path), text], capture_output=True, text=True,
                          timeout=30 * SLOW)  # fmt: skip


def test_write_to_protected_file_is_eperm_and_file_unchanged(env: Env) -> None:
    target = env.work / "protected.txt"
    r = write(target, "tampered\n")
    assert r.returncode != 0 and "PermissionError" in r.stderr
    assert target.read_text() == "original\n"
    truncate = subprocess.run(["/bin/sh", "-c", f": > {target}"], capture_output=True, text=True)
    assert truncate.returncode != 0 and target.read_text() == "original\n"
    v = env.verdict("no-write-protected", action="deny")
    assert v["mechanism"] == env.hook("fanotify") and v["object"]["path"] == str(target)


def test_reading_protected_file_is_allowed(env: Env) -> None:
    r = subprocess.run(["cat", str(env.work / "protected.txt")], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "original\n"


@pytest.mark.parametrize("via", ["symlink", "relative", "dotdot", "hardlink"])
def test_write_bypass_attempts_are_caught(env: Env, via: str) -> None:
    target = env.work / "protected.txt"
    if via == "symlink":
        path = env.root / f"link-{via}"
        path.unlink(missing_ok=True)
        path.symlink_to(target)
        r = write(path, "x")
    elif via == "relative":
        r = subprocess.run([PY, "-c", "open('protected.txt', 'a').write('x')"], cwd=env.work,
                           capture_output=True, text=True)  # fmt: skip
    elif via == "dotdot":
        r = write(env.work / "bin" / ".." / "protected.txt", "x")
    else:
        path = env.root / "hardlink"
        path.unlink(missing_ok=True)
        os.link(target, path)
        r = write(path, "x")
    assert r.returncode != 0 and "PermissionError" in r.stderr, (via, r)
    assert target.read_text() == "original\n"


def test_audit_records_and_allows(env: Env) -> None:
    r = subprocess.run(["cat", str(env.work / "watched.txt")], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "watched\n"
    v = env.verdict("audit-read-watched", action="audit")
    assert v["exe"] == os.path.realpath("/usr/bin/cat")


def test_exec_denied_program_never_runs(env: Env) -> None:
    witness = env.root / "forbidden-ran"
    tool = env.work / "bin" / "forbidden"
    with pytest.raises(PermissionError):
        subprocess.run([str(tool), str(witness)], check=False)
    link = env.root / "forbidden-link"
    link.unlink(missing_ok=True)
    link.symlink_to(tool)
    r = subprocess.run(["/bin/sh", "-c", f"cd {env.work}/bin && ./forbidden {witness}; "
                        f"{link} {witness}"], capture_output=True, text=True)  # fmt: skip
    assert r.stderr.count("Operation not permitted") == 2, r  # EPERM, via both paths
    assert not witness.exists()
    ok = subprocess.run(["/usr/bin/touch", str(env.root / "neighbour")])
    assert ok.returncode == 0
    assert env.verdict("no-exec-forbidden", action="deny")["mechanism"] == env.hook("fanotify")


def test_renamed_copy_of_a_forbidden_binary_is_not_the_same_file(env: Env) -> None:
    """Documented limit: rules name files; a copy elsewhere is another file and runs."""
    copy = env.root / "not-forbidden"
    shutil.copy(env.work / "bin" / "forbidden", copy)
    witness = env.root / "copy-ran"
    assert subprocess.run([str(copy), str(witness)]).returncode == 0
    assert witness.exists()


def test_exec_kill_caller_dies_and_program_never_runs(env: Env) -> None:
    witness = env.root / "killer-ran"
    r = subprocess.run(["/bin/sh", "-c", f"exec {env.work}/bin/killer {witness}"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == -signal.SIGKILL, r
    assert not witness.exists()
    v = env.verdict("kill-exec-killer", action="kill")
    assert v["mechanism"] == env.hook("fanotify+sigkill")


def test_unlink_denied_or_killed_after_the_fact(env: Env) -> None:
    victim = env.work / "precious" / "victim"
    victim.write_text("x")
    code = (
        "import os, sys, time\n"
        "try:\n    os.unlink(sys.argv[1])\nexcept PermissionError:\n    print('EPERM')\n"
        "time.sleep(20 if not os.path.exists(sys.argv[1]) else 0); print('survived')"
    )
    started = time.monotonic()
    r = subprocess.run(
        [PY, "-c", code, str(victim)], capture_output=True, text=True, timeout=30 * SLOW
    )
    if env.lsm:  # denied before it happens
        assert r.stdout.split() == ["EPERM", "survived"] and victim.exists()
        v = env.verdict("precious-unlink", action="deny")
        assert v["mechanism"] == "lsm" and v["after_the_fact"] is False
        return
    assert r.returncode == -signal.SIGKILL and "survived" not in r.stdout
    assert time.monotonic() - started < 15 * SLOW
    assert not victim.exists()  # after the fact: the unlink happened, and the record says so
    v = env.verdict("precious-unlink", action="kill")
    assert v["after_the_fact"] is True and v["mechanism"] == "sigkill-after-the-fact"


def test_reload_swaps_policy_and_broken_reload_keeps_old(env: Env) -> None:
    policy = env.policies / "e2e.toml"
    original = policy.read_text()
    deny, other = env.ports["deny"], env.ports["other"]
    try:
        policy.write_text(original.replace(f"targets.ports = [{deny}]",
                                           f"targets.ports = [{other}]"))  # fmt: skip
        r = env.sealtrail(
            "policy", "reload", "--run-dir", str(env.run_dir), "--timeout", str(10 * SLOW)
        )
        assert r.returncode == 0, r
        la, lb = Listener(deny), Listener(other)
        try:
            assert env.in_cgroup([PY, "-c", CONNECT, "127.0.0.1", str(deny)]).stdout.strip() == (
                "connected"
            )
            assert env.in_cgroup([PY, "-c", CONNECT, "127.0.0.1", str(other)]).stdout.strip() == (
                "errno 1"
            )
        finally:
            la.close()
            lb.close()
        policy.write_text(original + "\n[[rules]]\nid = broken\n")
        r = env.sealtrail(
            "policy", "reload", "--run-dir", str(env.run_dir), "--timeout", str(10 * SLOW)
        )
        assert r.returncode == 1 and "rejected" in r.stdout, r
        assert "e2e.toml" in r.stdout  # the error names the file
        lb = Listener(other)
        try:  # the previous policy (deny the other port) is still enforced
            assert env.in_cgroup([PY, "-c", CONNECT, "127.0.0.1", str(other)]).stdout.strip() == (
                "errno 1"
            )
        finally:
            lb.close()
    finally:
        policy.write_text(original)
        assert env.sealtrail("policy", "reload", "--run-dir", str(env.run_dir)).returncode == 0
    types = [r["type"] for r in env.records()]
    assert "policy_rejected" in types and types.count("policy_loaded") >= 3


@dataclass
class Case:
    """One operation, as a `policy test` fixture and as a real action in the kernel."""

    name: str
    fixture: str  # the TOML fields of the case (operation and object)
    argv: list[str]  # the real action
    expect: str  # verdict `policy test` must give
    rule: str | None
    in_cgroup: bool = False  # network cases run where the guard is attached

    def toml(self, exe: str) -> str:
        return (
            textwrap.dedent(f"""
            [[case]]
            name = "{self.name}"
            process = {{ exe = "{exe}", uid = {os.getuid()}, gid = {os.getgid()} }}
            expect = "{self.expect}"
            """)
            + self.fixture
            + (f'\nrule = "{self.rule}"\n' if self.rule else "\n")
        )


def test_kernel_verdicts_equal_policy_test(env: Env) -> None:
    """One case set through `sealtrail policy test` and through the kernel: same rule, same
    action, whichever mechanism enforces it here (cgroup hooks, fanotify, BPF-LSM)."""
    w = env.work
    opener = "import sys; open(sys.argv[1], sys.argv[2]).close()"
    cases = [
        Case("connect to the deny port",
             f'operation = "connect"\naddress = "127.0.0.1"\nport = {env.ports["deny"]}\n'
             'protocol = "tcp"',
             [PY, "-c", CONNECT, "127.0.0.1", str(env.ports["deny"])], "deny", "deny-connect",
             in_cgroup=True),
        Case("connect elsewhere",
             f'operation = "connect"\naddress = "127.0.0.1"\nport = {env.ports["other"]}\n'
             'protocol = "tcp"',
             [PY, "-c", CONNECT, "127.0.0.1", str(env.ports["other"])], "allow", None,
             in_cgroup=True),
        Case("monitor mode",
             f'operation = "connect"\naddress = "127.0.0.1"\nport = {env.ports["monitor"]}\n'
             'protocol = "tcp"',
             [PY, "-c", CONNECT, "127.0.0.1", str(env.ports["monitor"])], "would-deny",
             "monitor-connect", in_cgroup=True),
        Case("write the protected file",
             f'operation = "open"\npath = "{w}/protected.txt"\naccess = ["write"]',
             [PY, "-c", opener, f"{w}/protected.txt", "a"], "deny", "no-write-protected"),
        Case("read the protected file",
             f'operation = "open"\npath = "{w}/protected.txt"\naccess = ["read"]',
             [PY, "-c", opener, f"{w}/protected.txt", "r"], "allow", None),
        Case("read the watched file",
             f'operation = "open"\npath = "{w}/watched.txt"\naccess = ["read"]',
             [PY, "-c", opener, f"{w}/watched.txt", "r"], "audit", "audit-read-watched"),
        Case("run the forbidden tool",
             f'operation = "exec"\npath = "{w}/bin/forbidden"',
             [f"{w}/bin/forbidden", str(env.root / "parity-ran")], "deny", "no-exec-forbidden"),
        Case("run the audited tool",
             f'operation = "exec"\npath = "{w}/bin/audited"',
             [f"{w}/bin/audited", str(env.root / "parity-audited")], "audit", "audit-exec"),
    ]  # fmt: skip
    fx = env.root / "kernel.fixtures.toml"
    fx.write_text(f'policies = ["{env.policies}"]\n' + "".join(c.toml(PY) for c in cases))
    r = env.sealtrail("policy", "test", str(fx))
    assert r.returncode == 0, r.stdout + r.stderr
    for case in cases:
        port = int(case.argv[-1]) if case.in_cgroup else None
        listener = Listener(port) if port else None
        try:
            run = env.in_cgroup if case.in_cgroup else _run
            run(case.argv)
        finally:
            if listener:
                listener.close()
        if case.rule is None:
            continue
        # the kernel's (or fanotify's) own record of the decision: same rule, same action
        v = env.verdict(case.rule, action=case.expect.replace("-", "_"))
        assert v["policy"] == env.verdict(case.rule)["policy"]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30 * SLOW)
    except PermissionError:  # exec refused: the verdict record is what the test compares
        return subprocess.CompletedProcess(argv, 126, "", "EPERM")


def test_bind_mount_of_a_protected_file_is_the_same_file(env: Env) -> None:
    """Another path to the same inode (a bind mount) is judged like the protected name."""
    mnt = env.root / "bindmnt"
    mnt.mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", str(env.work), str(mnt)], check=True)
    try:
        r = write(mnt / "protected.txt", "via bind mount\n")
        assert r.returncode != 0 and "PermissionError" in r.stderr, r
        assert (env.work / "protected.txt").read_text() == "original\n"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def bash_connect(port: int) -> list[str]:
    return ["/usr/bin/bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"]


def test_allow_exception_by_uid_and_except_by_binary(env: Env) -> None:
    port = env.ports["except"]
    listener = Listener(port)
    try:
        refused = env.in_cgroup([PY, "-c", CONNECT, "127.0.0.1", str(port)])
        assert refused.stdout.strip() == "errno 1", refused
        as_nobody = env.in_cgroup(
            ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
             PY, "-c", CONNECT, "127.0.0.1", str(port)]
        )  # fmt: skip
        assert as_nobody.stdout.strip() == "connected", as_nobody
        by_bash = env.in_cgroup(bash_connect(port))
        assert by_bash.stdout.strip() == "connected", by_bash
        assert listener.accepted() == 2
    finally:
        listener.close()
    env.verdict("deny-connect-but-bash", action="deny")


def test_rule_follows_descendants_of_a_binary(env: Env) -> None:
    port = env.ports["lineage"]
    listener = Listener(port)
    try:
        direct = env.in_cgroup([PY, "-c", CONNECT, "127.0.0.1", str(port)])
        assert direct.stdout.strip() == "connected", direct
        child = env.in_cgroup(["/usr/bin/bash", "-c",
                               f"{PY} -c '{CONNECT}' 127.0.0.1 {port}; true"])  # fmt: skip
        assert child.stdout.strip() == "errno 1", child  # python started by bash: a descendant
        assert listener.accepted() == 1
    finally:
        listener.close()


def test_connect_audit_allows_and_records(env: Env) -> None:
    listener = Listener(env.ports["audit"])
    try:
        r = env.in_cgroup([PY, "-c", CONNECT, "127.0.0.1", str(env.ports["audit"])])
        assert r.stdout.strip() == "connected" and listener.accepted() == 1
    finally:
        listener.close()
    env.verdict("audit-connect", action="audit")


def test_bind_kill(env: Env) -> None:
    port = env.ports["kill_bind"]
    code = (
        f"import socket, time\ntry:\n    socket.socket().bind(('127.0.0.1', {port}))"
        f"\n    print('bound')\nexcept OSError:\n    pass\ntime.sleep({20 * SLOW})"
    )
    r = env.in_cgroup([PY, "-c", code])
    assert r.returncode == -signal.SIGKILL and "bound" not in r.stdout
    env.verdict("kill-bind", action="kill")


def test_open_kill_reader_dies_and_reads_nothing(env: Env) -> None:
    r = subprocess.run(["cat", str(env.work / "secret.txt")], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL and r.stdout == ""
    v = env.verdict("kill-read-secret", action="kill")
    assert v["mechanism"] == env.hook("fanotify+sigkill")


def test_exec_audit_runs_and_records(env: Env) -> None:
    witness = env.root / "audited-ran"
    assert subprocess.run([str(env.work / "bin" / "audited"), str(witness)]).returncode == 0
    assert witness.exists()
    env.verdict("audit-exec", action="audit")


def test_monitor_exec_kill_records_would_kill(env: Env) -> None:
    witness = env.root / "monitored-ran"
    assert subprocess.run([str(env.work / "bin" / "monitored"), str(witness)]).returncode == 0
    assert witness.exists()
    env.verdict("monitor-exec-kill", action="would_kill")


@pytest.mark.parametrize("op", ["rename", "chmod"])
def test_file_ops_denied_or_killed_after_the_fact(env: Env, op: str) -> None:
    f = env.work / "precious" / f"{op}-victim"
    f.write_text("x")  # no chmod from here: the rule would kill the test runner itself
    mode = f.stat().st_mode & 0o777
    action = {"rename": "os.rename(p, p + '.moved')", "chmod": "os.chmod(p, 0o600)"}[op]
    code = (
        f"import os, sys, time; p = sys.argv[1]\n"
        f"try:\n    {action}\nexcept PermissionError:\n    print('EPERM'); sys.exit(0)\n"
        "time.sleep(20); print('survived')"
    )
    r = subprocess.run([PY, "-c", code, str(f)], capture_output=True, text=True, timeout=30 * SLOW)
    if env.lsm:
        # rename's rule says kill: denied and killed; chmod's says deny: EPERM. Nothing changed.
        if op == "rename":
            assert r.returncode == -signal.SIGKILL and f.exists()
        else:
            assert r.stdout.strip() == "EPERM" and f.stat().st_mode & 0o777 == mode
        v = env.verdict(f"precious-{op}", action="kill" if op == "rename" else "deny")
        assert v["after_the_fact"] is False
        return
    assert r.returncode == -signal.SIGKILL and "survived" not in r.stdout
    v = env.verdict(f"precious-{op}", action="kill")
    assert v["after_the_fact"] is True


def test_cgroup_subject_applies_only_inside_the_cgroup(env: Env) -> None:
    def unlinker(wait: int) -> str:
        return (
            "import os, sys, time\n"
            "try:\n    os.unlink(sys.argv[1])\nexcept PermissionError:\n    print('EPERM')\n"
            f"time.sleep({wait} if not os.path.exists(sys.argv[1]) else 0); print('survived')"
        )

    inside = env.work / "cgroup-only" / "inside"
    inside.write_text("x")
    r_in = env.in_cgroup([PY, "-c", unlinker(20 * SLOW), str(inside)])
    if env.lsm:
        assert r_in.stdout.split() == ["EPERM", "survived"] and inside.exists()
        assert env.verdict("cgroup-unlink", action="deny")["pid"] > 0
    else:
        assert r_in.returncode == -signal.SIGKILL and not inside.exists()
        assert env.verdict("cgroup-unlink", action="kill")["after_the_fact"] is True
    # outside the cgroup the rule does not apply: the unlink goes through and nobody dies
    outside = env.work / "cgroup-only" / "outside"
    outside.write_text("x")
    r = subprocess.run([PY, "-c", unlinker(2 * SLOW), str(outside)], capture_output=True,
                       text=True, timeout=60 * SLOW)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "survived" and not outside.exists()


def test_chown_denied_or_audited_after_the_fact(env: Env) -> None:
    f = env.work / "precious" / "chown-victim"
    f.write_text("x")
    r = subprocess.run(["chown", "65534", str(f)], capture_output=True, text=True)
    if env.lsm:
        assert r.returncode != 0 and f.stat().st_uid == 0
        assert env.verdict("precious-chown", action="deny")["after_the_fact"] is False
        return
    assert r.returncode == 0 and f.stat().st_uid == 65534  # not stoppable here: recorded
    v = env.verdict("precious-chown", action="audit")
    assert v["after_the_fact"] is True


def test_a_verdict_on_a_file_name_that_is_not_utf8_is_journaled(env: Env) -> None:
    """The verdict's object path has bytes that are not UTF-8: journaled escaped, and the
    agent goes on enforcing (it stopped on such a name before)."""
    odd = os.fsencode(env.work / "precious") + b"/odd-\xff-name"
    with open(odd, "w") as f:
        f.write("x")
    r = subprocess.run([b"chown", b"65534", odd], capture_output=True)
    assert (r.returncode != 0) == env.lsm
    v = env.verdict("precious-chown", action="deny" if env.lsm else "audit",
                    escaped=True)  # fmt: skip
    assert v["object"]["path"] == str(env.work / "precious") + "/odd-\\xff-name"
    assert env.agent.poll() is None, "the agent stopped"
    test_write_to_protected_file_is_eperm_and_file_unchanged(env)  # still enforcing


def test_listen_denied_or_killed_after_the_fact(env: Env) -> None:
    code = (
        f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {env.ports['listen']}))\n"
        "try:\n    s.listen(1)\nexcept PermissionError:\n    print('EPERM'); raise SystemExit\n"
        "time.sleep(20); print('survived')"
    )
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=30 * SLOW)
    if env.lsm:
        assert r.stdout.strip() == "EPERM"
        env.verdict("listen-kill", action="deny")
        return
    assert r.returncode == -signal.SIGKILL and "survived" not in r.stdout
    env.verdict("listen-kill", action="kill")


def test_journal_of_the_enforcing_agent_verifies(env: Env) -> None:
    r = env.sealtrail("journal", "verify", "--journal", str(env.journal),
                      "--key", str(env.keys / "journal.pub"))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_stopped_agent_leaves_the_guard_enforcing_until_unpinned(env: Env) -> None:
    """Runs last. The in-kernel guard is pinned: it outlives the agent (a restart opens no
    window) and denies the connect with no agent running; what userspace answered (fanotify)
    ends with the agent. ``--unpin`` detaches the rest and everything is back to normal."""
    env.agent.send_signal(signal.SIGTERM)
    assert env.agent.wait(30 * SLOW) == 0
    listener = Listener(env.ports["deny"])
    try:
        connect = [PY, "-c", CONNECT, "127.0.0.1", str(env.ports["deny"])]
        r = env.in_cgroup(connect)
        assert r.stdout.strip() == "errno 1", r  # EPERM
        unpin_agent(env.agent)
        r = env.in_cgroup(connect)
        assert r.stdout.strip() == "connected", r
    finally:
        listener.close()
    witness = env.root / "forbidden-after-stop"
    assert subprocess.run([str(env.work / "bin" / "forbidden"), str(witness)]).returncode == 0
    assert witness.exists()
    assert write(env.work / "protected.txt", "after stop\n").returncode == 0
