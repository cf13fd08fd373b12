"""The native fanotify fast path's filter (native/stfanotify.c): it may answer ALLOW only where
the Python decision is a plain "no rule names this file" allow. Real files and descriptors;
the filter is asked directly (``Filter.allows``) with this process as the caller."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.kernel.fanotify import FAN_OPEN_EXEC_PERM, FAN_OPEN_PERM
from agent.native import fanfilter
from agent.native.fanfilter import Filter, FilterSpec, own_mount_ns
from agent.policy.compile import compile_policy_set, path_patterns
from agent.policy.evaluate import Evaluator, IdScreen
from agent.policy.source import load_policy_set

lib = fanfilter._library()
pytestmark = pytest.mark.skipif(lib is None, reason="native core not built (make native)")
FAN_ONDIR = 0x40000000


def _filter(spec: FilterSpec) -> Filter:
    assert lib is not None
    return Filter(lib, spec)


def _dir(path: Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return str(path), st.st_dev, st.st_ino


@pytest.fixture
def opened() -> Iterator[list[int]]:
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def _open(fds: list[int], path: Path, flags: int = os.O_RDONLY) -> int:
    fd = os.open(path, flags)
    fds.append(fd)
    return fd


def test_only_a_file_no_rule_names_directly_in_a_marked_directory_is_answered(
    tmp_path: Path, opened: list[int]
) -> None:
    marked = tmp_path / "etc"
    other = tmp_path / "other"
    marked.mkdir()
    other.mkdir()
    for name in ("ld.so.cache", "sudoers", "sudoers-x", "shadow", "hosts"):
        (marked / name).write_text(name)
    (other / "file").write_text("x")
    os.link(marked / "shadow", marked / "shadow-link")  # another name of an exact rule's file
    shadow = os.stat(marked / "shadow")
    spec = FilterSpec(
        own_mount_ns(),
        (_dir(marked),),
        ((f"{marked}/sudoers".encode(), False), (f"{marked}/shadow".encode(), True)),
        frozenset({(shadow.st_dev, shadow.st_ino)}),
    )
    tid = threading.get_native_id()
    f = _filter(spec)
    try:

        def allows(path: Path, mask: int = FAN_OPEN_PERM, flags: int = os.O_RDONLY) -> bool:
            return f.allows(_open(opened, path, flags), tid, mask)

        assert allows(marked / "ld.so.cache")
        assert allows(marked / "hosts", FAN_OPEN_EXEC_PERM)
        assert allows(marked / "hosts", FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM)
        assert not allows(marked / "sudoers")  # prefix entry
        assert not allows(marked / "sudoers-x")  # prefix entry
        assert not allows(marked / "shadow")  # exact entry
        assert not allows(marked / "shadow-link")  # by identity, under another name
        os.link(marked / "hosts", other / "hosts-link")  # a second name no identity knows yet
        assert not allows(marked / "hosts")  # may be an exact rule's name: Python looks
        (other / "hosts-link").unlink()
        assert not allows(other / "file")  # not a marked directory
        assert not allows(marked / "hosts", FAN_OPEN_PERM | FAN_ONDIR)  # not only perm bits
        assert not allows(marked / "hosts", 0)
        assert not allows(marked, flags=os.O_RDONLY | os.O_DIRECTORY)  # not a regular file
        fd = _open(opened, marked / "hosts")
        (marked / "hosts").unlink()  # " (deleted)": no name to judge by
        assert not f.allows(fd, tid, FAN_OPEN_PERM)
    finally:
        f.close()


def test_a_directory_replaced_or_on_another_device_is_left_to_python(
    tmp_path: Path, opened: list[int]
) -> None:
    marked = tmp_path / "d"
    marked.mkdir()
    (marked / "f").write_text("x")
    path, dev, ino = _dir(marked)
    tid = threading.get_native_id()
    for spec_dir in ((path, dev + 1, ino), (path, dev, ino + 1)):
        f = _filter(FilterSpec(own_mount_ns(), (spec_dir,)))
        try:
            assert not f.allows(_open(opened, marked / "f"), tid, FAN_OPEN_PERM)
        finally:
            f.close()
    f = _filter(FilterSpec(own_mount_ns(), ((path, dev, ino),)))
    try:
        assert f.allows(_open(opened, marked / "f"), tid, FAN_OPEN_PERM)
        marked.rename(tmp_path / "moved")  # the name now leads elsewhere (nothing)
        marked.mkdir()
        (marked / "f").write_text("y")  # same name, another directory
        assert not f.allows(_open(opened, marked / "f"), tid, FAN_OPEN_PERM)
    finally:
        f.close()


def test_a_caller_in_another_mount_namespace_is_left_to_python(
    tmp_path: Path, opened: list[int]
) -> None:
    marked = tmp_path / "d"
    marked.mkdir()
    (marked / "f").write_text("x")
    f = _filter(FilterSpec(own_mount_ns(), (_dir(marked),)))
    child = subprocess.Popen(["unshare", "--mount", "sleep", "30"])
    try:
        deadline = 100
        while os.stat(f"/proc/{child.pid}/ns/mnt").st_ino == own_mount_ns()[1] and deadline:
            deadline -= 1
            threading.Event().wait(0.05)
        fd = _open(opened, marked / "f")
        assert f.allows(fd, threading.get_native_id(), FAN_OPEN_PERM)
        assert not f.allows(fd, child.pid, FAN_OPEN_PERM)
        assert not f.allows(fd, 2**22 + 7, FAN_OPEN_PERM)  # no such task
    finally:
        child.kill()
        child.wait()
        f.close()


NAMES = st.text(alphabet="abs.-_*", min_size=1, max_size=6)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rules=st.lists(
        st.tuples(st.sampled_from(["open", "exec"]), NAMES, st.sampled_from(["", "*", "/"])),
        min_size=1,
        max_size=6,
    ),
    files=st.lists(NAMES.filter(lambda n: "*" not in n), min_size=1, max_size=8, unique=True),
)
def test_what_the_filter_answers_no_rule_of_the_evaluator_targets(
    tmp_path_factory: pytest.TempPathFactory,
    rules: list[tuple[str, str, str]],
    files: list[str],
) -> None:
    """The direction that matters, over generated rule sets: every file the filter answers is
    one no open or exec entry of the compiled tables (the evaluator's lookup) names."""
    root = tmp_path_factory.mktemp("ff").resolve()
    body = ['name = "p"', 'mode = "enforce"']
    for n, (op, stem, suffix) in enumerate(rules):
        stem = stem.replace("*", "")
        if not stem:
            continue
        body += [
            "[[rules]]",
            f'id = "r{n}"',
            f'operation = "{op}"',
            f'targets.paths = ["{root}/{stem}{suffix}"]',
            'action = "deny"',
            'fallback = "audit"',
        ]
    policy = root / "p.toml"
    policy.write_text("\n".join(body) + "\n")
    policy_set, findings = load_policy_set([policy])
    if any(f.severity == "error" for f in findings):
        return
    compiled = compile_policy_set(policy_set)
    evaluator = Evaluator(compiled)
    spec = FilterSpec(
        own_mount_ns(), (_dir(root),), tuple(path_patterns(compiled, ("open", "exec")))
    )
    f = _filter(spec)
    tid = threading.get_native_id()
    try:
        for name in files:
            path = root / name
            if path.is_dir() or path == policy:
                continue
            path.write_text("x")
            fd = os.open(path, os.O_RDONLY)
            try:
                if f.allows(fd, tid, FAN_OPEN_PERM):
                    assert not evaluator.targets("open", str(path)), path
                    assert not evaluator.targets("exec", str(path)), path
                else:  # forwarded: only where an entry could match
                    assert evaluator.targets("open", str(path)) or evaluator.targets(
                        "exec", str(path)
                    ), path
            finally:
                os.close(fd)
    finally:
        f.close()


def _screens(write_dir: Path, body: str) -> dict[str, IdScreen]:
    policy = write_dir / "screen.toml"
    policy.write_text('name = "p"\nmode = "enforce"\n' + body)
    policy_set, findings = load_policy_set([policy])
    assert not findings, [str(x) for x in findings]
    evaluator = Evaluator(compile_policy_set(policy_set))
    return {op: evaluator.id_screen(op) for op in ("open", "exec")}


@pytest.mark.kernel  # root: the callers run as other users
def test_a_caller_whose_ids_no_rule_admits_is_answered_whatever_the_file(
    tmp_path: Path, opened: list[int]
) -> None:
    """The id screens (``Evaluator.id_screen``): a file no marked directory holds, judged only
    by who opens it. The caller is a process of another user; its ids are /proc's."""
    target = tmp_path / "bin"
    target.write_text("x")
    os.chmod(tmp_path, 0o755)
    www_only = _screens(
        tmp_path,
        '[[rules]]\nid = "sh"\noperation = "exec"\ntargets.paths = ["/bin/sh"]\n'
        'action = "deny"\n[rules.subjects]\nuid = [33]\n',
    )
    everyone_open = _screens(
        tmp_path,
        '[[rules]]\nid = "sh"\noperation = "exec"\ntargets.paths = ["/bin/sh"]\n'
        'action = "deny"\n[rules.subjects]\nuid = [33]\n'
        '[[rules]]\nid = "w"\noperation = "open"\ntargets.paths = ["/etc/shadow"]\n'
        'access = ["write"]\naction = "deny"\n',
    )
    callers = {uid: subprocess.Popen(["sleep", "30"], user=uid, group=uid) for uid in (65534, 33)}
    try:

        def allows(screens: dict[str, IdScreen], uid: int, mask: int) -> bool:
            f = _filter(FilterSpec(own_mount_ns(), screens=screens))
            try:
                return f.allows(_open(opened, target), callers[uid].pid, mask)
            finally:
                f.close()

        assert allows(www_only, 65534, FAN_OPEN_EXEC_PERM)
        assert allows(www_only, 65534, FAN_OPEN_PERM)  # no open rule; exec: not uid 33
        assert allows(www_only, 65534, FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM)
        assert not allows(www_only, 33, FAN_OPEN_EXEC_PERM)  # the rule's user: Python judges
        assert not allows(www_only, 33, FAN_OPEN_PERM)  # an open may be the loader's exec
        assert allows(everyone_open, 65534, FAN_OPEN_EXEC_PERM)
        assert not allows(everyone_open, 65534, FAN_OPEN_PERM)  # the open rule takes anyone
        assert not allows({"exec": www_only["exec"]}, 65534, FAN_OPEN_PERM)  # no open screen
        assert not allows({}, 65534, FAN_OPEN_EXEC_PERM)  # no screens: nothing proven
    finally:
        for proc in callers.values():
            proc.kill()
            proc.wait()
    gone = callers[65534].pid  # reaped: /proc has no such task, so nothing is proven
    assert not allows(www_only, 65534, FAN_OPEN_EXEC_PERM) or os.path.exists(f"/proc/{gone}")
