"""A host's state as ``collector hosts`` shows it (docs/collector.md, "collector hosts").

The store keeps what ingest decided (``Status``: ok, gap, fork, tamper, rollback,
unenrolled-key). ``lagging`` and ``silent`` are not stored: they follow from the time of the
host's last accepted seal, the heartbeat and the clock when someone looks. The agent seals at
least once per heartbeat even when idle, so only seals count as signs of life: records without a
seal are not signed, and a host that keeps sending them but no seal is as good as silent.

With ``H`` = ``[heartbeat] seconds`` and ``N`` = ``[heartbeat] silent_after``, and the age =
now - the last seal (the host's enrollment if no seal was accepted yet):

- a stored status other than ok wins (it is the more serious news, and it stays until resolved);
- ``silent`` when the age is at least ``N * H``;
- ``lagging`` when the age is more than ``H`` (one seal is overdue) and less than ``N * H``;
- ``ok`` otherwise (including an age below 0: a host clock ahead of the collector's).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.collector.config import CollectorConfig
from agent.collector.errors import UnknownHost
from agent.collector.store import Head, Host, Status, Store

_NS = 1_000_000_000


class HostState(enum.StrEnum):
    """Every state ``collector hosts`` shows: the stored ``Status`` values and the two that
    follow from time."""

    OK = "ok"
    LAGGING = "lagging"
    SILENT = "silent"
    GAP = "gap"
    FORK = "fork"
    TAMPER = "tamper"
    ROLLBACK = "rollback"
    UNENROLLED_KEY = "unenrolled-key"


def host_state(
    head: Head, now_ns: int, config: CollectorConfig, *, enrolled_ns: int
) -> tuple[HostState, int | None]:
    """The host's state at ``now_ns`` and since when it holds, where that is known.

    ``since`` is the time of the last accepted seal for ``lagging`` and ``silent`` (the
    enrollment when there was none: the host has not sealed since then), None otherwise.
    """
    if head.status is not Status.OK:
        return HostState(head.status.value), None
    heartbeat = round(config.heartbeat_seconds * _NS)
    since = enrolled_ns if head.last_seal_ns is None else head.last_seal_ns
    age = now_ns - since
    if age >= config.silent_after * heartbeat:
        return HostState.SILENT, since
    if age > heartbeat:
        return HostState.LAGGING, since
    return HostState.OK, None


@dataclass(frozen=True)
class HostRow:
    """One line of ``collector hosts``."""

    host: Host
    head: Head
    state: HostState
    since_ns: int | None
    #: Seconds from the last seal to now (0 for a seal ahead of the collector's clock), None
    #: before the first seal.
    lag_seconds: float | None

    def to_dict(self) -> dict[str, object]:
        """As ``collector hosts --json`` prints it; times in ns as decimal strings, as in the
        journal (JSON numbers are not exact beyond 2**53)."""
        head = self.head
        return {
            "host": self.host.name,
            "size": head.size,
            "last_hash": None if head.last_hash is None else head.last_hash.hex(),
            "last_seal_ns": _ns(head.last_seal_ns),
            "last_receive_ns": _ns(head.last_receive_ns),
            "lag_seconds": self.lag_seconds,
            "state": str(self.state),
            "since_ns": _ns(self.since_ns),
            "status": str(head.status),
            "detail": head.detail,
            "enrolled_ns": _ns(self.host.enrolled_ns),
            "quarantine_dropped": head.quarantine_dropped,
        }


def survey(store: Store, config: CollectorConfig, now_ns: int) -> list[HostRow]:
    """Every enrolled host's row at ``now_ns``, by name."""
    rows = []
    for host in store.hosts():
        head = store.head(host.name)
        state, since = host_state(head, now_ns, config, enrolled_ns=host.enrolled_ns)
        lag = None if head.last_seal_ns is None else max(0, now_ns - head.last_seal_ns) / _NS
        rows.append(HostRow(host, head, state, since, lag))
    return rows


def enrolled_host(store: Store, name: str) -> Host:
    """The enrolled host of that name, or ``UnknownHost`` saying how to list them."""
    host = store.host(name)
    if host is None:
        raise UnknownHost(
            f"no host {name!r} is enrolled in this store (sealtrail collector hosts lists them)"
        )
    return host


def _ns(value: int | None) -> str | None:
    return None if value is None else str(value)
