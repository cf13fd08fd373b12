"""The one error hierarchy of sealtrail.

Every error a user can cause or meet carries its own diagnostic text; the CLI turns these into
exit codes and messages in one place (``agent.cli.main``).
"""

from __future__ import annotations


class SealtrailError(Exception):
    """Base class: an expected failure with a message meant for a person."""

    exit_code = 1


class UsageError(SealtrailError):
    """The command line itself is wrong (exit 2, like argparse)."""

    exit_code = 2


class KernelError(SealtrailError):
    """Loading, attaching or talking to BPF programs failed."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class HostUnsupported(KernelError):
    """The running kernel cannot do what was asked (e.g. no BTF, LSM refused)."""


class JournalError(SealtrailError):
    """The journal cannot be opened, written or read as asked."""


class JournalCorrupt(JournalError):
    """The journal on disk is damaged beyond a torn tail; run ``sealtrail journal verify``."""


class ConfigError(SealtrailError):
    """The agent's configuration file (``agent.toml``) cannot be used as written."""


class KeyStoreError(SealtrailError):
    """A signing key is missing, malformed, or would be overwritten."""


class KeyPermissionError(KeyStoreError):
    """A key file or the keys directory is open to others than its owner, or another user's:
    the agent refuses to use it (fail closed)."""


class FormatError(SealtrailError):
    """A record, checkpoint, proof or key file does not follow docs/journal-format.md."""


class ForwardError(SealtrailError):
    """Forwarding the journal to the collector failed: the bundle, the connection, or an
    answer that does not follow the protocol."""


class PolicyError(SealtrailError):
    """A policy, a policy set or a fixture file cannot be used as written."""


class PolicyFieldError(PolicyError):
    """One field of a policy or fixture is wrong; ``field`` is its key path inside the file.

    ``at_key`` says whether the key itself is the problem (unknown key) or its value, so the
    location points at the right token.
    """

    def __init__(self, field: tuple[str | int, ...], message: str, *, at_key: bool = False) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.at_key = at_key

    def within(self, *prefix: str | int) -> PolicyFieldError:
        """The same error seen from an enclosing table."""
        return PolicyFieldError(prefix + self.field, self.message, at_key=self.at_key)


class PolicyInvalid(PolicyError):
    """One or more findings of severity error; ``findings`` holds them all, each printable."""

    def __init__(self, findings: list[object]) -> None:
        super().__init__("\n".join(str(f) for f in findings))
        self.findings = findings


class MechanismUnavailable(PolicyError):
    """A rule in enforce mode has no mechanism on this host and names no fallback."""
