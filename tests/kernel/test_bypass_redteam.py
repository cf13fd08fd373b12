"""Kernel e2e, red team: ways to exec a denied binary or write a protected file on a fanotify
host (no BPF-LSM) that must never be silent.

Every case does the forbidden thing from a real process against a real agent whose rules name
only paths this module created, and asserts the property the README promises: the kernel
refused it (EPERM), or it got through and the journal has a verdict for the rule (after the
fact, ``missed_by``), or ``sealtrail policy check --host`` lists that way as open for the rule,
or ``sealtrail policy test`` agrees that the path used is not the rule's -- never a silent
difference. Written by a red-team review of the fanotify mechanism; each docstring says how
the case used to get through silently.

One agent for the module (fixture pattern of test_bypass.py). Mounts made here are undone in
``finally``; helper processes are ended by their pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.enforce.guard import cgroup2_root
from agent.policy.mechanisms import host_capabilities
from tests.agentproc import agent_log
from tests.kernel.test_bypass import denied, reload, run, status, until
from tests.kernel.test_enforce import PY, SLOW, Env

pytestmark = pytest.mark.kernel

HERE = Path(__file__).parent
TOUCH = "/usr/bin/touch"
LOADER = "/lib64/ld-linux-x86-64.so.2"
WRITE = "import sys; open(sys.argv[1], 'a').write('x')"

POLICY = """
name = "redteam"
description = "exec and open rules of every shape, on paths the red-team test created"
mode = "enforce"

[[rules]]
id = "rt-no-exec-tool"
description = "the tool never runs, whatever its name"
operation = "exec"
targets.paths = ["{work}/bin/tool"]
action = "deny"
fallback = "kill"

[[rules]]
id = "rt-no-exec-tree"
description = "nothing below tree runs"
operation = "exec"
targets.paths = ["{work}/tree/"]
action = "deny"
fallback = "kill"

[[rules]]
id = "rt-sudoers-write"
description = "no writes to sudoers and below sudoers.d"
operation = "open"
access = ["write", "create", "truncate"]
targets.paths = ["{work}/etc/sudoers*"]
action = "deny"
fallback = "kill"

[[rules]]
id = "rt-shadow-write"
description = "no writes to shadow"
operation = "open"
access = ["write", "truncate"]
targets.paths = ["{work}/etc/shadow"]
action = "deny"
fallback = "kill"
"""

LATER = """
name = "redteam-later"
description = "a rule loaded by a reload while a writer already holds the file open"
mode = "enforce"

[[rules]]
id = "rt-passwd-write"
description = "no writes to passwd"
operation = "open"
access = ["write", "truncate"]
targets.paths = ["{work}/etc/passwd"]
action = "deny"
fallback = "kill"
"""


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    # not below pytest's 0700 basetemp: the user-namespace case runs as nobody
    root = Path(tempfile.mkdtemp(prefix="sealtrail-redteam-")).resolve()
    os.chmod(root, 0o755)
    work = root / "work"
    for d in ("tree/sub", "bin", "etc/sudoers.d", "elsewhere", "mnt", "free"):
        (work / d).mkdir(parents=True)
    for tool in ("tree/tool", "tree/sub/tool", "bin/tool"):
        shutil.copy(TOUCH, work / tool)
    (work / "etc/sudoers").write_text("root ALL=(ALL) ALL\n")
    (work / "etc/sudoers.d/10-old").write_text("old\n")
    (work / "etc/shadow").write_text("root:*:1::::::\n")
    (work / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    subprocess.run(["gcc", "-O1", "-o", str(root / "uring"), str(HERE / "redteam/uring.c")],
                   check=True)  # fmt: skip
    policies = root / "policies"
    policies.mkdir()
    (policies / "a.toml").write_text(POLICY.format(work=work))
    cgroup = cgroup2_root() / f"sealtrail-redteam-{os.getpid()}"
    cgroup.mkdir()
    lsm = host_capabilities().lsm
    env = Env(root, work, root / "journal", root / "keys", policies, root / "run", cgroup,
              None, {}, lsm)  # type: ignore[arg-type]  # fmt: skip
    with env.running():
        yield env
        shutil.rmtree(root, ignore_errors=True)


def verdicts(env: Env, rule: str) -> list[dict[str, Any]]:
    return [r for r in env.records() if r["type"] == "verdict" and r["rule"] == rule]


def since_now(env: Env) -> int:
    """A start time for ``journaled``, once verdicts of what ran before are in the journal."""
    count, deadline = -1, time.monotonic() + 3 * SLOW
    while time.monotonic() < deadline:  # the agent journals asynchronously: let it settle
        now = sum(r["type"] == "verdict" for r in env.records())
        if now == count:
            break
        count = now
        time.sleep(0.3)
    return time.time_ns()


def journaled(env: Env, rule: str, since: int, timeout: float = 3.0) -> bool:
    """A verdict for ``rule`` recorded after ``since`` (deny, or missed by fanotify)."""
    return until(lambda: any(int(v["ts"]) > since for v in verdicts(env, rule)), timeout)


def open_on_host(env: Env, rule: str) -> list[str]:
    """What `policy check --host` says this host leaves open for ``rule``."""
    r = env.sealtrail("policy", "check", "--host", "--json", str(env.policies))
    report = json.loads(r.stdout)
    found: list[str] = next(e["open_on_host"] for e in report["enforcement"] if e["rule"] == rule)
    return found


def policy_test_says(env: Env, case: str) -> str:
    """The verdict `sealtrail policy test` gives for one fixture case (TOML fields)."""
    fixture = env.root / "case.fixtures.toml"
    fixture.write_text(
        f'[[case]]\nname = "c"\nprocess = {{ exe = "/usr/bin/python3", uid = 0, gid = 0 }}\n'
        f'expect = "allow"\n{case}\n'
    )
    r = env.sealtrail("policy", "test", str(fixture), "--policies", str(env.policies))
    return "allow" if r.returncode == 0 else "not allow"


def never_silent(
    env: Env, rule: str, since: int, happened: bool, what: str, reported: str | None = None
) -> None:
    """The property every case asserts: stopped, or journaled, or (``reported``) a way that
    `policy check --host` lists as open for the rule."""
    logged = journaled(env, rule, since, 3.0 if happened else 1.0)
    print(
        f"\n[redteam] {what}: {'got through' if happened else 'stopped'}, "
        f"{'journaled' if logged else 'nothing journaled'}"
    )
    if happened and not logged:
        assert reported is not None, f"SILENT: {what} got through, no verdict for {rule}"
        gaps = open_on_host(env, rule)
        assert any(reported in g for g in gaps), f"SILENT: {what}; not reported open: {gaps}"


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


# ---------------------------------------------------------------- exec


def test_sanity_exact_and_tree_exec_denied(env: Env) -> None:
    assert denied([str(env.work / "bin/tool"), str(env.root / "w0")])
    assert denied([str(env.work / "tree/sub/tool"), str(env.root / "w0")])
    assert not (env.root / "w0").exists()


def test_renamed_copy_of_the_loader_runs_an_exact_denied_tool(env: Env) -> None:
    """``policy check --host`` says exact exec rules are closed against the loader, but the
    agent recognises the loader by file name: a copy named ``myld`` maps the tool unjudged
    (the open of the tool is judged as an open only), and the exec event names myld."""
    myld = env.work / "free/myld"
    shutil.copy(LOADER, myld)
    witness = env.root / "loader-copy-ran"
    since = since_now(env)
    run([str(myld), str(env.work / "bin/tool"), str(witness)])
    never_silent(env, "rt-no-exec-tool", since, witness.exists(), "a renamed ld.so")


def test_hard_link_to_the_loader_runs_an_exact_denied_tool(env: Env) -> None:
    """The same with a hard link (no copy: the very loader inode, another name)."""
    link = env.root / "hl-ld"
    try:
        os.link(os.path.realpath(LOADER), link)
    except OSError as exc:
        pytest.skip(f"loader on another filesystem: {exc}")
    witness = env.root / "loader-link-ran"
    since = since_now(env)
    try:
        run([str(link), str(env.work / "bin/tool"), str(witness)])
    finally:
        link.unlink()
    never_silent(env, "rt-no-exec-tool", since, witness.exists(), "a hard-linked ld.so")


def test_bind_mount_of_a_tree_rule_directory(env: Env) -> None:
    """A tree rule's directory bind-mounted elsewhere: the marked directory is the same inode,
    fanotify asks, but the agent judges the path it reads back from the event fd (the bind
    mount's path), which no rule names; the exec event names the same path."""
    mnt = env.work / "mnt"
    witness = env.root / "bind-tree-ran"
    since = since_now(env)
    mount("--bind", str(env.work / "tree"), str(mnt))
    try:
        run([str(mnt / "sub/tool"), str(witness)])
    finally:
        umount(mnt)
    never_silent(env, "rt-no-exec-tree", since, witness.exists(), "exec via a bind mount")


def test_unprivileged_user_namespace_bind_mount_of_a_tree_rule(env: Env) -> None:
    """The same for an ordinary user: unshare -rm (user + mount namespace) needs no
    privilege, and the bind mount exists only in that namespace."""
    if not Path("/usr/bin/unshare").exists():
        pytest.skip("no unshare")
    wit = env.root / "wit"
    wit.mkdir(exist_ok=True)
    os.chmod(wit, 0o1777)  # nobody writes the witness
    witness = wit / "userns-tree-ran"
    script = f"mount --bind {env.work}/tree {env.work}/mnt && exec {env.work}/mnt/tool {witness}"
    since = since_now(env)
    r = run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "unshare", "-rm",
             "sh", "-c", script])  # fmt: skip
    if isinstance(r, subprocess.CompletedProcess) and "unshare failed" in r.stderr:
        pytest.skip(r.stderr)
    never_silent(env, "rt-no-exec-tree", since, witness.exists(), "exec via a userns bind mount")


def test_hard_link_outside_a_tree_rule(env: Env) -> None:
    """A hard link (made after load) to a binary below a tree rule, outside the tree: the
    parent that fanotify looks at is the link's directory (unmarked)."""
    link = env.work / "elsewhere/tree-tool-link"
    os.link(env.work / "tree/tool", link)
    witness = env.root / "hl-tree-ran"
    run([str(link), str(witness)])
    # tree and prefix rules match names, on every host and in `policy test` alike (README,
    # "Hard links"): the kernel does what policy test says for the link's name
    says = policy_test_says(env, f'operation = "exec"\npath = "{link}"')
    assert (says == "allow") == witness.exists(), (says, witness.exists())


def test_overlayfs_over_the_exact_tool(env: Env) -> None:
    """An overlay whose lower layer holds the tool: the overlay inode is not the marked one."""
    base = env.root / "ovl"
    for d in ("upper", "work", "merged"):
        (base / d).mkdir(parents=True, exist_ok=True)
    witness = env.root / "ovl-ran"
    since = since_now(env)
    mount("-t", "overlay", "overlay", "-o",
          f"lowerdir={env.work}/bin,upperdir={base}/upper,workdir={base}/work",
          str(base / "merged"))  # fmt: skip
    try:
        run([str(base / "merged/tool"), str(witness)])
    finally:
        umount(base / "merged")
    never_silent(env, "rt-no-exec-tool", since, witness.exists(), "exec through overlayfs")


def test_overlayfs_over_a_tree_rule(env: Env) -> None:
    base = env.root / "ovl2"
    for d in ("upper", "work", "merged"):
        (base / d).mkdir(parents=True, exist_ok=True)
    witness = env.root / "ovl-tree-ran"
    since = since_now(env)
    mount("-t", "overlay", "overlay", "-o",
          f"lowerdir={env.work}/tree,upperdir={base}/upper,workdir={base}/work",
          str(base / "merged"))  # fmt: skip
    try:
        run([str(base / "merged/sub/tool"), str(witness)])
    finally:
        umount(base / "merged")
    never_silent(env, "rt-no-exec-tree", since, witness.exists(), "exec through overlayfs")


# ---------------------------------------------------------------- open for write


def test_sanity_writes_denied(env: Env) -> None:
    for target in ("etc/sudoers.d/10-old", "etc/shadow", "etc/sudoers"):
        assert denied([PY, "-c", WRITE, str(env.work / target)]), target
    trunc = "import os, sys; os.open(sys.argv[1], os.O_RDONLY | os.O_TRUNC)"
    assert denied([PY, "-c", trunc, str(env.work / "etc/shadow")])
    assert (env.work / "etc/shadow").read_text() == "root:*:1::::::\n"


def test_bind_mount_of_a_prefix_rule_directory(env: Env) -> None:
    target = env.work / "etc/sudoers.d/10-old"
    before = target.read_text()
    mnt = env.work / "mnt"
    since = since_now(env)
    mount("--bind", str(env.work / "etc/sudoers.d"), str(mnt))
    try:
        run([PY, "-c", WRITE, str(mnt / "10-old")])
    finally:
        umount(mnt)
    never_silent(env, "rt-sudoers-write", since, target.read_text() != before,
                 "a write via a bind mount of sudoers.d")  # fmt: skip


def test_private_mount_namespace_bind_mount_of_a_prefix_rule(env: Env) -> None:
    target = env.work / "etc/sudoers.d/10-old"
    before = target.read_text()
    script = (f"mount --bind {env.work}/etc/sudoers.d {env.work}/mnt && "
              f"echo evil >> {env.work}/mnt/10-old")  # fmt: skip
    since = since_now(env)
    run(["unshare", "-m", "--propagation", "private", "sh", "-c", script])
    never_silent(env, "rt-sudoers-write", since, target.read_text() != before,
                 "a write via a bind mount in a private mount namespace")  # fmt: skip


def test_hard_link_outside_a_prefix_rule(env: Env) -> None:
    target = env.work / "etc/sudoers.d/10-old"
    before = target.read_text()
    link = env.work / "elsewhere/sudoers-link"
    os.link(target, link)
    run([PY, "-c", WRITE, str(link)])
    says = policy_test_says(env, f'operation = "open"\npath = "{link}"\naccess = ["write"]')
    assert (says == "allow") == (target.read_text() != before)


def test_io_uring_open_of_an_exact_file_is_denied(env: Env) -> None:
    target = env.work / "etc/shadow"
    before = target.read_text()
    since = since_now(env)
    r = run([str(env.root / "uring"), "open", str(target)])
    never_silent(env, "rt-shadow-write", since, target.read_text() != before,
                 f"an io_uring open ({r})")  # fmt: skip


def test_io_uring_mkdir_then_open_in_a_new_directory(env: Env) -> None:
    """mkdirat linked to openat in one io_uring submission: the open runs microseconds after
    the mkdir, before inotify -> mark; no syscall tracepoint sees an io_uring open, so the
    after-the-fact fallback never fires."""
    written = []
    since = since_now(env)
    for i in range(5):
        d = env.work / f"etc/sudoers.d/uring-{i}"
        r = run([str(env.root / "uring"), "mkopen", str(d), "99-evil"])
        if isinstance(r, subprocess.CompletedProcess) and "written" in r.stdout:
            written.append(d / "99-evil")
    time.sleep(2)
    missed = {str(v["object"].get("path")) for v in verdicts(env, "rt-sudoers-write")
              if int(v["ts"]) > since}  # fmt: skip
    silent = [str(p) for p in written if str(p) not in missed]
    print(
        f"\n[redteam] io_uring mkdirat+openat: {len(written)}/5 written, "
        f"{len(silent)} of them with no verdict naming the file"
    )
    if silent:  # the race the agent cannot see afterwards through io_uring: reported open
        assert any("io_uring" in g for g in open_on_host(env, "rt-sudoers-write")), silent


def test_write_fd_opened_before_the_rule_loaded(env: Env) -> None:
    """A writer that opened the file before the rule was in force (agent not yet started,
    restarting, or the rule added by a reload) keeps writing: no open, no event."""
    target = env.work / "etc/passwd"
    holder = subprocess.Popen(
        [PY, "-c", "import sys, time\nf = open(sys.argv[1], 'a')\nsys.stdin.readline()\n"
         "f.write('evil\\n'); f.flush(); print('written', flush=True)", str(target)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.3)
        (env.policies / "later.toml").write_text(LATER.format(work=env.work))
        r = reload(env)
        assert r.returncode == 0 and "loaded" in r.stdout, r
        assert denied([PY, "-c", WRITE, str(target)]), "the new rule is in force"
        since = since_now(env)
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        out = holder.stdout.readline()
        never_silent(env, "rt-passwd-write", since, "evil" in target.read_text(),
                     f"a write through an fd opened before load ({out.strip()})",
                     reported="opened for writing before the policy loaded")  # fmt: skip
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        (env.policies / "later.toml").unlink(missing_ok=True)
        reload(env)


def test_invalid_utf8_and_newline_names_do_not_stop_the_agent(env: Env) -> None:
    d = os.fsencode(str(env.work / "etc/sudoers.d")) + b"/bad\xff\nname"
    os.mkdir(d)
    target = d + b"/f\xfe"
    script = "import sys, os; fd = os.open(os.fsencode(sys.argv[1]), os.O_WRONLY | os.O_CREAT)"
    # a new directory: the race may be won (then it must be journaled); try once the mark is in
    assert until(lambda: denied([PY, "-c", script, os.fsdecode(target)]))
    assert env.agent.poll() is None
    assert denied([PY, "-c", WRITE, str(env.work / "etc/shadow")])


# ---------------------------------------------------------------- stop enforcing


def test_more_directories_than_the_mark_limit_after_load_is_reported(env: Env) -> None:
    """MAX_MARKS (16384) directories made under a tree rule after load: install reports a
    truncated plan, but the directory watcher's refresh truncates silently (no error, status
    stays "loaded"); a directory past the limit is never marked, so every exec there is only
    seen after the fact."""
    many = env.work / "tree/many"
    many.mkdir()
    try:
        _past_the_mark_limit(env, many)
    finally:
        shutil.rmtree(many, ignore_errors=True)


def _past_the_mark_limit(env: Env, many: Path) -> None:
    t0 = time.monotonic()
    for i in range(16500):
        (many / f"d{i:05d}").mkdir()
    last = many / "zz-last"
    last.mkdir()
    shutil.copy(TOUCH, last / "tool")
    time.sleep(2)
    witness = env.root / "past-limit-ran"
    since = since_now(env)
    r = run([str(last / "tool"), str(witness)])
    print(
        f"\n[redteam] 16500 dirs made in {time.monotonic() - t0:.1f}s; exec past the limit: "
        f"{'ran' if witness.exists() else 'stopped'} {r}"
    )
    never_silent(env, "rt-no-exec-tree", since, witness.exists(), "exec past the mark limit")
    # the agent catches up with a storm at its own pace (it never spends more than half its
    # time on marks): the limit shows in status.json once it has
    reported = until(lambda: status(env)["result"] == "mismatch", 120)
    assert reported, (status(env), agent_log(env.agent, env.root / "agent.log")[-3000:])
    s = status(env)
    print(f"[redteam] status after the storm: {s.get('result')} errors={s.get('errors')}")
    assert denied([str(env.work / "bin/tool"), str(env.root / "w1")]), "agent stopped enforcing"


def test_a_file_replaced_in_a_loop_does_not_block_a_reload(env: Env) -> None:
    """An exact rule's file replaced by rename in a loop (a new inode each time): the install
    used to find it "changed since the marks were planned" and reject the whole reload, so
    whoever could write that directory could keep any policy update from loading; and a
    replaced inode's number, reused by the next file, was judged as the rule's file."""
    stop = threading.Event()
    etc = env.work / "etc"

    def churn() -> None:
        i = 0
        while not stop.is_set():
            tmp = etc / f".shadow.{i % 2}"
            tmp.write_text("root:*:1::::::\n")
            os.rename(tmp, etc / "shadow")
            i += 1

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    results: list[list[str]] = []
    try:
        r = None
        for _ in range(5):
            r = reload(env)
            results.append(r.stdout.strip().splitlines()[:1])
    finally:
        stop.set()
        t.join()
    print(f"\n[redteam] reloads during a rename loop: {results}")
    print(f"[redteam] last reload said: {r.stdout[-600:] if r else None}")
    # once the loop stops, the agent must converge on the new inode
    assert until(lambda: denied([PY, "-c", WRITE, str(etc / "shadow")]))
    final = reload(env)
    print(f"[redteam] reload after the loop: {final.stdout.strip()[:200]}")
    assert final.returncode == 0, final.stdout
    # during the loop the new policy is in force on every reload (never rejected); the kernel
    # may be caught between a replaced inode and its new mark, which is reported as such
    assert all("loaded" in " ".join(x) or "installed" in " ".join(x) for x in results), results
