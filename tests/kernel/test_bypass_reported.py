"""Kernel e2e: ways around a rule that this host cannot close, tried for real; each is either
stopped or named by ``policy check --host`` for that rule (issue 9: never a silent difference).
Found by red-team reviews (2026-12-07):

- an open by handle (open_by_handle_at, CAP_DAC_READ_SEARCH) of a file below a tree rule
  whose directory entry is not cached: the kernel makes a disconnected dentry with no parent
  to report to, so the tree's directory marks never ask;
- a directory deeper than PATH_MAX below a tree rule: marks are planned by path name, so it
  is never marked;
- a port the kernel picks itself at listen (IP_LOCAL_PORT_RANGE narrowing the pick to the
  rule's port): no bind hook runs, as an unprivileged user. A bind to port 0 picked the same
  way is stopped since 2026-12-08 (post_bind4/6), and tested here.

One agent; its rules name only a directory this test created and a port it chose, and the
bind rule only processes in a cgroup of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.policy.mechanisms import host_capabilities
from tests.agentproc import agent_in, rule_verdicts

pytestmark = pytest.mark.kernel

PY = sys.executable

POLICY = """
name = "reported"
description = "rules whose host gaps this test tries"
mode = "enforce"

[[rules]]
id = "rep-tree-write"
description = "nothing writes below the tree"
operation = "open"
access = ["write", "create", "truncate"]
targets.paths = ["{tree}/"]
action = "deny"
fallback = "kill"

[[rules]]
id = "rep-tree-create"
description = "no new file appears below tree-new/"
operation = "open"
access = ["create"]
targets.paths = ["{tree}-new/"]
action = "deny"
fallback = "kill"

[[rules]]
id = "rep-bind"
description = "nobody in the test's cgroup takes this port"
operation = "bind"
targets.ports = [{port}]
action = "deny"

[[rules]]
id = "rep-connect-exe"
description = "only /usr/bin/true may connect to this port"
operation = "connect"
targets.addresses = ["127.0.0.1/32"]
targets.ports = [{port}]
action = "deny"
subjects.except.exe = ["/usr/bin/true"]
"""

#: In a child (a fallback kill must not hit pytest): open ``path`` by the handle in
#: ``handle`` (saved by ``save``) for appending and write; exit 0 if written, 13 on EPERM.
BY_HANDLE = textwrap.dedent(
    """\
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    class Handle(ctypes.Structure):
        _fields_ = [("bytes", ctypes.c_uint), ("type", ctypes.c_int),
                    ("data", ctypes.c_ubyte * 128)]
    h = Handle(bytes=128)
    if sys.argv[1] == "save":
        mount_id = ctypes.c_int()
        if libc.name_to_handle_at(-100, sys.argv[2].encode(), ctypes.byref(h),
                                  ctypes.byref(mount_id), 0):
            sys.exit(f"name_to_handle_at: {os.strerror(ctypes.get_errno())}")
        open(sys.argv[3], "wb").write(bytes(h))
        sys.exit(0)
    ctypes.memmove(ctypes.byref(h), open(sys.argv[3], "rb").read(), ctypes.sizeof(h))
    mnt = os.open(sys.argv[2], os.O_RDONLY | os.O_DIRECTORY)
    fd = libc.open_by_handle_at(mnt, ctypes.byref(h), os.O_WRONLY | os.O_APPEND)
    if fd < 0:
        sys.exit(13 if ctypes.get_errno() == 1 else f"open: {os.strerror(ctypes.get_errno())}")
    os.write(fd, b"by handle\\n")
    """
)

#: In a child: 17 directories of 250-byte names below argv[1] (by fd: the path passes
#: PATH_MAX), a pause for the agent's directory watcher, then create and write a file there.
DEEP = textwrap.dedent(
    """\
    import os, sys, time
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(17):
        os.mkdir("d" * 250, dir_fd=fd)
        nfd = os.open("d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    time.sleep(2)
    try:
        f = os.open("victim", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    except PermissionError:
        sys.exit(13)
    os.write(f, b"deep\\n")
    """
)

#: In a child in the cgroup, as nobody: the rule's port by bind(2) (refused), then by
#: listen() on an unbound socket whose IP_LOCAL_PORT_RANGE is that one port. Prints the
#: errno of the bind and the port listen got.
AUTOBIND = textwrap.dedent(
    """\
    import os, socket, struct, sys
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    port = int(sys.argv[1])
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port)); bound = 0
    except OSError as e:
        bound = e.errno
    a = socket.socket()
    a.setsockopt(socket.IPPROTO_IP, 51, struct.pack("I", port << 16 | port))  # IP_LOCAL_PORT_RANGE
    try:
        a.listen(1); got = a.getsockname()[1]
    except OSError as e:
        got = -e.errno
    print(bound, got)
    """
)


#: In a child in the cgroup, as nobody: bind(2) to port 0 of a TCP and a UDP socket, IPv4 and
#: IPv6, each with IP_LOCAL_PORT_RANGE (IPV6 sockets too: it is an IPPROTO_IP option) set to
#: argv[1]..argv[2]. Prints one "errno port" pair per bind (errno 0: bound, to that port).
BIND_ZERO = textwrap.dedent(
    """\
    import os, socket, struct, sys
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    low, high = int(sys.argv[1]), int(sys.argv[2])
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(family, kind)
            s.setsockopt(socket.IPPROTO_IP, 51, struct.pack("I", high << 16 | low))
            try:
                s.bind((host, 0)); print(0, s.getsockname()[1])
            except OSError as e:
                print(e.errno, 0)
    """
)


@dataclass
class Env:
    root: Path
    tree: Path
    policies: Path
    journal: Path
    cgroup: Path
    port: int

    def open_on_host(self, rule: str) -> list[str]:
        """What `policy check --host` says this host leaves open for ``rule``."""
        r = subprocess.run([PY, "-m", "agent.cli", "policy", "check", "--host", "--json",
                            str(self.policies)], capture_output=True, text=True)  # fmt: skip
        report = json.loads(r.stdout)
        return next(e["open_on_host"] for e in report["enforcement"] if e["rule"] == rule)

    def verdicts(self, rule: str) -> list[dict[str, object]]:
        return rule_verdicts(self.journal, rule)


def ephemeral_port() -> int:
    """A free port in this host's ip_local_port_range (the ones the kernel picks)."""
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for port in range(high - 1, low, -7):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise AssertionError("no free port in ip_local_port_range")


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    if host_capabilities().lsm:
        pytest.skip("BPF-LSM loads here: these are the fanotify mechanism's gaps")
    root = Path(tempfile.mkdtemp(prefix="sealtrail-reported-", dir="/var/tmp")).resolve()
    tree = root / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "g").write_text("protected\n")
    (root / "tree-new").mkdir()
    (root / "tree-new").chmod(0o777)
    root.chmod(0o755)  # nobody reaches tree-new
    for writable in (tree / "w", root / "out"):  # the rename race's, nobody's
        writable.mkdir()
        os.chown(writable, 65534, 65534)
    (tree / "w" / "f").write_text("orig\n")
    (tree / "w" / "sub").mkdir()
    (tree / "w" / "sub" / "f").write_text("orig\n")
    for mine in (tree / "w" / "f", tree / "w" / "sub", tree / "w" / "sub" / "f"):
        os.chown(mine, 65534, 65534)
    port = ephemeral_port()
    try:
        with agent_in(root, POLICY.format(tree=tree, port=port), "sealtrail-reported") as (
            journal,
            cgroup,
        ):
            yield Env(root, tree, root / "policies", journal, cgroup, port)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def child(*argv: str, cgroup: Path | None = None) -> subprocess.CompletedProcess[str]:
    enter = f"echo $$ > {cgroup}/cgroup.procs && " if cgroup else ""
    return subprocess.run(["/bin/sh", "-c", enter + 'exec "$@"', "sh", PY, *argv],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_a_write_by_handle_below_a_tree_is_stopped_or_reported(env: Env) -> None:
    target = env.tree / "sub" / "g"
    handle = env.root / "handle"
    saved = child("-c", BY_HANDLE, "save", str(target), str(handle))
    assert saved.returncode == 0, saved.stderr
    direct = child("-c", "open(__import__('sys').argv[1], 'a').write('x')", str(target))
    assert direct.returncode != 0, "the control: a plain write there is refused"
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("2")  # the file's dentry is no longer cached
    by_handle = child("-c", BY_HANDLE, "open", str(env.tree), str(handle))
    written = "by handle" in target.read_text()
    if written:
        assert any("open_by_handle_at" in g for g in env.open_on_host("rep-tree-write")), (
            "written by handle, and policy check --host does not say so"
        )
    else:
        assert by_handle.returncode != 0, by_handle


def test_a_write_below_a_tree_deeper_than_path_max_is_stopped_or_reported(env: Env) -> None:
    deep = env.tree / "deep"
    deep.mkdir()
    r = child("-c", DEEP, str(deep))
    if r.returncode == 0:
        assert any("PATH_MAX" in g for g in env.open_on_host("rep-tree-write")), (
            "written deeper than PATH_MAX, and policy check --host does not say so"
        )
        # and the agent said, as the directory appeared, that it could not mark it
        log = env.root / "agent.log"
        assert "longer than PATH_MAX, not marked" in log.read_text(errors="replace"), (
            "the agent did not report the directory it could not mark"
        )
    else:
        assert r.returncode in (13, -9), r  # refused, or killed by the fallback


def test_a_port_the_kernel_picks_is_stopped_or_reported_for_a_bind_rule(env: Env) -> None:
    r = child("-c", AUTOBIND, str(env.port), cgroup=env.cgroup)
    assert r.returncode == 0, r.stderr
    bound_errno, listened_on = (int(x) for x in r.stdout.split())
    assert bound_errno == 1, "the control: bind(2) to the rule's port is refused (EPERM)"
    deadline = time.monotonic() + 5
    while not env.verdicts("rep-bind") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert env.verdicts("rep-bind"), "the refused bind is journaled"
    if listened_on == env.port:
        assert any("ip_local_port_range" in g for g in env.open_on_host("rep-bind")), (
            "the kernel gave the rule's port to listen(), and policy check --host does not say so"
        )


def test_bind_to_port_zero_is_judged_on_the_port_the_kernel_picks(env: Env) -> None:
    """bind(2) to port 0 whose pick is narrowed to the rule's port: refused (post_bind4/6) and
    journaled with the port taken; a pick narrowed to another port is bound, not journaled."""
    before = len(env.verdicts("rep-bind"))
    r = child("-c", BIND_ZERO, str(env.port), str(env.port), cgroup=env.cgroup)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:4] == ["1 0"] * 4, f"tcp4 udp4 tcp6 udp6 binds: {r.stdout}"
    deadline = time.monotonic() + 5
    while len(env.verdicts("rep-bind")) < before + 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    new = env.verdicts("rep-bind")[before:]
    assert len(new) == 4, new
    for verdict in new:
        obj = verdict["object"]
        assert isinstance(obj, dict)
        assert (verdict["action"], obj["port"], obj["call"]) == ("deny", env.port, "autobind")
    other = env.port - 1 if env.port - 1 > 32768 else env.port + 1
    r = child("-c", BIND_ZERO, str(other), str(other), cgroup=env.cgroup)
    assert r.stdout.split("\n")[:4] == [f"0 {other}"] * 4, r.stdout
    time.sleep(0.5)
    assert len(env.verdicts("rep-bind")) == before + 4, "an allowed bind(0) is not journaled"


def test_a_forged_exe_is_stopped_or_reported_for_a_rule_that_names_an_exe(env: Env) -> None:
    """As nobody, in a user namespace of its own, a process replaces the binary the kernel
    names as its exe (prctl PR_SET_MM_MAP with an exe_fd of /usr/bin/true, after unmapping its
    own) and connects to a port only /usr/bin/true may reach: stopped, or named by `policy
    check --host` for the rule (red team 2026-12-08: the kernel guard reads mm->exe_file)."""
    forge = env.root / "forgeexe"
    subprocess.run(["gcc", "-O1", "-o", str(forge), str(Path(__file__).parent / "redteam" /
                    "forgeexe.c")], check=True)  # fmt: skip
    forge.chmod(0o755)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", env.port))
    listener.listen(8)
    try:
        control = child("-c", f"import socket; socket.create_connection(('127.0.0.1', {env.port}))",
                        cgroup=env.cgroup)  # fmt: skip
        assert "PermissionError" in control.stderr, "the control: python may not connect"
        enter = f"echo $$ > {env.cgroup}/cgroup.procs && exec setpriv --reuid 65534 " \
                f'--regid 65534 --clear-groups "$@"'  # fmt: skip
        r = subprocess.run(["/bin/sh", "-c", enter, "sh", str(forge), "/usr/bin/true", "connect",
                            str(env.port)], capture_output=True, text=True, timeout=30)  # fmt: skip
        assert r.stdout.startswith(("OK", "ERR o")), r  # forged, then connected or refused
    finally:
        listener.close()
    if r.stdout.startswith("OK"):
        assert any("PR_SET_MM" in g for g in env.open_on_host("rep-connect-exe")), (
            "a forged exe connected, and policy check --host does not say so"
        )


def test_an_o_tmpfile_in_a_create_guarded_tree_is_refused(env: Env) -> None:
    """An O_TMPFILE opened in a create-guarded directory makes a file that linkat(2) names
    there: judged as a create (red team 2026-12-08: judged as a write only, and linked in)."""
    new = env.root / "tree-new"
    script = (
        "import ctypes, os, sys\n"  # imported as root: nobody cannot read this interpreter's lib
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        f"    fd = os.open({str(new)!r}, os.O_TMPFILE | os.O_WRONLY, 0o644)\n"
        "except PermissionError as e:\n"
        "    sys.exit(13 if e.errno == 1 else f'open: {e}')\n"  # EPERM: the agent's answer
        "os.write(fd, b'appeared')\n"
        # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N: os.link calls link(2)
        f"ctypes.CDLL(None).linkat(-100, f'/proc/self/fd/{{fd}}'.encode(), -100, "
        f"{str(new / 'linked').encode()!r}, 0x400)\n"
    )
    r = child("-c", script)
    assert r.returncode in (13, -9), r  # refused, or killed by the fallback
    assert not (new / "linked").exists()
    deadline = time.monotonic() + 5
    while not env.verdicts("rep-tree-create") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert env.verdicts("rep-tree-create"), "the refusal is journaled"


#: As nobody, ``argv[1]`` times: a child opens ``argv[2]`` for appending while the parent
#: renames ``argv[3]`` (the file, or a directory above it) to ``argv[4]`` an instant later
#: and back once the child has its answer; a child that got a descriptor writes through it.
#: Prints how many did.
RENAME_RACE = textwrap.dedent(
    """\
    import os, sys, time
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    tries, target, inside, outside = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    won = 0
    for i in range(tries):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                fd = os.open(target, os.O_WRONLY | os.O_APPEND)
            except OSError:
                os.write(w, b"D"); os._exit(0)
            os.write(w, b"W")
            time.sleep(0.5)  # the parent puts it back (and a fallback kill comes)
            os.write(fd, b"raced\\n")
            os._exit(0)
        os.close(w)
        time.sleep(0.0005)
        try:
            os.rename(inside, outside)
        except OSError:
            pass
        answer = os.read(r, 1)
        os.close(r)
        try:
            os.rename(outside, inside)
        except OSError:
            pass
        os.waitpid(pid, 0)
        won += answer == b"W"
    print(won)
    """
)


@pytest.mark.parametrize("moved", ["f", "sub"])
def test_a_file_renamed_out_of_a_tree_while_its_open_waits_is_still_refused(
    env: Env, moved: str
) -> None:
    """The agent names a file when it answers, by its name then: renamed out of the tree while
    its open waited (the file, or its directory), it was judged by the outside name and
    allowed (red team 2026-12-08: 4 of 100 writes; the directory 3 of 3 when timed). A file no
    mark of the event's kind is on any more is judged as if still in each tree and prefix a
    rule marks; a marked directory renamed away by the name the plan has for it. A directory
    renamed out may also lose its marks before the open reaches them (the agent follows the
    rename: `policy check --host`'s "renamed later" gap): that open is seen afterwards and the
    fallback kills the writer before it writes."""
    inside, outside = env.tree / "w" / moved, env.root / "out" / moved
    target = env.tree / "w" / ("f" if moved == "f" else "sub/f")
    r = child("-c", RENAME_RACE, "300", str(target), str(inside), str(outside))
    assert r.returncode == 0, r.stderr
    if moved == "f":
        assert int(r.stdout) == 0, f"{r.stdout.strip()} of 300 writes got a descriptor"
    assert "raced" not in target.read_text(), f"written ({r.stdout.strip()} got a descriptor)"
