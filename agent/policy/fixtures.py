"""Policy tests: cases (process, operation, object) and the verdict each must get.

A fixture file (syntax in policies/README.md, "Testing policies")::

    policies = ["../files.toml"]        # optional; relative to this file

    [[case]]
    name = "vim cannot write /etc/shadow"
    process = { exe = "/usr/bin/vim.basic", uid = 0, gid = 0 }
    operation = "open"
    path = "/etc/shadow"
    access = ["write"]
    expect = "deny"                     # the effective verdict: allow, audit, deny, kill,
    rule = "shadow-no-write"            # would_deny, would_kill; omit rule when none may match

``expect`` is spelled as the journal spells a verdict's action; ``would-deny`` and
``would-kill``, the spelling fixture files had until 2026-12, are read as ``would_deny`` and
``would_kill`` so that those files keep passing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import PolicyFieldError, PolicyInvalid
from agent.policy._toml import Document
from agent.policy.evaluate import Effect, Evaluator, Process, Request, Verdict
from agent.policy.model import (
    ACCESS,
    OPERATIONS,
    optional,
    optional_list,
    optional_table,
    reject_unknown,
    required,
    within,
)
from agent.policy.source import PolicyProblem, located, read_document

EXPECTATIONS = tuple(Effect)
#: the monitor-mode spellings of fixture files written before one spelling was chosen
_EARLIER_SPELLING = {"would-deny": Effect.WOULD_DENY, "would-kill": Effect.WOULD_KILL}
_CASE_KEYS = (
    "name", "process", "operation", "path", "new_path", "access", "address", "port",
    "protocol", "fileless", "expect", "rule",
)  # fmt: skip
_PROCESS_KEYS = ("exe", "uid", "gid", "cgroup", "ancestors")


@dataclass(frozen=True)
class Case:
    name: str
    request: Request
    expect: Effect
    rule: str | None
    index: int  # position in the file, for locating mismatches


@dataclass(frozen=True)
class Fixtures:
    document: Document
    policies: tuple[Path, ...]  # resolved against the fixture file
    cases: tuple[Case, ...]


def _process(data: Mapping[str, Any]) -> Process:
    reject_unknown(data, _PROCESS_KEYS, "a process")
    return Process(
        exe=optional(data, "exe", str, "the acting binary's path"),
        uid=optional(data, "uid", int, "a number") or 0,
        gid=optional(data, "gid", int, "a number") or 0,
        cgroup=optional(data, "cgroup", str, "a cgroup path"),
        ancestors=optional_list(data, "ancestors", str, "paths") or (),
    )


def _case(data: Mapping[str, Any], index: int) -> Case:
    reject_unknown(data, _CASE_KEYS, "a case")
    operation = required(data, "operation", str, f"one of {', '.join(OPERATIONS)}")
    process = optional_table(data, "process")
    if process is None:
        raise PolicyFieldError(("process",), "process is required (a table)", at_key=True)
    with within("process"):
        actor = _process(process)
    try:
        request = Request(
            operation,
            actor,
            path=optional(data, "path", str, "a path"),
            new_path=optional(data, "new_path", str, "a path"),
            access=optional_list(data, "access", str, f"accesses ({', '.join(ACCESS)})") or (),
            address=optional(data, "address", str, "an address"),
            port=optional(data, "port", int, "a port number"),
            protocol=optional(data, "protocol", str, "tcp or udp"),
            fileless=optional(data, "fileless", bool, "true or false") or False,
        )
    except ValueError as exc:
        raise PolicyFieldError(("operation",), str(exc)) from None
    expect = required(data, "expect", str, f"one of {', '.join(EXPECTATIONS)}")
    expect = _EARLIER_SPELLING.get(expect, expect)
    if expect not in EXPECTATIONS:
        raise PolicyFieldError(("expect",), f"{expect!r}: use one of {', '.join(EXPECTATIONS)}")
    name = optional(data, "name", str, "text") or f"case {index}"
    return Case(name, request, Effect(expect), optional(data, "rule", str, "a rule id"), index)


def load_fixtures(path: Path) -> Fixtures:
    """Parse a fixture file; PolicyInvalid with a located PolicyProblem per bad case."""
    document = read_document(path)
    data = document.data
    errors: list[PolicyFieldError] = []
    cases: list[Case] = []
    policies: tuple[str, ...] = ()
    try:
        reject_unknown(data, ("policies", "case"), "a fixture file")
        policies = optional_list(data, "policies", str, "policy files or directories") or ()
    except PolicyFieldError as exc:
        errors.append(exc)
    raw_cases = data.get("case", [])
    for index, raw in enumerate(raw_cases if isinstance(raw_cases, list) else []):
        try:
            with within("case", index):
                cases.append(_case(raw if isinstance(raw, dict) else {}, index))
        except PolicyFieldError as exc:
            errors.append(exc)
    if not raw_cases:
        errors.append(PolicyFieldError(("case",), "no [[case]] tables: a fixture needs cases"))
    if errors:
        raise PolicyInvalid([located(document, "error", e) for e in errors])
    base = path.parent
    return Fixtures(document, tuple(base / p for p in policies), tuple(cases))


@dataclass(frozen=True)
class Outcome:
    case: Case
    verdict: Verdict
    finding: PolicyProblem | None  # set when the verdict is not the expected one

    @property
    def passed(self) -> bool:
        return self.finding is None


def _describe(effective: str, rule: str | None) -> str:
    return f"{effective} by rule {rule!r}" if rule else f"{effective} (no rule)"


def run_fixtures(fixtures: Fixtures, evaluator: Evaluator) -> list[Outcome]:
    outcomes = []
    for case in fixtures.cases:
        verdict = evaluator.decide(case.request)
        finding = None
        if (verdict.effective, verdict.rule_id) != (case.expect, case.rule):
            message = (
                f"{case.name!r}: expected {_describe(case.expect, case.rule)}, got "
                f"{_describe(verdict.effective, verdict.rule_id)}"
            )
            error = PolicyFieldError(("case", case.index, "expect"), message)
            finding = located(fixtures.document, "error", error)
        outcomes.append(Outcome(case, verdict, finding))
    return outcomes
