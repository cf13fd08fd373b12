"""Errors of the collector, each with a message meant for a person (see ``agent.errors``)."""

from __future__ import annotations

from agent.errors import SealtrailError


class CollectorError(SealtrailError):
    """Base class of the collector's expected failures."""


class ConfigError(CollectorError):
    """``collector.toml`` or a command-line override cannot be used as written."""


class PkiError(CollectorError):
    """A certificate, key or request is missing, malformed, unsafe or does not fit."""


class StoreError(CollectorError):
    """The store cannot be opened, migrated or written as asked."""


class UnknownHost(StoreError):
    """No host of that name is enrolled."""


class EnrollmentConflict(StoreError):
    """Enrolling would rebind a host or a certificate that is already bound differently."""
