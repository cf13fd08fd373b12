"""``sealtrail agent``: the daemon. Kernel events in, journal records out.

One thread runs the loop: poll the event stream, append records, tick the journal (seals within
its interval, key rotation on time), dispatch signals, ping the systemd watchdog. Signal
handlers only enqueue (HUP = reload, TERM/INT = graceful stop); the loop acts on them.
"""

from __future__ import annotations

import collections
import logging
import os
import platform
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from agent import __version__
from agent.errors import SealtrailError
from agent.events import model
from agent.events.stream import DEFAULT_RINGBUF_BYTES, EventStream, StreamConfig, StreamItem
from agent.journal import JournalWriter
from agent.journal.canonical import JsonValue
from agent.sdnotify import Notifier

log = logging.getLogger(__name__)

# What the journal records by default: process lifecycle and network activity. File events are
# recorded where a policy rule targets them (their volume on a busy host is the cost driver).
DEFAULT_RECORD_KINDS = frozenset({"exec", "exit", "connect", "bind", "listen", "accept"})
POLL_MS = 50
STATUS_INTERVAL_S = 10.0


@dataclass(frozen=True)
class AgentConfig:
    journal_dir: Path
    keys_dir: Path
    policies_dir: Path
    record_kinds: frozenset[str] = DEFAULT_RECORD_KINDS
    ringbuf_bytes: int = DEFAULT_RINGBUF_BYTES
    epoch_seconds: float = 3600.0
    seal_interval: float = 0.1


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def event_fields(ev: model.Event) -> dict[str, JsonValue]:
    """An event as journal fields: integers beyond 2**53 (ns stamps, cgroup ids) as strings."""
    d: dict[str, Any] = ev.to_dict()
    d["ts_ns"] = str(ev.ts_ns)
    d["cgroup_id"] = str(ev.cgroup_id)
    return d


def loss_fields(loss: model.LossEvent) -> dict[str, JsonValue]:
    drops: dict[str, JsonValue] = {k: v for k, v in sorted(loss.by_kind.items())}
    return {"drops": drops, "count": loss.count, "since_ns": str(loss.since_ns)}


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.notifier = Notifier()
        self._signals: collections.deque[int] = collections.deque()
        self._stopping = False
        self.recorded = 0
        self.lost = 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _start_fields(self) -> dict[str, JsonValue]:
        u = platform.uname()
        kinds: list[JsonValue] = list(sorted(self.config.record_kinds))
        return {
            "version": __version__,
            "pid": os.getpid(),
            "kernel": u.release,
            "machine": u.machine,
            "record_kinds": kinds,
            "journal_dir": str(self.config.journal_dir),
            "policies_dir": str(self.config.policies_dir),
        }

    def run(self) -> int:
        cfg = self.config
        self._install_signals()
        journal = JournalWriter.open(
            cfg.journal_dir,
            cfg.keys_dir,
            host=socket.gethostname(),
            boot_id=boot_id(),
            epoch_seconds=cfg.epoch_seconds,
            seal_interval=cfg.seal_interval,
        )
        stop_fields: dict[str, JsonValue] = {"reason": "signal"}
        try:
            journal.append("start", self._start_fields())
            stream = EventStream(
                StreamConfig(kinds=cfg.record_kinds, ringbuf_bytes=cfg.ringbuf_bytes)
            )
            stream.start()
            try:
                journal.flush_and_seal()
                log.info("sealtrail agent running; journal %s", cfg.journal_dir)
                self.notifier.ready(f"recording {','.join(sorted(cfg.record_kinds))}")
                self._loop(stream, journal)
                # what the kernel already queued is still evidence: record it before stopping
                self._record(journal, stream.drain())
            finally:
                stream.close()
        except SealtrailError as exc:
            stop_fields = {"reason": "error", "error": str(exc)}
            raise
        finally:
            self.notifier.stopping()
            stop_fields["recorded"] = self.recorded
            stop_fields["lost"] = self.lost
            journal.close(stop_fields)
        return 0

    def _loop(self, stream: EventStream, journal: JournalWriter) -> None:
        next_status = time.monotonic() + STATUS_INTERVAL_S
        wd = self.notifier.watchdog_interval_s
        next_watchdog = time.monotonic()
        while not self._stopping:
            self._record(journal, stream.poll(POLL_MS))
            journal.tick()
            self._dispatch_signals(journal)
            now = time.monotonic()
            if wd is not None and now >= next_watchdog:
                self.notifier.watchdog()  # from the main loop only: a stuck loop stops pinging
                next_watchdog = now + wd
            if now >= next_status:
                self.notifier.status(f"recorded {self.recorded} events, lost {self.lost}")
                next_status = now + STATUS_INTERVAL_S

    def _record(self, journal: JournalWriter, items: list[StreamItem]) -> None:
        append = journal.append
        for item in items:
            if isinstance(item, model.LossEvent):
                self.lost += item.count
                log.warning("kernel dropped %d events since %d", item.count, item.since_ns)
                append("loss", loss_fields(item))
            else:
                append("event", event_fields(item))
                self.recorded += 1

    def _dispatch_signals(self, journal: JournalWriter) -> None:
        while self._signals:
            sig = self._signals.popleft()
            if sig == signal.SIGHUP:
                log.info("SIGHUP: reload")
                journal.append("reload", {"trigger": "SIGHUP"})
            else:
                log.info("%s: stopping", signal.Signals(sig).name)
                self._stopping = True
