"""The witness's errors (one line each, naming the file or the setting)."""

from __future__ import annotations

from agent.errors import SealtrailError


class WitnessError(SealtrailError):
    """The witness's directory, configuration, key or state cannot be used as they are."""


class StateRollback(WitnessError):
    """The state is older than what this witness already cosigned: it must not cosign from it."""
