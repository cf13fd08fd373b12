"""Helpers: write policy text to files, compile it, judge requests."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.policy.compile import CompiledPolicySet, compile_policy_set
from agent.policy.evaluate import Evaluator, Process, Request
from agent.policy.source import load_policy_set

REPO = Path(__file__).resolve().parents[3]
POLICIES = REPO / "policies"

Write = Callable[..., Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    """write(text, name="p.toml") -> the file, dedented."""

    def _write(text: str, name: str = "p.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return _write


def compiled_from(*paths: Path) -> CompiledPolicySet:
    policy_set, findings = load_policy_set(list(paths))
    assert not findings, [str(f) for f in findings]
    return compile_policy_set(policy_set)


def judge(
    compiled: CompiledPolicySet,
    operation: str,
    *,
    exe: str | None = "/usr/bin/x",
    uid: int = 0,
    gid: int = 0,
    cgroup: str | None = None,
    ancestors: tuple[str, ...] = (),
    **obj: object,
) -> tuple[str, str | None]:
    """(effective verdict, rule id) for one request."""
    process = Process(exe, uid, gid, cgroup, ancestors)
    verdict = Evaluator(compiled).decide(Request(operation, process, **obj))
    return verdict.effective, verdict.rule_id
