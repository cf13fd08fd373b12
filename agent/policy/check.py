"""Validate a policy set as a whole: what a person should fix before it is enforced.

Single files are already checked by the model (types, values, unknown keys). Here: duplicate
rule ids and policy names across files, rules that can never match, rules shadowed by one that
ranks before them (same operation, that rule matches every event they match), and — with a host
capability set — rules that no mechanism can enforce on that host. Coverage tests are
conservative: a reported shadow is certain, an unreported one is not proof of reachability.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import PolicyInvalid
from agent.policy.compile import (
    MAX_RULES,
    CompiledPolicySet,
    compile_policy_set,
    port_entries,
    port_lookup,
    precedence_class,
    prefix_bits,
)
from agent.policy.mechanisms import Enforcement, HostCapabilities, plan
from agent.policy.model import Rule, Subject, Target, parse_address, parse_path, parse_port
from agent.policy.source import PolicyProblem, PolicySet, PolicySource, load_policy_set

T = TypeVar("T")


@dataclass(frozen=True)
class Report:
    policy_set: PolicySet
    findings: tuple[PolicyProblem, ...]
    compiled: CompiledPolicySet | None  # None when there are errors
    enforcement: tuple[Enforcement, ...] | None  # with a host only

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "digest": self.compiled.digest if self.compiled else None,
            "files": [s.document.file for s in self.policy_set.sources],
            "rules": sum(len(p.rules) for p in self.policy_set.policies),
            "findings": [f.to_dict() for f in self.findings],
            "enforcement": [e.to_dict() for e in self.enforcement]
            if self.enforcement is not None
            else None,
        }


def check(paths: Sequence[Path], host: HostCapabilities | None = None) -> Report:
    """Load, validate and compile the policies under ``paths``; never raises on bad policy."""
    policy_set, findings = load_policy_set(paths)
    findings.extend(check_set(policy_set))
    compiled = enforcement = None
    try:  # also with other errors: a table limit is worth knowing at once
        compiled = compile_policy_set(policy_set)
    except PolicyInvalid as exc:
        findings.extend(f for f in exc.findings if isinstance(f, PolicyProblem))
    if any(f.severity == "error" for f in findings):
        compiled = None
    if compiled is not None and host is not None:
        enforcement = plan(compiled, host)
        for item in enforcement:
            if item.error:
                source = policy_set.sources[item.rule.policy_no]
                findings.append(
                    source.finding("error", item.error, ("action",), rule=item.rule.rule_in_file)
                )
    order = {file: n for n, file in enumerate(dict.fromkeys(f.file for f in findings))}
    findings.sort(key=lambda f: (order[f.file], f.line or 0, f.column or 0))
    return Report(policy_set, tuple(findings), compiled, enforcement)


def check_set(policy_set: PolicySet) -> list[PolicyProblem]:
    findings = _duplicates(policy_set)
    by_operation: dict[str, list[tuple[int, int, PolicySource, int, Rule]]] = defaultdict(list)
    for number, (source, index, rule) in enumerate(policy_set.rules()):
        findings.extend(_never_matches(source, index, rule))
        rank = precedence_class(source.policy.mode, rule.action)
        by_operation[rule.operation].append((rank, number, source, index, rule))
    for ranked in by_operation.values():
        # over the kernel's limit the set is refused anyway (the compiler says so): analysing
        # thousands of rules pairwise would only make that answer slow
        if len(ranked) <= MAX_RULES:
            findings.extend(_shadowed(sorted(ranked, key=lambda r: r[:2])))
    return findings


def _where(source: PolicySource, field: tuple[str | int, ...]) -> str:
    position = source.document.locator.locate(field)
    line = f":{position.line}" if position else ""
    return f"{source.document.file}{line}"


def _duplicates(policy_set: PolicySet) -> list[PolicyProblem]:
    findings = []
    names: dict[str, PolicySource] = {}
    ids: dict[str, tuple[PolicySource, int]] = {}
    for source in policy_set.sources:
        first = names.setdefault(source.policy.name, source)
        if first is not source:
            message = (
                f"policy name {source.policy.name!r} is already used in {_where(first, ('name',))}"
                ": policy names must be unique in the set (verdicts name them)"
            )
            findings.append(source.finding("error", message, ("name",)))
    for source, index, rule in policy_set.rules():
        seen_source, seen_index = ids.setdefault(rule.id, (source, index))
        if (seen_source, seen_index) != (source, index):
            message = (
                f"rule id {rule.id!r} is already used in "
                f"{_where(seen_source, ('rules', seen_index, 'id'))}: rule ids must be unique "
                "across the policy set (verdicts and the journal name rules by id)"
            )
            findings.append(source.finding("error", message, ("id",), rule=index))
    return findings


def _never_matches(source: PolicySource, index: int, rule: Rule) -> list[PolicyProblem]:
    findings = []
    subject = rule.subjects
    if subject and subject.except_ and subject.selects and _selects(subject.except_, subject):
        message = (
            "can never match: except leaves out every process the subjects name; narrow the "
            "except or remove the rule"
        )
        findings.append(source.finding("error", message, ("subjects", "except"), rule=index))
    if rule.targets.protocol == "udp" and rule.operation in ("listen", "accept"):
        message = f'can never match: {rule.operation} is TCP only; use protocol = "tcp" or omit it'
        findings.append(source.finding("error", message, ("targets", "protocol"), rule=index))
    return findings


def _shadowed(ranked: list[tuple[int, int, PolicySource, int, Rule]]) -> list[PolicyProblem]:
    """Rule B is shadowed by A if A ranks first (same key as the compiler) and covers B.

    ``ranked``: one operation's rules in precedence order. B is compared only with the earlier
    rules that can cover the one value of B that the fewest can cover (see :func:`_filed`), so
    the cost grows with how much the rules overlap, not with the square of their number.
    """
    findings = []
    earlier: dict[_Key, list[int]] = defaultdict(list)
    for position, (_, _, source, index, rule) in enumerate(ranked):
        filed = _filed(rule)
        found = [
            [earlier[k] for k in probes if k in earlier] for _, each in filed for probes in each
        ]
        fewest = min(found, key=lambda lists: sum(map(len, lists)))
        for candidate in sorted({n for numbers in fewest for n in numbers}):
            _, _, first_source, first_index, first = ranked[candidate]
            if not _covers(first, rule):
                continue
            where = _where(first_source, ("rules", first_index, "id"))
            same = (first.action, first_source.policy.mode) == (rule.action, source.policy.mode)
            if same:
                message = f"redundant: rule {first.id!r} ({where}) matches every event this rule "
                message += "matches, with the same action and mode"
            else:
                message = (
                    f"shadowed by rule {first.id!r} ({where}): it matches every event this rule "
                    f"matches and wins by precedence ({first.action} before {rule.action}: allow, "
                    "kill, deny, then monitor mode, then audit), so this rule never applies"
                )
            severity = "warning" if same else "error"
            findings.append(source.finding(severity, message, ("id",), rule=index))
            break
        for keys, _ in filed:
            for key in keys:
                earlier[key].append(position)
    return findings


_Key = tuple[object, ...]


def _filed(rule: Rule) -> list[tuple[set[_Key], list[set[_Key]]]]:
    """Per field that coverage needs: (keys, probes per value). ``keys`` file the rule as a
    possible coverer; each set of probes holds the keys under which every rule that covers one
    value of it is filed (a rule covers B only if, in each field, it covers each of B's values,
    or it leaves the field out). A necessary condition only: :func:`_covers` decides."""
    target, who = rule.targets, rule.subjects
    return [
        _field("paths", target.paths, _path_keys, _path_probes),
        _field("fileless", (True,) if target.fileless else None, _id_keys, _id_keys),
        _field("addresses", target.addresses, _address_keys, _address_probes),
        _field("ports", target.ports, _port_keys, _port_probes),
        _field("exe", who.exe if who else None, _path_keys, _path_probes),
        _field("uid", who.uid if who else None, _id_keys, _id_keys),
        _field("gid", who.gid if who else None, _id_keys, _id_keys),
        _field("cgroup", who.cgroup if who else None, _path_keys, _path_probes),
    ]


def _field(
    name: str,
    values: tuple[T, ...] | None,
    keys: Callable[[T], list[_Key]],
    probes: Callable[[T], list[_Key]],
) -> tuple[set[_Key], list[set[_Key]]]:
    if values is None:  # matches any value: covers every rule in this field
        return {(name,)}, [{(name,)}]
    filed = {(name, *key) for value in values for key in keys(value)}
    # any value of B will do; a few bound the cost of a rule listing hundreds of paths
    probed = values[:_PROBED_VALUES]
    return filed, [{(name,)} | {(name, *key) for key in probes(value)} for value in probed]


_PROBED_VALUES = 4


def _path_keys(pattern: str) -> list[_Key]:
    return [_parsed_path(pattern)]


def _path_probes(pattern: str) -> list[_Key]:
    """The patterns that cover ``pattern``: every prefix of it, and itself if exact."""
    data, is_prefix = _parsed_path(pattern)
    covering: list[_Key] = [(data[:n], True) for n in range(len(data) + 1)]
    return covering if is_prefix else [*covering, (data, False)]


def _address_keys(cidr: str) -> list[_Key]:
    address, length = parse_address(cidr)
    return [(length, prefix_bits(length, address, 16))]


def _address_probes(cidr: str) -> list[_Key]:
    address, length = parse_address(cidr)
    return [(n, prefix_bits(n, address, 16)) for n in range(length + 1)]


def _port_keys(value: int | str) -> list[_Key]:
    return [(length, prefix_bits(length, data, 4)) for length, data in port_entries(0, value)]


def _port_probes(value: int | str) -> list[_Key]:
    """The aligned blocks holding the lowest port of ``value``: a coverer has one of them."""
    data = port_lookup(0, parse_port(value)[0])[1]
    return [(length, prefix_bits(length, data, 4)) for length in range(16, 33)]


def _id_keys(value: int) -> list[_Key]:
    return [(value,)]


# ---- coverage: does A match everything B matches? ----


def _covers(a: Rule, b: Rule) -> bool:
    return (
        set(b.access_set) <= set(a.access_set)
        and _target_covers(a.targets, b.targets)
        and _subject_covers(a.subjects, b.subjects)
    )


def _all_covered(
    a: tuple[T, ...] | None, b: tuple[T, ...] | None, covers: Callable[[T, T], bool]
) -> bool:
    if a is None:
        return True
    if b is None:
        return False
    return all(any(covers(x, y) for x in a) for y in b)


_parsed_path = functools.lru_cache(maxsize=65536)(parse_path)


def _path_covers(a: str, b: str) -> bool:
    a_bytes, a_prefix = _parsed_path(a)
    b_bytes, b_prefix = _parsed_path(b)
    return b_bytes.startswith(a_bytes) if a_prefix else (not b_prefix and a_bytes == b_bytes)


@functools.lru_cache(maxsize=65536)
def _address_covers(a: str, b: str) -> bool:
    (a_addr, a_len), (b_addr, b_len) = parse_address(a), parse_address(b)
    return a_len <= b_len and prefix_bits(a_len, a_addr, 16) == prefix_bits(a_len, b_addr, 16)


def _ports_cover(a: tuple[int | str, ...] | None, b: tuple[int | str, ...] | None) -> bool:
    if a is None:
        return True
    if b is None:
        return False
    merged: list[list[int]] = []
    for low, high in sorted(parse_port(p) for p in a):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    ranges = [parse_port(p) for p in b]
    return all(any(m[0] <= low and high <= m[1] for m in merged) for low, high in ranges)


def _target_covers(a: Target, b: Target) -> bool:
    return (
        _all_covered(a.paths, b.paths, _path_covers)
        and (b.fileless or not a.fileless)  # fileless matches no path: it covers only itself
        and _all_covered(a.addresses, b.addresses, _address_covers)
        and _ports_cover(a.ports, b.ports)
        and (a.protocol is None or a.protocol == b.protocol)
    )


def _selects(a: Subject, b: Subject) -> bool:
    """Do a's own fields (not its except) select every process b's own fields select?"""
    if a.exe is not None and b.inherits and not a.inherits:
        return False  # b also reaches descendants a does not
    return (
        _all_covered(a.exe, b.exe, _path_covers)
        and _all_covered(a.uid, b.uid, int.__eq__)
        and _all_covered(a.gid, b.gid, int.__eq__)
        and _all_covered(a.cgroup, b.cgroup, _path_covers)
    )


def _subject_covers(a: Subject | None, b: Subject | None) -> bool:
    if a is not None and a.selects and (b is None or not b.selects or not _selects(a, b)):
        return False
    if a is None or a.except_ is None:
        return True
    # a leaves some processes out: b must leave out at least those
    return b is not None and b.except_ is not None and _selects(b.except_, a.except_)
