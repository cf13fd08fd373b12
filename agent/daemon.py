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
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from agent import __version__, paths
from agent.enforce.enforcer import Enforcer
from agent.errors import PolicyError, SealtrailError
from agent.events import model
from agent.events.decode import KIND_OP
from agent.events.stream import DEFAULT_RINGBUF_BYTES, EventStream, StreamConfig, StreamItem
from agent.journal import JournalWriter
from agent.journal.canonical import MAX_SAFE_INT, JsonValue
from agent.kernel.ringbuf import record_at
from agent.native.encoder import EventEncoder
from agent.native.layout import ENC_END, ENC_SLOW
from agent.policy.check import check
from agent.policy.mechanisms import HostCapabilities, host_capabilities
from agent.policy.source import PolicySet
from agent.sdnotify import Notifier
from agent.status import write_status

log = logging.getLogger(__name__)

# What the journal records by default: process lifecycle and network activity. File events are
# recorded where a policy rule targets them (their volume on a busy host is the cost driver).
DEFAULT_RECORD_KINDS = frozenset({"exec", "exit", "connect", "bind", "listen", "accept"})
POLL_MS = 50
#: Event kinds the native encoder journals straight from ring-buffer bytes (native/strecord.c)
#: when nothing but the journal needs them.
NATIVE_KINDS = ("connect", "bind", "listen", "accept")
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
    # where the network guard attaches (default: the cgroup v2 root, i.e. the whole host)
    cgroup: Path | None = None
    run_dir: Path = paths.DEFAULT_RUN_DIR  # status.json: pid and the last policy load


@dataclass(frozen=True)
class LoadResult:
    """The outcome of one policy load: ``loaded``; ``rejected`` (``digest``: the set still in
    force); or ``mismatch`` (``digest`` is in force, but the kernel does not hold all of it)."""

    result: str
    digest: str | None
    files: tuple[str, ...]
    errors: tuple[str, ...]

    def status(self) -> dict[str, JsonValue]:
        if self.result == "rejected":
            return {"result": "rejected", "errors": list(self.errors), "kept": self.digest}
        out: dict[str, JsonValue] = {"result": self.result, "digest": self.digest,
                                     "files": list(self.files)}  # fmt: skip
        if self.errors:
            out["errors"] = list(self.errors)
        return out


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


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def event_fields(ev: model.Event) -> dict[str, JsonValue]:
    """An event as journal fields: nanosecond values and cgroup ids as decimal strings (they
    pass 2**53), and so any other integer beyond the JSON-safe range; bytes that are not UTF-8
    escaped (``model.escape_undecodable``; docs/journal-format.md, section 4)."""
    d: dict[str, Any] = ev.to_dict()
    d["ts_ns"] = str(ev.ts_ns)
    d["cgroup_id"] = str(ev.cgroup_id)
    if "duration_ns" in d:
        d["duration_ns"] = str(d["duration_ns"])
    for key, value in d.items():
        if type(value) is int and not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            d[key] = str(value)
    model.escape_undecodable(d)
    return d


def _text_safe(fields: dict[str, Any]) -> dict[str, JsonValue]:
    """Fields that may carry file names or paths (policy files, verdict objects, exes): bytes
    that are not UTF-8 escaped as in events, so that no name can stop the agent."""
    model.escape_undecodable(fields)
    return fields


def loss_fields(loss: model.LossEvent) -> dict[str, JsonValue]:
    drops: dict[str, JsonValue] = {k: v for k, v in sorted(loss.by_kind.items())}
    return {"drops": drops, "count": loss.count, "since_ns": str(loss.since_ns)}


def record_batch(
    journal: JournalWriter,
    encoder: EventEncoder,
    batch: bytes,
    ops_mask: int,
    slow: Callable[[list[bytes]], None],
) -> int:
    """Journal a ring-buffer batch in order; returns the records the native encoder took.

    Runs of ``ops_mask`` records go to ``journal.append_events``; the record where the encoder
    stops, and every following one up to the next it may take, go to ``slow`` as raw records.
    """
    taken_total = 0
    pos, end = 0, len(batch)
    while pos < end:
        start = pos
        run_end = encoder.scan(batch, pos, ops_mask)
        stop = ENC_END
        while pos < run_end:
            pos, taken, stop = journal.append_events(encoder, batch, pos)
            taken_total += taken
            if stop == ENC_SLOW:
                break
        if pos >= end:
            break
        if stop != ENC_SLOW and run_end > start:
            continue  # the run ended at its pid limit: scan the next one
        raws: list[bytes] = []
        while pos < end:
            raw, after = record_at(batch, pos)
            op = int.from_bytes(raw[:2], "little")
            if raws and op < 64 and ops_mask >> op & 1:
                break
            raws.append(raw)
            pos = after
        slow(raws)
    return taken_total


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.notifier = Notifier()
        self._signals: collections.deque[int] = collections.deque()
        self._stopping = False
        self.recorded = 0
        self.recorded_native = 0  # of which the native encoder wrote
        self.lost = 0
        self.verdicts = 0
        self.reloads = 0
        self.caps: HostCapabilities | None = None
        self.enforcer: Enforcer | None = None
        self.last_load: dict[str, JsonValue] = {}

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
            # what `sealtrail doctor` found: the mechanisms this run can enforce with
            "capabilities": asdict(self.caps) if self.caps else None,
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
            self.caps = host_capabilities()
            journal.append("start", self._start_fields())
            stream = EventStream(
                StreamConfig(kinds=cfg.record_kinds, ringbuf_bytes=cfg.ringbuf_bytes, load_all=True)
            )
            stream.start()
            self.enforcer = Enforcer(stream, self.caps, cfg.cgroup)
            try:
                if not self._load_policies(journal, "start"):
                    raise SealtrailError(
                        f"{cfg.policies_dir}: policy rejected, not starting (see the errors above)"
                    )
                journal.flush_and_seal()
                log.info("sealtrail agent running; journal %s", cfg.journal_dir)
                self.notifier.ready(f"enforcing policy {self.enforcer.digest}")
                self._loop(stream, journal)
                # what the kernel already queued is still evidence: record it before stopping
                self._record(journal, stream.drain())
            finally:
                self.enforcer.close()
                stream.close()
        except Exception as exc:  # the stop record says why the agent stopped, whatever the error
            stop_fields = {"reason": "error", "error": f"{type(exc).__name__}: {exc}"}
            raise
        finally:
            self.notifier.stopping()
            stop_fields["recorded"] = self.recorded
            stop_fields["recorded_native"] = self.recorded_native
            stop_fields["lost"] = self.lost
            stop_fields["verdicts"] = self.verdicts
            journal.close(stop_fields)
        return 0

    def _load_policies(self, journal: JournalWriter, trigger: str) -> bool:
        """Check, compile and install the policy directory as one transaction; journal, log
        and write to status.json what happened. False if the set was rejected (the old one
        stays in force, whole)."""
        assert self.enforcer is not None
        result = self._policy_transaction(trigger)
        if result.result == "rejected":
            for line in result.errors:
                log.error("policy rejected: %s", line)
            fields: dict[str, JsonValue] = {"errors": list(result.errors), "kept": result.digest}
            journal.append("policy_rejected", _text_safe({**fields, "trigger": trigger}))
        elif result.result == "mismatch":
            for line in result.errors:
                log.error("policy %s installed, but the kernel differs: %s", result.digest, line)
            fields = {"digest": result.digest, "files": list(result.files),
                      "errors": list(result.errors)}  # fmt: skip
            journal.append("policy_mismatch", _text_safe({**fields, "trigger": trigger}))
        else:
            log.info("policy %s loaded (%d files, %s)", result.digest, len(result.files), trigger)
            fields = {"digest": result.digest, "files": list(result.files)}
            journal.append("policy_loaded", _text_safe({**fields, "trigger": trigger}))
        self.last_load = _text_safe(result.status())
        self.reloads += 1
        write_status(
            self.config.run_dir,
            {"pid": os.getpid(), "loads": self.reloads, "trigger": trigger, **self.last_load},
        )
        return result.result != "rejected"

    def _policy_transaction(self, trigger: str) -> LoadResult:
        """Read, check and install the policy directory; never raises for any input.

        A directory without policy files means observing and recording only at start; on a
        reload it is rejected (an emptied directory must not switch enforcement off unseen).
        """
        assert self.enforcer is not None and self.caps is not None
        directory = self.config.policies_dir
        kept = self.enforcer.digest
        try:
            if _has_policy_files(directory):
                report = check([directory], self.caps)
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
            installed = self.enforcer.install(policy_set, compiled)
        except SealtrailError as exc:
            return LoadResult("rejected", kept, (), tuple(str(exc).splitlines() or [repr(exc)]))
        except Exception as exc:  # a bug must not stop the agent: the old set stays in force
            log.exception("policy load failed")
            return LoadResult("rejected", kept, (), (f"{type(exc).__name__}: {exc}",))
        digest = self.enforcer.digest
        if installed.errors:
            return LoadResult("mismatch", digest, files, installed.errors)
        return LoadResult("loaded", digest, files, ())

    def _loop(self, stream: EventStream, journal: JournalWriter) -> None:
        next_status = time.monotonic() + STATUS_INTERVAL_S
        wd = self.notifier.watchdog_interval_s
        next_watchdog = time.monotonic()
        encoder = self._encoder(stream, journal)
        while not self._stopping:
            if encoder is not None:
                self._record_batch(journal, stream, encoder, stream.poll_batch(POLL_MS))
            else:
                self._record(journal, stream.poll(POLL_MS))
            journal.tick()
            self._record_problems(journal)
            self._dispatch_signals(journal)
            now = time.monotonic()
            if wd is not None and now >= next_watchdog:
                self.notifier.watchdog()  # from the main loop only: a stuck loop stops pinging
                next_watchdog = now + wd
            if now >= next_status:
                self.notifier.status(f"recorded {self.recorded} events, lost {self.lost}")
                next_status = now + STATUS_INTERVAL_S

    def _record(self, journal: JournalWriter, items: list[StreamItem]) -> None:
        """Journal decoded items with one write per run, and let the enforcer see the ones it
        needs; what it acts on is in the journal before it acts."""
        enforcer = self.enforcer
        pending: list[tuple[str, Mapping[str, JsonValue]]] = []
        for item in items:
            if isinstance(item, model.LossEvent):
                self.lost += item.count
                log.warning("kernel dropped %d events since %d", item.count, item.since_ns)
                pending.append(("loss", loss_fields(item)))
                continue
            if not isinstance(item, model.GuardEvent):  # a guard decision is a verdict record
                pending.append(("event", event_fields(item)))
                self.recorded += 1
            if enforcer is not None and (
                isinstance(item, model.GuardEvent) or enforcer.needs(item.kind)
            ):
                if pending:
                    journal.append_many(pending)
                    pending = []
                enforcer.handle(item)
        if pending:
            journal.append_many(pending)
        if enforcer is not None:
            self._record_verdicts(journal, enforcer)

    @staticmethod
    def _encoder(stream: EventStream, journal: JournalWriter) -> EventEncoder | None:
        """The native record path, where the native core is loaded (else all in Python)."""
        if not (stream.batches and journal.takes_events):
            return None
        lookup = stream.proctable.lookup
        return EventEncoder(
            host=journal.host,
            boot_id=journal.boot_id,
            clock_offset=stream.decoder.clock.offset_ns,
            exe_of=lambda pid: lookup(pid, ""),
        )

    def _native_ops(self) -> int:
        """Ops whose events are only recorded, as a bit mask: the native encoder takes them."""
        mask = 0
        for kind in NATIVE_KINDS:
            if self.enforcer is None or not self.enforcer.needs(kind):
                mask |= 1 << KIND_OP[kind]
        return mask

    def _record_batch(
        self, journal: JournalWriter, stream: EventStream, encoder: EventEncoder, batch: bytes
    ) -> None:
        """One ring-buffer batch, in order: events that are only recorded through the native
        encoder, every other record through ``_record`` (decode, enforcer)."""
        taken = record_batch(
            journal,
            encoder,
            batch,
            self._native_ops(),
            lambda raws: self._record(journal, stream.decode_records(raws)),
        )
        self.recorded += taken
        self.recorded_native += taken
        loss = stream.due_loss()
        if loss is not None:
            self._record(journal, [loss])

    def _record_verdicts(self, journal: JournalWriter, enforcer: Enforcer) -> None:
        while enforcer.verdicts:
            verdict = enforcer.verdicts.popleft()
            journal.append("verdict", _text_safe(verdict.fields()))
            self.verdicts += 1

    def _record_problems(self, journal: JournalWriter) -> None:
        """What the enforcer found the kernel no longer holds of the live policy (marks it
        could not keep current): journaled and in status.json, like a mismatch at load."""
        enforcer = self.enforcer
        if enforcer is None or not enforcer.problems:
            return
        errors: list[JsonValue] = []
        while enforcer.problems:
            errors.append(enforcer.problems.popleft())
        digest = enforcer.digest
        journal.append(
            "policy_mismatch",
            _text_safe({"digest": digest, "errors": errors, "trigger": "directory change"}),
        )
        self.last_load = _text_safe(
            {**self.last_load, "result": "mismatch", "digest": digest, "errors": errors}
        )
        write_status(
            self.config.run_dir,
            {"pid": os.getpid(), "loads": self.reloads, "trigger": "directory change",
             **self.last_load},
        )  # fmt: skip

    def _dispatch_signals(self, journal: JournalWriter) -> None:
        while self._signals:
            sig = self._signals.popleft()
            if sig == signal.SIGHUP:
                log.info("SIGHUP: reload")
                journal.append("reload", {"trigger": "SIGHUP"})
                self._load_policies(journal, "SIGHUP")
            else:
                log.info("%s: stopping", signal.Signals(sig).name)
                self._stopping = True
