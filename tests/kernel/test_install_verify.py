"""Kernel: after an install, what the kernel holds is compared with the plan, for real.

fanotify marks are read back from /proc/self/fdinfo, the guard's tables from its live maps and
its programs from the cgroup's attachments. Each test changes the kernel behind the agent's
back and expects the difference to be reported; and removing a mark the kernel no longer has
(the bug that stopped an install half way) is not an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.enforce.fanotify import FanotifyGuard, MarkTable
from agent.enforce.guard import Guard, cgroup2_root
from agent.enforce.marks import (
    FAN_EVENT_ON_CHILD,
    FAN_OPEN_PERM,
    MarkPlan,
    MarkRule,
    OsView,
    plan_marks,
)
from agent.policy.compile import compile_policy_set
from agent.policy.source import load_policy_set

pytestmark = pytest.mark.kernel


def test_a_mark_removed_behind_the_tables_back_is_reported(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    rules = [
        MarkRule(("p", "tree"), "open", (f"{tree}/",)),
        MarkRule(("p", "tool"), "exec", (str(tool),)),
    ]
    with FanotifyGuard(lambda req: True) as group:
        table = MarkTable(group)
        plan = plan_marks(rules, OsView())
        table.add(plan)
        assert table.verify(plan) == []
        fd = os.open(tree / "sub", os.O_PATH)
        try:
            group.mark_fd(fd, FAN_OPEN_PERM | FAN_EVENT_ON_CHILD, add=False)
        finally:
            os.close(fd)
        errors = table.verify(plan)
        assert len(errors) == 1 and "missing" in errors[0] and f"{tree}/sub" in errors[0], errors
        # dropping every rule copes with the mark the kernel no longer has, and leaves nothing
        assert table.prune(MarkPlan()) == []
        assert group.kernel_marks() == {}


def test_a_renamed_object_is_unmarked_through_its_file_handle(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    with FanotifyGuard(lambda req: True) as group:
        table = MarkTable(group)
        plan = plan_marks([MarkRule(("p", "t"), "open", (f"{tree}/",))], OsView())
        table.add(plan)
        tree.rename(tmp_path / "moved")  # the path no longer names the marked directory
        assert table.prune(MarkPlan()) == []
        assert group.kernel_marks() == {}, "a stale mark stayed on the renamed directory"


def test_an_extra_mark_is_reported(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    with FanotifyGuard(lambda req: True) as group:
        table = MarkTable(group)
        plan = plan_marks([], OsView())
        group.mark_dir(str(other))
        errors = table.verify(plan)
        assert len(errors) == 1 and "not in the plan" in errors[0], errors


@pytest.fixture
def guard(tmp_path: Path) -> Iterator[Guard]:
    cgroup = cgroup2_root() / f"sealtrail-verify-{os.getpid()}"
    cgroup.mkdir()
    try:
        g = Guard(cgroup)
        try:
            yield g
        finally:
            g.close()
    finally:
        cgroup.rmdir()


def test_a_guard_table_changed_behind_its_back_is_reported(guard: Guard, tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(
        'name = "v"\ndescription = "verify"\nmode = "enforce"\n'
        '[[rules]]\nid = "no-9"\ndescription = "d"\noperation = "connect"\n'
        'targets.ports = [9]\naction = "deny"\n'
    )
    policy_set, findings = load_policy_set([policy])
    assert not findings
    compiled = compile_policy_set(policy_set)
    guard.install(compiled)
    assert guard.verify(compiled) == []
    ports = guard.live_table("ports")
    key = next(iter(ports.items()))
    ports.delete(key)
    errors = guard.verify(compiled)
    assert any("st_pol_ports" in e for e in errors), errors
    guard.install(compiled)
    assert guard.verify(compiled) == []


def test_a_mark_the_kernel_dropped_with_its_file_is_placed_on_the_new_one(tmp_path: Path) -> None:
    """A marked file deleted is evicted with its mark; its inode number may be the next
    file's: the table must not believe that number still marked."""
    target = tmp_path / "f"
    rules = [MarkRule(("p", "f"), "open", (str(target),))]
    with FanotifyGuard(lambda req: True) as group:
        table = MarkTable(group)
        for round_ in range(20):
            target.write_text(str(round_))
            plan = plan_marks(rules, OsView())
            table.add(plan)
            table.prune(plan)
            assert table.verify(plan) == [], round_
            target.unlink()
            os.sync()
