"""Policy files on disk -> a PolicySet, and findings that name file, line, column and field.

Order matters (precedence ties are broken by file order): paths are read in the order given, a
directory's ``*.toml`` files by name (bytewise), not recursively.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785

from agent.errors import PolicyFieldError, PolicyInvalid, UsageError
from agent.policy._toml import Document, FieldPath, TomlSyntaxError, field_text, load_document
from agent.policy.model import Policy, Rule

#: Version of the canonical form the digest covers; bump it if the form changes meaning.
CANONICAL_VERSION = 1


@dataclass(frozen=True)
class Finding:
    """One problem: where it is, which rule and field, what is wrong and what is allowed."""

    severity: str  # "error" | "warning"
    file: str
    line: int | None
    column: int | None
    rule_id: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.file, self.line, self.column) if p is not None)
        what = " ".join(
            part
            for part in (
                self.field,
                f"(rule {self.rule_id!r})" if self.rule_id else None,
            )
            if part
        )
        return f"{where}: {self.severity}: " + (f"{what}: " if what else "") + self.message

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "rule": self.rule_id,
            "field": self.field,
            "message": self.message,
        }


@dataclass(frozen=True)
class PolicySource:
    """A policy and the document it came from (for positions in later findings)."""

    document: Document
    policy: Policy

    def finding(
        self,
        severity: str,
        message: str,
        field: FieldPath = (),
        *,
        rule: int | None = None,
        at_key: bool = False,
    ) -> Finding:
        """A finding about this file; ``rule`` (index in the file) prefixes ``rules[i]``."""
        path: FieldPath = ("rules", rule, *field) if rule is not None else field
        rule_id = self.policy.rules[rule].id if rule is not None else None
        return located(
            self.document, severity, PolicyFieldError(path, message, at_key=at_key), rule_id
        )


def located(
    document: Document, severity: str, error: PolicyFieldError, rule_id: str | None = None
) -> Finding:
    position = document.position(error)
    if rule_id is None and len(error.field) >= 2 and error.field[0] == "rules":
        rules = document.data.get("rules")
        index = error.field[1]
        if isinstance(rules, list) and isinstance(index, int) and index < len(rules):
            raw_id = rules[index].get("id") if isinstance(rules[index], dict) else None
            rule_id = raw_id if isinstance(raw_id, str) else None
    return Finding(
        severity,
        document.file,
        position.line if position else None,
        position.column if position else None,
        rule_id,
        field_text(error.field) or None,
        error.message,
    )


@dataclass(frozen=True)
class PolicySet:
    """The policies in force together, in precedence (file) order."""

    sources: tuple[PolicySource, ...]

    @property
    def policies(self) -> tuple[Policy, ...]:
        return tuple(source.policy for source in self.sources)

    def rules(self) -> Iterator[tuple[PolicySource, int, Rule]]:
        """(source, index in its file, rule), in file order: the rule number order."""
        for source in self.sources:
            for index, rule in enumerate(source.policy.rules):
                yield source, index, rule

    def canonical_bytes(self) -> bytes:
        """RFC 8785 JSON of the set: key order, whitespace and comments of the TOML do not
        count; policy and rule order do (they decide precedence ties)."""
        return rfc8785.dumps(
            {
                "canonical_version": CANONICAL_VERSION,
                "policies": [p.to_dict() for p in self.policies],
            }
        )

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical_bytes()).hexdigest()


def policy_files(paths: Sequence[Path]) -> list[Path]:
    """The files the paths name, in precedence order. A missing path is a usage error."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.toml"), key=lambda p: p.name.encode()))
        elif path.exists():
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or directory")
    return files


def parse_document(document: Document) -> Policy:
    """The policy in one document, or PolicyInvalid with a located Finding per error."""
    try:
        return Policy.from_dict(document.data)
    except PolicyInvalid as exc:
        errors = [e for e in exc.findings if isinstance(e, PolicyFieldError)]
        raise PolicyInvalid([located(document, "error", e) for e in errors]) from None


def read_document(path: Path) -> Document:
    """Parse one TOML file; syntax and read errors become PolicyInvalid with a Finding."""
    try:
        return load_document(path)
    except TomlSyntaxError as exc:
        line, column = (exc.position.line, exc.position.column) if exc.position else (None, None)
        finding = Finding("error", str(path), line, column, None, None, f"TOML: {exc.message}")
    except OSError as exc:
        finding = Finding("error", str(path), None, None, None, None, f"cannot read: {exc}")
    raise PolicyInvalid([finding])


def load_policy_set(paths: Sequence[Path]) -> tuple[PolicySet, list[Finding]]:
    """Every readable, valid policy under ``paths`` plus a finding for each file that is not.

    Files with errors are left out of the set; callers must not enforce a set with findings of
    severity error (``sealtrail policy check`` exits 1).
    """
    sources: list[PolicySource] = []
    findings: list[Finding] = []
    files = policy_files(paths)
    if not files:
        shown = ", ".join(str(p) for p in paths)
        findings.append(Finding("error", shown, None, None, None, None, "no *.toml policy files"))
    for file in files:
        try:
            document = read_document(file)
            sources.append(PolicySource(document, parse_document(document)))
        except PolicyInvalid as exc:
            findings.extend(f for f in exc.findings if isinstance(f, Finding))
    return PolicySet(tuple(sources)), findings
