"""fanotify permission events: real EPERM for open and exec, only on what we marked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.enforce.fanotify import FanotifyGuard, PermissionRequest

pytestmark = pytest.mark.kernel


def test_open_denied_with_eperm_and_neighbour_allowed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    public = tmp_path / "public"
    public.write_text("hello\n")
    seen: list[PermissionRequest] = []

    def decide(req: PermissionRequest) -> bool:
        seen.append(req)
        return req.path != str(secret)

    with FanotifyGuard(decide) as guard:
        guard.mark_dir(str(tmp_path))
        denied = subprocess.run(["cat", str(secret)], capture_output=True, text=True)
        allowed = subprocess.run(["cat", str(public)], capture_output=True, text=True)
    assert denied.returncode != 0 and "Operation not permitted" in denied.stderr
    assert denied.stdout == ""
    assert allowed.returncode == 0 and allowed.stdout == "hello\n"
    assert {r.path for r in seen} >= {str(secret), str(public)}
    assert guard.denied >= 1


def test_exec_denied_and_program_never_runs(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    shutil.copy("/usr/bin/touch", tool)
    witness = tmp_path / "ran"

    def decide(req: PermissionRequest) -> bool:
        return not (req.is_exec and req.path == str(tool))

    with FanotifyGuard(decide) as guard:
        guard.mark_file(str(tool), open_=False, exec_=True)
        with pytest.raises(PermissionError):
            subprocess.run([str(tool), str(witness)], check=False)
        ok = subprocess.run(["/usr/bin/touch", str(tmp_path / "neighbour")], check=False)
    assert not witness.exists()
    assert ok.returncode == 0 and (tmp_path / "neighbour").exists()


def test_decision_error_fails_closed(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")

    def decide(req: PermissionRequest) -> bool:
        raise RuntimeError("policy bug")

    with FanotifyGuard(decide) as guard:
        guard.mark_file(str(f))
        r = subprocess.run(["cat", str(f)], capture_output=True)
    assert r.returncode != 0 and guard.errors == 1


def test_agent_gone_means_allowed(tmp_path: Path) -> None:
    """Documented limit: enforcement by fanotify ends with the agent."""
    f = tmp_path / "f"
    f.write_text("x")
    guard = FanotifyGuard(lambda req: False)
    guard.start()
    guard.mark_file(str(f))
    assert subprocess.run(["cat", str(f)], capture_output=True).returncode != 0
    guard.close()
    assert subprocess.run(["cat", str(f)], capture_output=True).returncode == 0


def test_the_native_reader_answers_what_no_rule_names_and_asks_about_the_rest(
    tmp_path: Path,
) -> None:
    """With a filter installed, opens of files no entry names are answered in C (``decide``
    never sees them); a named file, a hard link to an exact rule's file and everything while
    no filter is installed still reach ``decide``, which denies them here."""
    import os

    from agent.native.fanfilter import FilterSpec, own_mount_ns

    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    os.link(secret, tmp_path / "alias")
    (tmp_path / "public").write_text("hello\n")
    seen: list[str] = []

    def decide(req: PermissionRequest) -> bool:
        seen.append(req.path)
        return not req.path.startswith(str(tmp_path / "secret")) and req.path != str(
            tmp_path / "alias"
        )

    st, sec = os.stat(tmp_path), os.stat(secret)
    spec = FilterSpec(
        own_mount_ns(),
        ((str(tmp_path), st.st_dev, st.st_ino),),
        ((str(secret).encode(), True),),
        frozenset({(sec.st_dev, sec.st_ino)}),
    )
    with FanotifyGuard(decide) as guard:
        assert guard.has_native, "the native core is built by make native"
        guard.mark_dir(str(tmp_path))
        guard.set_filter(spec)
        public = [subprocess.run(["cat", str(tmp_path / "public")], capture_output=True,
                                 text=True) for _ in range(20)]  # fmt: skip
        denied = subprocess.run(["cat", str(secret)], capture_output=True, text=True)
        linked = subprocess.run(["cat", str(tmp_path / "alias")], capture_output=True, text=True)
        natively = guard.answered_natively
        guard.set_filter(None)
        asked = subprocess.run(["cat", str(tmp_path / "public")], capture_output=True, text=True)
    assert all(p.stdout == "hello\n" for p in public) and asked.stdout == "hello\n"
    assert "Operation not permitted" in denied.stderr and "Operation not permitted" in linked.stderr
    assert natively >= 20, natively
    assert seen.count(str(tmp_path / "public")) == 1, seen  # only the open without a filter
    assert str(secret) in seen and str(tmp_path / "alias") in seen


def test_an_exec_a_rule_judges_is_answered_natively_for_a_caller_its_ids_rule_out(
    tmp_path: Path,
) -> None:
    """An exact exec rule for one user (uid 65534): the exec of that binary by root is
    answered in C from the id screens, without asking ``decide``; the rule's user is asked
    (and denied here, as the rule says)."""
    import errno
    import os
    import shutil
    import tempfile

    from agent.native.fanfilter import FilterSpec, own_mount_ns
    from agent.policy.compile import compile_policy_set
    from agent.policy.evaluate import Evaluator
    from agent.policy.source import load_policy_set

    where = Path(tempfile.mkdtemp(prefix="sealtrail-screen-", dir="/var/tmp"))  # others may exec
    os.chmod(where, 0o755)
    binary = where / "judged-true"
    shutil.copy2("/bin/true", binary)
    policy = tmp_path / "p.toml"
    policy.write_text(
        'name = "p"\nmode = "enforce"\n[[rules]]\nid = "nobody-true"\noperation = "exec"\n'
        f'targets.paths = ["{binary}"]\naction = "deny"\n[rules.subjects]\nuid = [65534]\n'
    )
    policy_set, findings = load_policy_set([policy])
    assert not findings, [str(f) for f in findings]
    evaluator = Evaluator(compile_policy_set(policy_set))
    seen: list[int] = []

    def decide(req: PermissionRequest) -> bool:
        seen.append(req.tid)
        return False

    spec = FilterSpec(
        own_mount_ns(), screens={op: evaluator.id_screen(op) for op in ("open", "exec")}
    )
    try:
        with FanotifyGuard(decide) as guard:
            assert guard.has_native, "the native core is built by make native"
            guard.mark_file(str(binary), open_=False, exec_=True)
            guard.set_filter(spec)
            as_root = [subprocess.run([str(binary)]).returncode for _ in range(20)]
            natively = guard.answered_natively
            try:
                subprocess.run([str(binary)], user=65534, group=65534)
                refused = 0
            except PermissionError as exc:
                refused = exc.errno
    finally:
        shutil.rmtree(where)
    assert as_root == [0] * 20 and natively >= 20, (as_root, natively)
    assert refused == errno.EPERM and len(seen) == 1, (refused, seen)
