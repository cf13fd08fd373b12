"""Kernel e2e, as an attacker: other ways to the objects that exec and open rules name.

On a host without BPF-LSM, fanotify marks enforce exec and open rules. For every rule shape, a
test reaches the same object another way (hard link, symlink, bind mount, /proc/self/fd, the
dynamic loader, a directory created or mounted after load, an ancestor replaced, a reload that
drops a rule sharing a mark) and asserts what ``sealtrail policy test`` says for it, or, where
``policy check --host`` reports the way as open on this host, that what got through was
detected afterwards and handled by the rule's fallback (killed, and a verdict in the journal):
never a silent difference. On a BPF-LSM host (tests/vm) the same cases are denied in the kernel.

One agent for the module, with two policy files scoped to directories this test created.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.enforce.guard import cgroup2_root
from agent.policy.mechanisms import host_capabilities
from tests.kernel.test_enforce import PY, SLOW, Env

pytestmark = pytest.mark.kernel

POLICY_A = """
name = "bypass-a"
description = "exec and open rules of every shape, on paths the test created"
mode = "enforce"

[[rules]]
id = "no-exec-tree-a"
description = "nothing below tree-a runs"
operation = "exec"
targets.paths = ["{work}/tree-a/"]
action = "deny"
fallback = "kill"

[[rules]]
id = "no-exec-tool"
description = "the tool never runs, whatever its name"
operation = "exec"
targets.paths = ["{work}/bin/tool", "{work}/anc/bin/tool", "{work}/binlink/tool"]
action = "deny"
fallback = "kill"

[[rules]]
id = "no-exec-shell-for-nobody"
description = "a judged binary that root may run: its inode is marked for open and exec"
operation = "exec"
targets.paths = ["{work}/bin/shell"]
action = "deny"
fallback = "kill"

[rules.subjects]
uid = [65534]

[[rules]]
id = "sudoers-write"
description = "no writes to sudoers and below sudoers.d, at any depth"
operation = "open"
access = ["write", "create", "truncate"]
targets.paths = ["{work}/etc/sudoers*"]
action = "deny"
fallback = "kill"

[[rules]]
id = "shadow-write"
description = "no writes to shadow"
operation = "open"
access = ["write", "truncate"]
targets.paths = ["{work}/etc/shadow"]
action = "deny"
fallback = "kill"
"""

POLICY_B = """
name = "bypass-b"
description = "a second exec rule on the same filesystem (shares the kernel's marks)"
mode = "enforce"

[[rules]]
id = "no-exec-tree-b"
description = "nothing below tree-b runs"
operation = "exec"
targets.paths = ["{work}/tree-b/"]
action = "deny"
fallback = "kill"
"""

TOUCH = "/usr/bin/touch"
WRITE = "import sys; open(sys.argv[1], 'a').write('x')"


def loader() -> str:
    for path in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"):
        if os.path.exists(path):
            return path
    pytest.skip("no dynamic loader at a known path")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("bypass").resolve()
    work = root / "work"
    for d in ("tree-a/sub", "tree-b", "bin", "anc/bin", "elsewhere", "etc/sudoers.d/deep", "mnt"):
        (work / d).mkdir(parents=True)
    for tool in ("tree-a/tool", "tree-a/sub/tool", "tree-b/tool", "bin/tool", "anc/bin/tool"):
        shutil.copy(TOUCH, work / tool)
    shutil.copy("/usr/bin/bash", work / "bin/shell")
    (work / "binlink").symlink_to("bin")  # like /bin -> usr/bin: a rule path through a link
    (work / "etc/sudoers").write_text("root ALL=(ALL) ALL\n")
    (work / "etc/sudoers.d/10-old").write_text("old\n")
    (work / "etc/shadow").write_text("root:*:1::::::\n")
    policies = root / "policies"
    policies.mkdir()
    (policies / "a.toml").write_text(POLICY_A.format(work=work))
    (policies / "b.toml").write_text(POLICY_B.format(work=work))
    cgroup = cgroup2_root() / f"sealtrail-bypass-{os.getpid()}"
    cgroup.mkdir()
    lsm = host_capabilities().lsm
    env = Env(root, work, root / "journal", root / "keys", policies, root / "run", cgroup,
              None, {}, lsm)  # type: ignore[arg-type]  # fmt: skip
    with env.running():
        yield env


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str] | PermissionError:
    """Run argv; an exec the kernel refused comes back as the PermissionError."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60 * SLOW, **kw)
    except PermissionError as exc:
        return exc


def denied(argv: list[str]) -> bool:
    r = run(argv)
    return isinstance(r, PermissionError) or (
        r.returncode != 0 and "Operation not permitted" in r.stderr + r.stdout
    )


def reload(env: Env) -> subprocess.CompletedProcess[str]:
    return env.sealtrail("policy", "reload", "--run-dir", str(env.run_dir), "--timeout",
                         str(20 * SLOW))  # fmt: skip


def status(env: Env) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((env.run_dir / "status.json").read_text())
    return loaded


def until(check: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``check()`` (a marks update after a directory change is asynchronous)."""
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def missed(env: Env, rule: str, path: str) -> list[dict[str, Any]]:
    """Verdicts for what fanotify did not stop, detected afterwards from the event stream."""
    return [
        r
        for r in env.records()
        if r["type"] == "verdict"
        and r["rule"] == rule
        and r["object"].get("missed_by") == "fanotify"
        and r["object"].get("path") == path
    ]


def test_the_kernel_holds_the_plan_after_load(env: Env) -> None:
    s = status(env)
    assert s["result"] == "loaded" and "errors" not in s, s


def test_prefix_rule_covers_files_in_subdirectories(env: Env) -> None:
    """``sudoers*`` names sudoers.d/10-old and sudoers.d/deep/x: a directory mark on etc sees
    only its direct children, so the subtree needs its own marks."""
    w = env.work / "etc"
    for target in (w / "sudoers", w / "sudoers.d/10-old", w / "sudoers.d/deep/new"):
        assert denied([PY, "-c", WRITE, str(target)]), target
    assert (w / "sudoers.d/10-old").read_text() == "old\n"
    assert not (w / "sudoers.d/deep/new").exists() or (w / "sudoers.d/deep/new").stat().st_size == 0
    env.verdict("sudoers-write", action="deny")
    # a neighbour no rule names is untouched
    assert not denied([PY, "-c", WRITE, str(w / "hosts")])


def test_subdirectory_created_after_load_is_marked(env: Env) -> None:
    later = env.work / "etc/sudoers.d/later"
    later.mkdir()
    assert until(lambda: denied([PY, "-c", WRITE, str(later / "probe")]))
    assert denied([PY, "-c", WRITE, str(later / "99-evil")])


def test_mount_below_a_prefix_after_load_is_marked(env: Env) -> None:
    mnt = env.work / "etc/sudoers.d/mounted"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "sealtrail-test", str(mnt)], check=True)
    try:
        assert until(lambda: denied([PY, "-c", WRITE, str(mnt / "probe")]))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_race_with_a_new_directory_is_never_silent(env: Env) -> None:
    """mkdir + write at once can beat the mark (policy check --host says so): then the writer
    is killed afterwards (fallback = "kill") and the journal has the verdict."""
    script = (
        "import os, sys; d = sys.argv[1]; os.mkdir(d); "
        "open(os.path.join(d, 'f'), 'w').write('x'); print('written', flush=True)"
    )
    target = env.work / "etc/sudoers.d/race"
    r = run([PY, "-c", script, str(target)])
    if isinstance(r, subprocess.CompletedProcess) and "written" in r.stdout:
        assert until(lambda: missed(env, "sudoers-write", str(target / "f"))), "not journaled"
        v = missed(env, "sudoers-write", str(target / "f"))[0]
        assert v["action"] == "kill" and v["after_the_fact"], v
    else:
        assert isinstance(r, PermissionError) or "Operation not permitted" in r.stderr, r


def test_hard_link_symlink_bind_mount_and_fd_exec_of_a_denied_tool(env: Env) -> None:
    tool = env.work / "bin/tool"
    link = env.work / "elsewhere/hardlink"
    os.link(tool, link)
    sym = env.work / "elsewhere/symlink"
    sym.symlink_to(tool)
    witness = env.root / "tool-ran"
    assert denied([str(tool), str(witness)])
    assert denied([str(link), str(witness)]), "a hard link is the same file"
    assert denied([str(sym), str(witness)])
    fd_exec = (
        "import os, sys; fd = os.open(sys.argv[1], os.O_PATH); "
        "os.execv(f'/proc/self/fd/{fd}', ['tool', sys.argv[2]])"
    )
    assert denied([PY, "-c", fd_exec, str(tool), str(witness)])
    fexecve = (
        "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
        "os.execve(fd, ['tool', sys.argv[2]], {})"
    )
    assert denied([PY, "-c", fexecve, str(tool), str(witness)])
    mnt = env.work / "mnt"
    subprocess.run(["mount", "--bind", str(env.work / "bin"), str(mnt)], check=True)
    try:
        assert denied([str(mnt / "tool"), str(witness)]), "a bind mount is the same file"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert not witness.exists()


def test_the_dynamic_loader_cannot_run_a_denied_tool(env: Env) -> None:
    """``ld.so PROGRAM`` maps PROGRAM without an exec of it: judged as its exec."""
    witness = env.root / "loader-ran"
    r = run([loader(), str(env.work / "bin/tool"), str(witness)])
    assert isinstance(r, PermissionError) or r.returncode != 0, r
    assert not witness.exists()
    env.verdict("no-exec-tool", action="deny", operation="exec")


def test_exec_in_a_subdirectory_of_a_tree_rule(env: Env) -> None:
    witness = env.root / "sub-ran"
    assert denied([str(env.work / "tree-a/sub/tool"), str(witness)])
    assert not witness.exists()


def test_an_exec_no_rule_names_is_not_held(env: Env) -> None:
    ok = run([TOUCH, str(env.root / "plain")])
    assert isinstance(ok, subprocess.CompletedProcess) and ok.returncode == 0
    assert (env.root / "plain").exists()


def test_an_ancestor_replaced_after_load_is_never_silent(env: Env) -> None:
    """mv the tool's directory away, make a new one and put a copy at the rule's path: the path
    the rule names is denied, or (the race policy check --host reports) the run is killed
    afterwards and journaled."""
    anc = env.work / "anc"
    script = (
        "import os, shutil, sys; a = sys.argv[1]; os.rename(a + '/bin', a + '/bin.old'); "
        "os.mkdir(a + '/bin'); shutil.copy(sys.argv[2], a + '/bin/tool'); "
        "os.chmod(a + '/bin/tool', 0o755); os.execv(a + '/bin/tool', ['tool', sys.argv[3]])"
    )
    witness = env.root / "anc-ran"
    r = run([PY, "-c", script, str(anc), TOUCH, str(witness)])
    if witness.exists():
        assert until(lambda: missed(env, "no-exec-tool", str(anc / "bin/tool"))), "not journaled"
        v = missed(env, "no-exec-tool", str(anc / "bin/tool"))[0]
        assert v["action"] == "kill" and v["after_the_fact"], v
    else:
        assert isinstance(r, PermissionError) or r.returncode != 0, r
    # and from now on the new file at that path is marked
    assert until(lambda: denied([str(anc / "bin/tool"), str(env.root / "anc-later")]))


def test_reload_dropping_one_of_two_exec_rules_keeps_the_other(env: Env) -> None:
    """Both rules need the same kernel objects' exec bits; dropping one used to unmark both."""
    a, b = env.work / "tree-a/tool", env.work / "tree-b/tool"
    witness = env.root / "reload-ran"
    assert denied([str(a), str(witness)]) and denied([str(b), str(witness)])
    saved = (env.policies / "b.toml").read_text()
    (env.policies / "b.toml").unlink()
    try:
        r = reload(env)
        assert r.returncode == 0 and "loaded" in r.stdout, r
        assert status(env)["result"] == "loaded"
        assert denied([str(a), str(witness)]), "the remaining rule's exec mark was removed"
        assert not denied([str(b), str(witness)])
    finally:
        (env.policies / "b.toml").write_text(saved)
        assert reload(env).returncode == 0
    assert denied([str(b), str(env.root / "reload-again")])
    assert not (env.root / "reload-again").exists()


def test_reload_of_an_empty_directory_is_rejected_and_enforcement_stays(env: Env) -> None:
    away = env.root / "policies-away"
    away.mkdir(exist_ok=True)
    for f in env.policies.glob("*.toml"):
        f.rename(away / f.name)
    try:
        r = reload(env)
        assert r.returncode == 1 and "rejected" in r.stdout and "no *.toml" in r.stdout, r
        assert denied([str(env.work / "tree-a/tool"), str(env.root / "empty-ran")])
        assert denied([PY, "-c", WRITE, str(env.work / "etc/shadow")])
    finally:
        for f in away.glob("*.toml"):
            f.rename(env.policies / f.name)
        assert reload(env).returncode == 0
    types = [r["type"] for r in env.records()]
    assert "policy_rejected" in types


def test_a_proc_mount_below_rule_directories_does_not_keep_the_policy_from_loading(
    env: Env,
) -> None:
    """procfs refuses fanotify permission events (EINVAL): a chroot's /proc below a tree or
    prefix rule (piuparts, debootstrap, a container's root under /tmp) made every load fail,
    and an agent starting then would not start at all. Now it loads, says what it could not
    mark, and everything else stays enforced; a /proc mounted after load changes nothing."""
    mounted: list[Path] = []

    def mount_proc(where: Path) -> None:
        where.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "proc", "proc", str(where)], check=True)
        mounted.append(where)

    try:
        mount_proc(env.work / "tree-a/proc")
        mount_proc(env.work / "etc/sudoers.d/proc")
        r = reload(env)
        assert r.returncode == 0 and "loaded" in r.stdout, r.stdout + r.stderr
        s = status(env)
        assert s["result"] == "loaded" and "errors" not in s, s
        if not env.lsm:
            assert sorted(line.split(":")[0] for line in s["not_marked"]) == [
                str(env.work / "etc/sudoers.d/proc"), str(env.work / "tree-a/proc")
            ], s  # fmt: skip
            loaded = [r for r in env.records() if r["type"] == "policy_loaded"][-1]
            assert loaded["not_marked"] == s["not_marked"]
        assert denied([str(env.work / "tree-a/tool"), str(env.root / "proc-ran")])
        assert denied([PY, "-c", WRITE, str(env.work / "etc/sudoers.d/10-old")])
        # the same binary through the proc mount's magic link is the same file: denied
        via = env.work / "tree-a/proc/self/root" / str(env.work / "tree-a/tool").lstrip("/")
        assert denied([str(via), str(env.root / "proc-ran")])
        mount_proc(env.work / "tree-b/proc")  # after load: the directory watcher's refresh
        assert denied([str(env.work / "tree-b/tool"), str(env.root / "proc-ran")])
        time.sleep(0.5 * SLOW)
        assert not [r for r in env.records() if r["type"] == "policy_mismatch"]
        assert not (env.root / "proc-ran").exists()
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", str(where)], check=True)
            where.rmdir()
    assert reload(env).returncode == 0
    assert "not_marked" not in status(env)


def test_policy_check_host_reports_what_fanotify_leaves_open(env: Env) -> None:
    r = env.sealtrail("policy", "check", "--host", "--json", str(env.policies))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    by_rule = {e["rule"]: e for e in report["enforcement"]}
    if env.lsm:  # exact rules are closed; tree and prefix rules say what other mounts show
        assert not by_rule["no-exec-tool"]["open_on_host"]
        assert any("bind mount" in g for g in by_rule["no-exec-tree-a"]["open_on_host"])
        return
    assert any("created, renamed or mounted" in g for g in by_rule["sudoers-write"]["open_on_host"])
    assert any("dynamic loader" in g for g in by_rule["no-exec-tree-a"]["open_on_host"])
    assert any("procfs" in g for g in by_rule["sudoers-write"]["open_on_host"])
    assert not any("procfs" in g for g in by_rule["shadow-write"]["open_on_host"])
    # exact exec rules are closed against the loader: that way is not listed for them
    assert not any("dynamic loader" in g for g in by_rule["no-exec-tool"]["open_on_host"])
    bare = env.root / "nofallback"
    bare.mkdir(exist_ok=True)
    (bare / "a.toml").write_text(POLICY_A.format(work=env.work).replace('fallback = "kill"\n', ""))
    r = env.sealtrail("policy", "check", "--host", str(bare))
    assert r.returncode == 1 and 'set fallback = "kill" or "audit"' in r.stdout, r.stdout


def test_journal_verifies(env: Env) -> None:
    r = env.sealtrail("journal", "verify", "--journal", str(env.journal),
                      "--key", str(env.keys / "journal.pub"))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_judged_program_reading_a_judged_binary_does_not_hang_the_agent(env: Env) -> None:
    """The shell's own binary is marked (an exact exec rule names it), and it reads the tool,
    which an exact exec rule names too: the agent must judge that open (is it a loader?)
    without opening the shell's binary itself, which would wait for its own answer."""
    r = subprocess.run(
        [str(env.work / "bin/shell"), "-c", f"read -r line < {env.work}/bin/tool; echo read"],
        capture_output=True, text=True, timeout=20 * SLOW,
    )  # fmt: skip
    assert r.returncode == 0 and "read" in r.stdout, r
    assert denied([str(env.work / "bin/tool"), str(env.root / "after-read")]), "agent stuck"


def test_a_tree_filled_before_its_watch_is_marked_to_the_bottom(env: Env) -> None:
    """mkdir -p of a deep tree at once: the directories below the first new one exist before
    their parent is watched, so no event names them; the agent looks into each new watch."""
    top = env.work / "tree-a/deep"
    bottom = top / "a/b/c/d/e/f"
    bottom.mkdir(parents=True)
    for i in range(200):
        (top / f"wide{i:03d}").mkdir()
    shutil.copy(TOUCH, bottom / "tool")
    shutil.copy(TOUCH, top / "wide199/tool")
    assert until(lambda: denied([str(bottom / "tool"), str(env.root / "deep-ran")]), 10)
    assert until(lambda: denied([str(top / "wide199/tool"), str(env.root / "wide-ran")]), 10)
    assert not (env.root / "deep-ran").exists() or missed(
        env, "no-exec-tree-a", str(bottom / "tool")
    )


def test_directories_that_vanish_at_once_are_no_mismatch(env: Env) -> None:
    """A busy tree (a test suite's temp dirs under a /tmp/ rule): directories made and removed
    before the watcher reaches them leave nothing to mark and nothing to watch. That is no
    difference between the kernel and the policy: no policy_mismatch record, and the tree
    stays enforced."""
    before = len(env.records())
    script = (
        "import os, shutil, sys, time\n"
        "top = sys.argv[1]\n"
        "for i in range(60):\n"
        "    for j in range(20):\n"
        "        os.makedirs(os.path.join(top, f'v{i}', f'{j}', 'a', 'b'))\n"
        "    time.sleep(0.001 * (i % 30))  # every lifetime from 0 to 30 ms\n"
        "    shutil.rmtree(os.path.join(top, f'v{i}'))\n"
    )
    subprocess.run([PY, "-c", script, str(env.work / "tree-a")], check=True, timeout=60)
    time.sleep(2.0)  # the watcher's updates for all of them
    shutil.copy(TOUCH, env.work / "tree-a/after")
    assert until(lambda: denied([str(env.work / "tree-a/after"), str(env.root / "after-ran")]))
    mismatches = [r for r in env.records()[before:] if r["type"] == "policy_mismatch"]
    assert not mismatches, mismatches[:3]
