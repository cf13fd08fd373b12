"""The agent's policy load: read, check and install the policy directory as one transaction.

``load_policies`` never raises: whatever the directory holds, it returns a ``LoadResult`` that
says what is in force afterwards. The daemon journals it (``LoadResult.record``), logs it and
writes it to status.json (``LoadResult.status``); a rejected set leaves the old one whole.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.enforce.enforcer import InstallResult
from agent.errors import PolicyError, SealtrailError
from agent.journal.canonical import JsonValue
from agent.policy.check import check
from agent.policy.compile import CompiledPolicySet
from agent.policy.mechanisms import HostCapabilities
from agent.policy.source import PolicySet
from agent.recorder import text_safe

log = logging.getLogger(__name__)

_RECORD_TYPES = {
    "loaded": "policy_loaded",
    "rejected": "policy_rejected",
    "mismatch": "policy_mismatch",
}


class Installer(Protocol):
    """What a load installs into: ``agent.enforce.enforcer.Enforcer``."""

    @property
    def digest(self) -> str | None: ...

    def install(
        self, policy_set: PolicySet, compiled: CompiledPolicySet | None = None
    ) -> InstallResult: ...


@dataclass(frozen=True)
class LoadResult:
    """The outcome of one policy load: ``loaded``; ``rejected`` (``digest``: the set still in
    force); or ``mismatch`` (``digest`` is in force, but the kernel does not hold all of it)."""

    result: str
    digest: str | None
    files: tuple[str, ...]
    errors: tuple[str, ...]
    #: places a rule needs that the host's mechanism cannot hold (``InstallResult.not_marked``)
    not_marked: tuple[str, ...] = ()

    def status(self) -> dict[str, JsonValue]:
        if self.result == "rejected":
            return {"result": "rejected", "errors": list(self.errors), "kept": self.digest}
        out: dict[str, JsonValue] = {"result": self.result, "digest": self.digest,
                                     "files": list(self.files)}  # fmt: skip
        if self.errors:
            out["errors"] = list(self.errors)
        if self.not_marked:
            out["not_marked"] = list(self.not_marked)
        return out

    @property
    def record_type(self) -> str:
        """The type of this load's journal record."""
        return _RECORD_TYPES[self.result]

    def record(self, trigger: str) -> tuple[str, dict[str, JsonValue]]:
        """The journal record of this load (type, fields)."""
        fields: dict[str, JsonValue]
        if self.result == "rejected":
            fields = {"errors": list(self.errors), "kept": self.digest}
        elif self.result == "mismatch":
            fields = {"digest": self.digest, "files": list(self.files),
                      "errors": list(self.errors)}  # fmt: skip
        else:
            fields = {"digest": self.digest, "files": list(self.files)}
        if self.not_marked:
            fields["not_marked"] = list(self.not_marked)
        return self.record_type, text_safe({**fields, "trigger": trigger})

    def log(self, trigger: str) -> None:
        """Log it; in the systemd journal with the fields ``SEALTRAIL_EVENT`` (the record type)
        and ``SEALTRAIL_POLICY`` (the digest in force; ``agent.logsetup``)."""
        fields = {"SEALTRAIL_EVENT": self.record_type}
        if self.digest is not None:  # None: rejected at start, nothing in force
            fields["SEALTRAIL_POLICY"] = self.digest
        if self.result == "rejected":
            for line in self.errors:
                log.error("policy rejected: %s", line, extra=fields)
        elif self.result == "mismatch":
            for line in self.errors:
                log.error(
                    "policy %s installed, but the kernel differs: %s",
                    self.digest,
                    line,
                    extra=fields,
                )
        else:
            log.info(
                "policy %s loaded (%d files, %s)",
                self.digest,
                len(self.files),
                trigger,
                extra=fields,
            )


def _has_policy_files(directory: Path) -> bool:
    """Whether ``directory`` holds ``*.toml`` files; False only if it does not exist. One that
    cannot be read is an error (never "no policies": that would start the agent unenforced)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise PolicyError(f"{directory}: cannot list the policy directory: {exc.strerror}") from exc
    return any(name.endswith(".toml") for name in names)


def load_policies(
    directory: Path, trigger: str, enforcer: Installer, caps: HostCapabilities
) -> LoadResult:
    """Read, check and install ``directory`` into ``enforcer``; never raises for any input.

    A directory without policy files means observing and recording only at start; on a
    reload it is rejected (an emptied directory must not switch enforcement off unseen).
    """
    kept = enforcer.digest
    try:
        if _has_policy_files(directory):
            report = check([directory], caps)
            policy_set, compiled = report.policy_set, report.compiled
            errors = [str(f) for f in report.findings if f.severity == "error"]
            if errors:
                return LoadResult("rejected", kept, (), tuple(errors))
        elif trigger == "start":
            log.info("%s: no policies; observing and recording only", directory)
            policy_set, compiled = PolicySet(()), None
        else:
            error = (
                f"{directory}: no *.toml policy files; the policy in force stays (to run "
                "without policies, restart the agent with an empty directory)"
            )
            return LoadResult("rejected", kept, (), (error,))
        files = tuple(s.document.file for s in policy_set.sources)
        installed = enforcer.install(policy_set, compiled)
    except SealtrailError as exc:
        return LoadResult("rejected", kept, (), tuple(str(exc).splitlines() or [repr(exc)]))
    except Exception as exc:  # a bug must not stop the agent: the old set stays in force
        log.exception("policy load failed")
        return LoadResult("rejected", kept, (), (f"{type(exc).__name__}: {exc}",))
    digest = enforcer.digest
    if installed.errors:
        return LoadResult("mismatch", digest, files, installed.errors, installed.not_marked)
    return LoadResult("loaded", digest, files, (), installed.not_marked)
