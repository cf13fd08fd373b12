"""``sealtrail agent --metrics HOST:PORT``: the agent's Prometheus endpoint (docs/metrics.md).

Off by default. A custom collector (``AgentCollector``) reads, at scrape time, what the agent
keeps anyway: the recorder's counters (``RecordCounters``: a dict increment per event, on the
native path a batch scan only while metrics are on), what the service loop notes once per turn
(``LoopStats``: the last seal, the key, the policy load) and the forwarder's status. Nothing is
computed on the event path for a scrape, and a scrape takes no lock the event path holds.
prometheus_client's own HTTP server serves it on a daemon thread.

Addresses: loopback unless asked otherwise. A non-loopback address is refused unless
``metrics_remote = true`` (``--metrics-remote``) says it is meant: the endpoint has no
authentication, and what it shows (rule names, the policy digest, the event rate) tells an
attacker on the network what is watched.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from agent.errors import SealtrailError, UsageError
from agent.journal import JournalWriter
from agent.journaldown import Journal
from agent.recorder import RecordCounters

DEFAULT_PORT = 9464
PREFIX = "sealtrail"


@dataclass(frozen=True)
class MetricsAddress:
    """Where the endpoint listens: an IP address literal (no name lookups) and a port."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, remote: bool = False) -> MetricsAddress:
        """``HOST:PORT``, ``[IPV6]:PORT`` or ``PORT`` (then 127.0.0.1). A non-loopback host
        needs ``remote`` (``UsageError`` naming the way otherwise)."""
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = "127.0.0.1", text
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise UsageError(
                f"{text!r}: the host must be an IP address (127.0.0.1, [::1], 0.0.0.0), not a name"
            ) from None
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise UsageError(f"{text!r}: the port must be a number from 0 to 65535")
        if not address.is_loopback and not remote:
            raise UsageError(
                f"{text!r} is not a loopback address: the endpoint has no authentication; "
                "to serve it beyond this host say so (metrics_remote = true, --metrics-remote)"
            )
        return cls(str(address), int(port_text))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class LoopStats:
    """What the service loop notes for the metrics beside the recorder's counters: the policy
    loads (``policy_load``) and, once per loop turn, the journal's last seal and key
    (``observe``: two attribute reads and a compare)."""

    policy_loads: Counter[str] = field(default_factory=Counter)  # by result
    #: Wall time (ns) of the last load that installed a policy set.
    policy_installed_ns: int | None = None
    #: How long the last load took, whatever its result.
    policy_load_seconds: float | None = None
    sealed_size: int = 0
    #: Wall time (ns) the loop first saw the current last seal (within a loop turn of it).
    sealed_ns: int | None = None
    key_id: str | None = None
    key_rotations: int = 0
    #: forward_error records journaled, by the forwarder's error name.
    forward_errors: Counter[str] = field(default_factory=Counter)

    def policy_load(self, result: str, seconds: float) -> None:
        self.policy_loads[result] += 1
        self.policy_load_seconds = seconds
        if result != "rejected":
            self.policy_installed_ns = time.time_ns()

    def observe(self, journal: Journal) -> None:
        size = journal.sealed_size
        if size != self.sealed_size:
            self.sealed_size = size
            self.sealed_ns = time.time_ns()
        if isinstance(journal, JournalWriter):
            key = journal.key_id
            if key != self.key_id:
                self.key_rotations += self.key_id is not None
                self.key_id = key


class _Forwarder(Protocol):
    def status(self) -> dict[str, Any]: ...


class _Enforcer(Protocol):
    @property
    def digest(self) -> str | None: ...


class Observed(Protocol):
    """What the collector reads: ``agent.daemon.Agent``."""

    counters: RecordCounters
    stats: LoopStats

    @property
    def journal(self) -> Journal | None: ...
    @property
    def enforcer(self) -> _Enforcer | None: ...
    @property
    def forwarder(self) -> _Forwarder | None: ...


#: Every metric's help text, by name without the prefix (docs/metrics.md lists the same).
HELP = {
    "events": "Event records journaled since the agent started, by kind.",
    "kernel_drops": "Events the kernel dropped (ring buffer full, or taken but not stored), "
    "by kind, as the journal's loss records say.",
    "verdicts": "Verdict records journaled since the agent started, by action and rule id.",
    "policy": "The policy set in force (its digest).",
    "policy_loads": "Policy loads (start, SIGHUP) by result: loaded, rejected, mismatch.",
    "policy_load_timestamp_seconds": "When the policy set in force was installed (Unix time).",
    "policy_load_duration_seconds": "How long the last policy load took (check, compile, "
    "install), whatever its result.",
    "journal_writable": "1 while the journal can be written; 0 while records are counted as "
    "lost instead (a full disk).",
    "journal_seq": "Seq of the last record written to the journal.",
    "journal_sealed_records": "Records covered by the last seal, the seal included.",
    "journal_last_seal_timestamp_seconds": "When the last seal was seen (Unix time, within a "
    "main-loop turn).",
    "journal_seconds_since_last_seal": "Seconds since the last seal.",
    "journal_key": "The signing key of the current epoch (its key id).",
    "journal_key_rotations": "Forward-secure key rotations since the agent started.",
    "forward_lag_records": "Durable records the collector has not acknowledged.",
    "forward_lag_seconds": "Age of the oldest durable record the collector has not acknowledged.",
    "forward_sent_records": "Records the collector acknowledged since the agent started.",
    "forward_rejects": "Batches the collector rejected (each kept aside and journaled once "
    "as a forward_error record).",
    "forward_rejected": "1 while a rejected batch holds forwarding back.",
    "forward_errors": "forward_error records journaled since the agent started, by error.",
}


def _counter(name: str, labels: list[str], values: dict[Any, int]) -> Metric:
    family = CounterMetricFamily(f"{PREFIX}_{name}", HELP[name], labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


def _total(name: str, value: int) -> Metric:
    return CounterMetricFamily(f"{PREFIX}_{name}", HELP[name], value=value)


def _gauge(name: str, value: float) -> Metric:
    return GaugeMetricFamily(f"{PREFIX}_{name}", HELP[name], value=value)


def _info(name: str, label: str, value: str) -> Metric:
    return InfoMetricFamily(f"{PREFIX}_{name}", HELP[name], value={label: value})


class AgentCollector:
    """The agent's metrics, read from ``agent`` at every scrape (module doc; docs/metrics.md)."""

    def __init__(self, agent: Observed, clock: Callable[[], int] = time.time_ns) -> None:
        self._agent = agent
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        agent = self._agent
        counters, stats = agent.counters, agent.stats
        # dict() of a Counter is one C-level copy under the GIL: no "changed size" race with
        # the main loop that increments it
        yield _counter("events", ["kind"], dict(counters.kinds))
        yield _counter("kernel_drops", ["kind"], dict(counters.drops))
        yield _counter("verdicts", ["action", "rule"], dict(counters.verdicts_by))
        yield from self._policy(agent, stats)
        yield from self._journal(agent.journal, stats)
        yield from self._forward(agent.forwarder, stats)

    def _policy(self, agent: Observed, stats: LoopStats) -> Iterator[Metric]:
        enforcer = agent.enforcer
        digest = enforcer.digest if enforcer is not None else None
        if digest is not None:
            yield _info("policy", "digest", digest)
        yield _counter("policy_loads", ["result"], dict(stats.policy_loads))
        if stats.policy_installed_ns is not None:
            yield _gauge("policy_load_timestamp_seconds", stats.policy_installed_ns / 1e9)
        if stats.policy_load_seconds is not None:
            yield _gauge("policy_load_duration_seconds", stats.policy_load_seconds)

    def _journal(self, journal: Journal | None, stats: LoopStats) -> Iterator[Metric]:
        writer = journal if isinstance(journal, JournalWriter) and not journal.closed else None
        yield _gauge("journal_writable", float(writer is not None))
        if writer is not None:
            yield _gauge("journal_seq", writer.next_seq - 1)
        yield _gauge("journal_sealed_records", stats.sealed_size)
        if stats.sealed_ns is not None:
            yield _gauge("journal_last_seal_timestamp_seconds", stats.sealed_ns / 1e9)
            age = max(0.0, (self._clock() - stats.sealed_ns) / 1e9)
            yield _gauge("journal_seconds_since_last_seal", age)
        if stats.key_id is not None:
            yield _info("journal_key", "key_id", stats.key_id)
        yield _total("journal_key_rotations", stats.key_rotations)

    def _forward(self, forwarder: _Forwarder | None, stats: LoopStats) -> Iterator[Metric]:
        if forwarder is None:
            return
        status = forwarder.status()
        yield _gauge("forward_lag_records", status["lag_records"])
        yield _gauge("forward_lag_seconds", status["lag_seconds"])
        yield _total("forward_sent_records", status["sent_records"])
        yield _total("forward_rejects", stats.forward_errors["rejected"])
        yield _gauge("forward_rejected", float(status["rejected"] is not None))
        yield _counter("forward_errors", ["error"], dict(stats.forward_errors))


class MetricsServer:
    """The endpoint, on prometheus_client's HTTP server in a daemon thread; ``close`` stops it."""

    def __init__(self, address: MetricsAddress, agent: Observed) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(AgentCollector(agent))
        self.registry.register(ProcessCollector(registry=None))
        try:
            server, thread = start_http_server(address.port, address.host, self.registry)
        except OSError as exc:
            raise SealtrailError(
                f"metrics endpoint {address}: cannot listen: {exc.strerror}"
            ) from None
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port: int = server.server_port
        #: Where it listens (the port the kernel chose for port 0).
        self.address = MetricsAddress(address.host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
