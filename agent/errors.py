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


class KeyStoreError(SealtrailError):
    """A signing key is missing, malformed, or would be overwritten."""


class FormatError(SealtrailError):
    """A record, checkpoint, proof or key file does not follow docs/journal-format.md."""
