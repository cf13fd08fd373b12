"""Policy files on disk -> a PolicySet, and findings that name file, line, column and field.

Order matters (precedence ties are broken by file order): paths are read in the order given, a
directory's ``*.toml`` files by name (bytewise), not recursively.

Nothing in a policy directory may stop the agent: every file is read without blocking (a FIFO),
only if it is a regular file of at most :data:`MAX_FILE_BYTES` (a symlink to ``/dev/zero``), and
every problem becomes a :class:`PolicyProblem` (a finding) naming the file. File names are shown
with bytes that are not UTF-8 escaped (``\\xff``), as in events, so findings can always be
printed and sent as JSON. (The journal verifier's findings are ``agent.journal.verify.Finding``.)
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785

from agent.errors import PolicyFieldError, PolicyInvalid, UsageError
from agent.policy._toml import Document, FieldPath, TomlError, field_text, parse_document
from agent.policy.model import Policy, Rule

#: Version of the canonical form the digest covers; bump it if the form changes meaning.
CANONICAL_VERSION = 1
#: Largest policy file read. The shipped ones are a few KiB; 1,024 rules per operation in one
#: file take about 100 KiB.
MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class PolicyProblem:
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
    ) -> PolicyProblem:
        """A finding about this file; ``rule`` (index in the file) prefixes ``rules[i]``."""
        path: FieldPath = ("rules", rule, *field) if rule is not None else field
        rule_id = self.policy.rules[rule].id if rule is not None else None
        return located(
            self.document, severity, PolicyFieldError(path, message, at_key=at_key), rule_id
        )


def located(
    document: Document, severity: str, error: PolicyFieldError, rule_id: str | None = None
) -> PolicyProblem:
    position = document.position(error)
    if rule_id is None and len(error.field) >= 2 and error.field[0] == "rules":
        rules = document.data.get("rules")
        index = error.field[1]
        if isinstance(rules, list) and isinstance(index, int) and index < len(rules):
            raw_id = rules[index].get("id") if isinstance(rules[index], dict) else None
            rule_id = raw_id if isinstance(raw_id, str) else None
    return PolicyProblem(
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


def shown(path: Path | str) -> str:
    """A file name as text that can always be printed: bytes that are not UTF-8 as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def policy_files(paths: Sequence[Path]) -> list[Path]:
    """The files the paths name, in precedence order. A missing path is a usage error."""
    files: list[Path] = []
    for path in paths:
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
            names = os.listdir(path) if is_dir else []
        except FileNotFoundError:
            raise UsageError(f"{shown(path)}: no such file or directory") from None
        except OSError as exc:
            raise UsageError(f"{shown(path)}: {exc.strerror}") from None
        if is_dir:
            toml = sorted(os.fsencode(name) for name in names if name.endswith(".toml"))
            files.extend(path / os.fsdecode(name) for name in toml)
        else:
            files.append(path)
    return files


def parse_policy(document: Document) -> Policy:
    """The policy in one document, or PolicyInvalid with a located PolicyProblem per error."""
    try:
        return Policy.from_dict(document.data)
    except PolicyInvalid as exc:
        errors = [e for e in exc.findings if isinstance(e, PolicyFieldError)]
        raise PolicyInvalid([located(document, "error", e) for e in errors]) from None


def read_document(path: Path) -> Document:
    """Read and parse one TOML file; every problem becomes PolicyInvalid with one PolicyProblem."""
    name = shown(path)
    try:
        return parse_document(name, _read_regular(path))
    except TomlError as exc:
        line, column = (exc.position.line, exc.position.column) if exc.position else (None, None)
        field = field_text(exc.field) or None
        finding = PolicyProblem("error", name, line, column, None, field, exc.message)
    except _Unreadable as exc:
        finding = PolicyProblem("error", name, None, None, None, None, f"cannot read: {exc}")
    raise PolicyInvalid([finding])


class _Unreadable(Exception):
    pass


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES, else _Unreadable.

    O_NONBLOCK: opening a FIFO for reading would wait for a writer (and stop the agent's loop);
    with it the open returns at once and fstat refuses the FIFO. The read is bounded too: a
    file may grow after fstat.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                kind = _KINDS.get(stat.S_IFMT(mode), "special")
                raise _Unreadable(f"not a regular file ({kind})")
            with os.fdopen(fd, "rb", closefd=False) as file:
                data = file.read(MAX_FILE_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _Unreadable(exc.strerror or type(exc).__name__) from None
    if len(data) > MAX_FILE_BYTES:
        raise _Unreadable(f"larger than {MAX_FILE_BYTES} bytes, the limit for a policy file")
    return data


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def load_policy_set(paths: Sequence[Path]) -> tuple[PolicySet, list[PolicyProblem]]:
    """Every readable, valid policy under ``paths`` plus a finding for each file that is not.

    Files with errors are left out of the set; callers must not enforce a set with findings of
    severity error (``sealtrail policy check`` exits 1).
    """
    sources: list[PolicySource] = []
    findings: list[PolicyProblem] = []
    files = policy_files(paths)
    if not files:
        where = ", ".join(shown(p) for p in paths)
        findings.append(
            PolicyProblem("error", where, None, None, None, None, "no *.toml policy files")
        )
    for file in files:
        try:
            document = read_document(file)
            sources.append(PolicySource(document, parse_policy(document)))
        except PolicyInvalid as exc:
            findings.extend(f for f in exc.findings if isinstance(f, PolicyProblem))
    return PolicySet(tuple(sources)), findings
