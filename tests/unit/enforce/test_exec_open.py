"""When an allowed exec's own open may be answered by the native fanotify reader
(``agent.enforce.enforcer._own_open_is_allowed``): only for a binary an exact exec rule names,
and only where no open rule names the file by identity or by any name being judged; where it
holds, the evaluator itself allows that open (the request ``_decide_permission`` would make)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.enforce.enforcer import _own_open_is_allowed, _State
from agent.enforce.fanotify import PermissionRequest
from agent.enforce.process import Process
from agent.policy.compile import compile_policy_set
from agent.policy.evaluate import Evaluator, Request
from agent.policy.source import load_policy_set

EXEC_RULE = """
[[rules]]
id = "judged"
operation = "exec"
targets.paths = ["{binary}"]
action = "deny"
[rules.subjects.except]
exe = ["/usr/bin/make"]
"""
OPEN_RULE = """
[[rules]]
id = "open-{n}"
operation = "open"
access = ["write"]
targets.paths = ["{path}"]
action = "deny"
"""


@pytest.fixture
def binary(tmp_path: Path) -> Iterator[Path]:
    b = tmp_path / "bin" / "tool"
    b.parent.mkdir()
    b.write_bytes(b"\x7fELF")
    yield b


def state_for(tmp_path: Path, binary: Path, open_paths: list[str]) -> _State:
    text = 'name = "p"\nmode = "enforce"\n' + EXEC_RULE.format(binary=binary)
    text += "".join(OPEN_RULE.format(n=i, path=p) for i, p in enumerate(open_paths))
    policy = tmp_path / "p.toml"
    policy.write_text(text)
    policy_set, findings = load_policy_set([policy])
    assert not findings, [str(f) for f in findings]
    compiled = compile_policy_set(policy_set)
    st = os.stat(binary)
    identities = {(st.st_dev, st.st_ino, "exec"): str(binary)}
    for p in open_paths:
        if os.path.isfile(p):
            o = os.stat(p)
            identities[(o.st_dev, o.st_ino, "open")] = p
    return _State(
        compiled, Evaluator(compiled), {}, identities,
        exact_paths={"exec": (str(binary),), "open": tuple(p for p in open_paths if "*" not in p
                                                           and not p.endswith("/"))},
    )  # fmt: skip


def answer(state: _State, binary: Path, paths: list[str] | None = None) -> bool:
    fd = os.open(binary, os.O_RDONLY)
    try:
        req = PermissionRequest(tid=1, path=str(binary), is_exec=True, fd=fd, generation=0)
        st = os.fstat(fd)
        return _own_open_is_allowed(state, req, st, str(binary), paths or [str(binary)])
    finally:
        os.close(fd)


def test_no_open_rule_names_the_binary_and_the_evaluator_allows_its_open(
    tmp_path: Path, binary: Path
) -> None:
    state = state_for(tmp_path, binary, [str(tmp_path / "elsewhere")])
    assert answer(state, binary)
    # what _decide_permission would ask for that open: every access (no flags in an exec)
    every = ("read", "write", "create", "truncate")
    process = Process(exe="/usr/bin/make", uid=0, gid=0)
    for path in (str(binary),):
        verdict = state.evaluator.decide(Request("open", process, path=path, access=every))
        assert not verdict.effective.stops


@pytest.mark.parametrize("how", ["exact", "prefix", "tree"])
def test_an_open_rule_naming_the_binary_leaves_its_open_to_python(
    tmp_path: Path, binary: Path, how: str
) -> None:
    path = {"exact": str(binary), "prefix": str(binary.parent / "to*"),
            "tree": str(binary.parent) + "/"}[how]  # fmt: skip
    state = state_for(tmp_path, binary, [path])
    assert not answer(state, binary)


def test_an_open_rule_naming_another_name_of_the_binary_leaves_it_to_python(
    tmp_path: Path, binary: Path
) -> None:
    """The names judged include the file's names through other mounts (``paths``): an open
    rule on one of them counts, and so does a hard link an exact open rule names."""
    alias = tmp_path / "mnt" / "tool"
    state = state_for(tmp_path, binary, [str(alias)])
    assert answer(state, binary)  # the control: that rule names nothing here
    assert not answer(state, binary, [str(binary), str(alias)])
    link = tmp_path / "linked"
    os.link(binary, link)
    assert not answer(state_for(tmp_path, binary, [str(link)]), binary)


def test_only_for_a_binary_an_exact_exec_rule_names(tmp_path: Path, binary: Path) -> None:
    """Its inode mark asks FAN_OPEN_PERM too, so that open is the thread's next question;
    a binary judged by another exec rule's mark (or not the identity the plan holds) is not
    registered."""
    state = state_for(tmp_path, binary, [])
    fd = os.open(binary, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        req = PermissionRequest(tid=1, path=str(binary), is_exec=True, fd=fd, generation=0)
        assert _own_open_is_allowed(state, req, st, str(binary), [str(binary)])
        assert not _own_open_is_allowed(state, req, st, None, [str(binary)])
        assert not _own_open_is_allowed(state, req, None, str(binary), [str(binary)])
        state.identities.clear()
        assert not _own_open_is_allowed(state, req, st, str(binary), [str(binary)])
    finally:
        os.close(fd)
