"""``sealtrail agent``: the daemon's service loop. Kernel events in, journal records out.

One thread runs the loop: poll the event stream into the journal (``agent.recorder``), tick
the journal (seals within its interval, key rotation on time), dispatch signals, ping the
systemd watchdog. Signal handlers only enqueue (HUP = reload, TERM/INT = graceful stop); the
loop acts on them. A policy load is one transaction with a result (``agent.policyload``).
systemd hears (``agent.sdnotify``) READY once the agent enforces, RELOADING then READY around a
SIGHUP reload, and a STATUS line (``Agent._status_line``) at each change and every 10 s.

The service is built from factories (event stream, journal writer, enforcer, host probe,
forwarder, clock, notifier); the defaults are this host's kernel, and unit tests run the same
loop over a fake stream of raw ring-buffer records.

With ``--forward`` the journal is shipped to a collector by ``agent.forward.Forwarder`` on its
own thread, started once the journal is open. The loop tells it when records are durable
(sealed), journals the receipts and errors it hands back (it never touches the writer), and
on SIGTERM stops it after the final seal, waiting at most ``--forward-wait`` seconds.
"""

from __future__ import annotations

import collections
import logging
import os
import platform
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from agent import __version__, paths
from agent.enforce.enforcer import Enforcer, EventSource
from agent.enforce.handover import FANOTIFY_FDNAME, Handover, held_note
from agent.errors import JournalError, SealtrailError
from agent.events.stream import DEFAULT_RINGBUF_BYTES, EventStream, StreamConfig
from agent.forward.forwarder import ForwardConfig, Forwarder
from agent.journal import JournalWriter
from agent.journal.canonical import JsonValue
from agent.journal.writer import DEFAULT_HEARTBEAT
from agent.journaldown import REOPEN_SECONDS, Journal, JournalDown
from agent.kernel.pins import DEFAULT_PIN_DIR, GUARD, PinDir, PinError
from agent.kernel.probe import check_host_pid_namespace, check_privileges, missing_capabilities
from agent.metrics import LoopStats, MetricsAddress, MetricsServer
from agent.policy.mechanisms import HostCapabilities, host_capabilities
from agent.policyload import Installer, load_policies
from agent.recorder import Judge, RecordCounters, Recorder, RecordSource, text_safe
from agent.sdnotify import Notifier, received_fds
from agent.status import write_status

log = logging.getLogger(__name__)

# What the journal records by default: process lifecycle and network activity. File events are
# recorded where a policy rule targets them (their volume on a busy host is the cost driver).
DEFAULT_RECORD_KINDS = frozenset({"exec", "exit", "connect", "bind", "listen", "accept"})
POLL_MS = 50
STATUS_INTERVAL_S = 10.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


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
    heartbeat: float = DEFAULT_HEARTBEAT  # the longest time without a seal, idle or not
    forward: ForwardConfig | None = None  # --forward URL --forward-tls DIR
    # pin the guard and the ring buffer there (agent.kernel.pins): enforcement outlives the
    # agent and a restart takes it over; None: nothing pinned, all of it ends with the agent
    pin_dir: Path | None = None
    metrics: MetricsAddress | None = None  # --metrics HOST:PORT: the Prometheus endpoint


class Stream(RecordSource, EventSource, Protocol):
    """The event stream the service runs: ``agent.events.stream.EventStream``."""

    def start(self) -> None: ...
    def close(self) -> None: ...


class Enforcing(Judge, Installer, Protocol):
    """The enforcer the service runs: ``agent.enforce.enforcer.Enforcer``."""

    problems: collections.deque[str]
    #: set once the enforcer took over a guard an earlier agent pinned: what to journal
    takeover: dict[str, JsonValue] | None
    #: set once it took over the fanotify group an earlier agent stored: what to journal
    fanotify_takeover: dict[str, JsonValue] | None
    #: "held": the fanotify group waits for the next agent through a restart; else why not
    restart_hold: str | None

    def close(self) -> None: ...


class Forwarding(Protocol):
    """The forwarder the service runs: ``agent.forward.forwarder.Forwarder``."""

    def start(self) -> None: ...
    def notify(self, durable: int) -> None: ...
    def take_records(self) -> list[tuple[str, dict[str, JsonValue]]]: ...
    def stop(self, timeout: float | None = None) -> bool: ...
    def status(self) -> dict[str, Any]: ...


#: A test hook: while the file this names exists, the main loop hangs (no watchdog ping), as a
#: stuck loop would; the packaging test proves systemd's watchdog restarts the agent then.
TEST_HANG_ENV = "SEALTRAIL_TEST_HANG_FILE"


def _hang_if_asked(hang: str | None) -> None:
    if hang and os.path.exists(hang):
        log.warning("%s exists: the main loop hangs (test hook)", hang)
        while os.path.exists(hang):
            time.sleep(0.5)


def _clock_text(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def short_digest(digest: str) -> str:
    """A policy digest short enough for a status line: its first 12 hex digits."""
    return digest.removeprefix("sha256:")[:12]


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def open_journal(config: AgentConfig) -> JournalWriter:
    """The host's journal, as the agent writes it."""
    return JournalWriter.open(
        config.journal_dir,
        config.keys_dir,
        host=socket.gethostname(),
        boot_id=boot_id(),
        epoch_seconds=config.epoch_seconds,
        seal_interval=config.seal_interval,
        heartbeat=config.heartbeat,
    )


def open_forwarder(config: AgentConfig, journal: JournalWriter) -> Forwarding | None:
    """The journal's forwarder, if the agent forwards (``ForwardError`` if it cannot)."""
    if config.forward is None:
        return None
    return Forwarder.open(
        config.forward,
        config.journal_dir,
        host=journal.host,
        durable=journal.sealed_size,
        run_dir=config.run_dir,
        roots=journal.seal_roots,
    )


@dataclass(frozen=True)
class Factories:
    """What the service is built from; the defaults are this host's kernel and clock."""

    open_stream: Callable[[StreamConfig], Stream] = EventStream
    open_writer: Callable[[AgentConfig], JournalWriter] = open_journal
    open_enforcer: Callable[[Stream, HostCapabilities, Path | None, Handover], Enforcing] = Enforcer
    open_forwarder: Callable[[AgentConfig, JournalWriter], Forwarding | None] = open_forwarder
    capabilities: Callable[[], HostCapabilities] = host_capabilities
    clock: Callable[[], float] = time.monotonic


class Agent:
    def __init__(
        self, config: AgentConfig, make: Factories | None = None, notifier: Notifier | None = None
    ) -> None:
        self.config = config
        self.make = make or Factories()
        self.notifier = notifier or Notifier()
        self._signals: collections.deque[int] = collections.deque()
        self._stopping = False
        # by kind on the native record path too only with --metrics (a scan per batch)
        self.counters = RecordCounters(native_kinds=config.metrics is not None)
        self.stats = LoopStats()  # what the metrics endpoint reads beside the counters
        self._metrics: MetricsServer | None = None
        self.reloads = 0
        self.caps: HostCapabilities | None = None
        self.enforcer: Enforcing | None = None
        self.forwarder: Forwarding | None = None
        self.last_load: dict[str, JsonValue] = {}
        self._trigger = "start"
        self._journal_down: JournalDown | None = None
        self.journal: Journal | None = None
        self._events_per_s = 0.0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)

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
            # capabilities the agent's judgement relies on that this process lacks
            "missing_capabilities": list(missing_capabilities()),
            "journal_dir": str(self.config.journal_dir),
            "policies_dir": str(self.config.policies_dir),
        }

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; the handlers in place before are restored after."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _SIGNALS}
        try:
            self._run()
        finally:
            for sig, handler in previous.items():
                if handler is not None:  # None: a handler not set from Python, left as it is
                    signal.signal(sig, handler)
        return 0

    def _run(self) -> None:
        cfg = self.config
        self.journal = journal = self.make.open_writer(cfg)
        stop_fields: dict[str, JsonValue] = {"reason": "signal"}
        try:
            if cfg.metrics is not None:
                self._metrics = MetricsServer(cfg.metrics, self)
                log.info("metrics on http://%s/metrics", self._metrics.address)
            self.forwarder = self.make.open_forwarder(cfg, journal)
            if self.forwarder is not None:
                self.forwarder.start()  # what earlier runs left unsent goes at once
            self.caps = self.make.capabilities()
            for check in (check_privileges(), check_host_pid_namespace()):
                if not check.ok:  # judged differently, never silently (docs/doctor.md)
                    log.warning("agent: %s", check.detail)
            journal.append("start", self._start_fields())
            pins = self._pins()
            stream = self.make.open_stream(
                StreamConfig(
                    kinds=cfg.record_kinds, ringbuf_bytes=cfg.ringbuf_bytes, load_all=True,
                    pins=pins,
                )
            )  # fmt: skip
            stream.start()
            handover = self._handover(journal, pins)
            self.enforcer = enforcer = self.make.open_enforcer(
                stream, self.caps, cfg.cgroup, handover
            )
            try:
                if not self._load_policies(journal, "start"):
                    raise SealtrailError(
                        f"{cfg.policies_dir}: policy rejected, not starting (see the errors above)"
                    )
                if enforcer.takeover is not None:
                    journal.append("guard_takeover", enforcer.takeover)
                if enforcer.fanotify_takeover is not None:
                    journal.append("fanotify_takeover", enforcer.fanotify_takeover)
                journal.flush_and_seal()
                log.info("sealtrail agent running; journal %s", cfg.journal_dir)
                self.notifier.ready(self._status_line())
                recorder = Recorder(journal, stream, enforcer, self.counters)
                recorder = self._loop(recorder)
                recorder.drain()  # what the kernel already queued is still evidence
                # a clean stop: systemd releases a stored fanotify group as the unit stops,
                # as asked; only an unasked release is a gap for the next start to journal
                held_note(cfg.journal_dir).unlink(missing_ok=True)
            finally:
                enforcer.close()
                stream.close()
                if pins is not None:
                    pins.release()
        except Exception as exc:  # the stop record says why the agent stopped, whatever the error
            stop_fields = {"reason": "error", "error": f"{type(exc).__name__}: {exc}"}
            raise
        finally:
            self.notifier.stopping()
            if self._journal_down is not None:  # no record can say it: the log does
                log.error("stopping with the journal not writable: %d records were not recorded "
                          "since %s", self._journal_down.total,
                          _clock_text(self._journal_down.since_ns))  # fmt: skip
            try:
                self.journal.close({**stop_fields, **self.counters.fields()})
            finally:
                self._stop_forwarding(self.journal)
                if self._metrics is not None:
                    self._metrics.close()

    def _pins(self) -> PinDir | None:
        """The pin directory, held for this run (``PinError`` if another agent holds it). A
        guard pinned in the default directory while this agent pins elsewhere (or nothing)
        would go on enforcing an earlier policy unseen: refused."""
        default = PinDir(DEFAULT_PIN_DIR)
        pins = PinDir(self.config.pin_dir, self.config.run_dir) if self.config.pin_dir else None
        if (pins is None or pins.path != default.path) and default.holds(GUARD):
            raise PinError(f"{DEFAULT_PIN_DIR}: a guard an earlier agent pinned there "
                           "enforces its policy; take it over (--pin-dir "
                           f"{DEFAULT_PIN_DIR}) or detach it first (sealtrail agent "
                           "--unpin)")  # fmt: skip
        if pins is not None:
            pins.acquire()
        return pins

    def _handover(self, journal: JournalWriter, pins: PinDir | None) -> Handover:
        """What an earlier agent left to this one (agent.enforce.handover): the pins, and
        the fanotify group systemd's fd store passes back; a group that was stored and is not
        passed back was released by systemd, and the gap is journaled."""
        cfg = self.config
        passed = received_fds()
        group = passed.pop(FANOTIFY_FDNAME, [])
        for fd in [*group[1:], *(fd for fds in passed.values() for fd in fds)]:
            os.close(fd)  # nothing else is stored: not ours to keep open
        if len(group) > 1:  # one group, never more: the others would wait with nobody reading
            self.notifier.remove_fds(FANOTIFY_FDNAME)
            self.notifier.store_fds(group[:1], FANOTIFY_FDNAME)
        note = held_note(cfg.journal_dir)
        if not group and note.exists():
            journal.append("enforcement_gap", {
                "mechanism": "fanotify",
                "reason": "the fanotify group an earlier run handed to systemd's fd store was "
                "not passed back: systemd released it (the unit stopped, or the agent did not "
                "come back within its start limits), and the kernel allowed what it held",
                "held_since": note.read_text().strip(),
            })  # fmt: skip
            log.warning("fanotify: the group stored by an earlier run was released; what it "
                        "held was allowed (journaled as enforcement_gap)")  # fmt: skip
        if group:
            if not note.exists():
                note.write_text(f"{time.time_ns()}\n")
        else:
            note.unlink(missing_ok=True)
        if not self.notifier.enabled:
            return Handover(pins, group[0] if group else None)

        def store(fd: int) -> bool:
            if not self.notifier.store_fds([fd], FANOTIFY_FDNAME):
                return False
            note.write_text(f"{time.time_ns()}\n")
            return True

        def unstore() -> None:
            self.notifier.remove_fds(FANOTIFY_FDNAME)
            note.unlink(missing_ok=True)

        startup = (cfg.policies_dir, cfg.keys_dir, cfg.journal_dir, cfg.run_dir)
        return Handover(pins, group[0] if group else None, store, unstore, startup)

    def _forward(self, journal: Journal) -> None:
        """Journal what the forwarder handed back; tell it what is durable now."""
        forwarder = self.forwarder
        if forwarder is None:
            return
        records = forwarder.take_records()
        self.stats.forward_errors.update(
            str(fields.get("error")) for rtype, fields in records if rtype == "forward_error"
        )
        if records:
            try:
                journal.append_many(records)
            except JournalError as exc:  # the forwarder's bookkeeping never stops the agent
                log.error("forwarding records not journaled: %s: %r", exc, records[:3])
        forwarder.notify(journal.sealed_size)

    def _stop_forwarding(self, journal: Journal) -> None:
        """After the final seal: forward it all, within the bounded wait."""
        forwarder = self.forwarder
        if forwarder is None:
            return
        forwarder.notify(journal.sealed_size)
        if forwarder.stop():
            log.info("forwarded the journal up to its final seal")
        else:
            log.warning("the collector does not hold the whole journal; the next start sends it")

    def _load_policies(self, journal: Journal, trigger: str) -> bool:
        """Check, compile and install the policy directory as one transaction; journal, log
        and write to status.json what happened. False if the set was rejected (the old one
        stays in force, whole)."""
        assert self.enforcer is not None and self.caps is not None
        started = time.monotonic()
        result = load_policies(self.config.policies_dir, trigger, self.enforcer, self.caps)
        self.stats.policy_load(result.result, time.monotonic() - started)
        result.log(trigger)
        journal.append(*result.record(trigger))
        self.last_load = text_safe(result.status())
        self.reloads += 1
        self._write_status(trigger)
        return result.result != "rejected"

    def _write_status(self, trigger: str | None = None) -> None:
        """status.json: the last policy load (``trigger``: what caused it), what is recorded."""
        self._trigger = trigger or self._trigger
        status = {"pid": os.getpid(), "loads": self.reloads, "trigger": self._trigger}
        status["recorded"] = self.counters.recorded
        status["events_per_s"] = round(self._events_per_s, 1)
        down = self._journal_down
        status["journal"] = "ok" if down is None else {
            "error": down.error, "since_ns": str(down.since_ns), "not_recorded": down.total,
        }  # fmt: skip
        if self.enforcer is not None and self.enforcer.restart_hold is not None:
            status["fanotify_restart"] = self.enforcer.restart_hold
        status["updated_ns"] = str(time.time_ns())
        write_status(self.config.run_dir, {**status, **self.last_load})

    def _status_line(self) -> str:
        """systemd's ``STATUS=``: the policy in force and how its last load went, the event
        rate, what is recorded and lost since start and, forwarding, what the collector does
        not hold yet (``Forwarder.status``)."""
        digest = self.enforcer.digest if self.enforcer is not None else None
        policy = f"policy {short_digest(digest)}" if digest else "no policy"
        result = self.last_load.get("result")
        if result == "rejected":
            policy += " (reload rejected, kept)"
        elif result == "mismatch":
            policy += " (kernel differs, see sealtrail status)"
        counters = self.counters
        recorded = f"recorded {counters.recorded}, lost {counters.lost}"
        down = self._journal_down
        if down is not None:
            recorded = (f"JOURNAL NOT WRITABLE ({down.error}), {down.total} records not recorded "
                        f"since {_clock_text(down.since_ns)}; {recorded}")  # fmt: skip
        parts = [policy, f"{self._events_per_s:.1f} events/s", recorded]
        if self.forwarder is not None:
            fwd = self.forwarder.status()
            parts.append(f"forward lag {fwd['lag_records']} records, {fwd['lag_seconds']:.1f} s")
        return "; ".join(parts)

    def _loop(self, recorder: Recorder) -> Recorder:
        """Run until asked to stop; returns the recorder in use then (its journal may have
        been swapped: ``agent.journaldown``)."""
        clock = self.make.clock
        next_status = clock() + STATUS_INTERVAL_S
        wd = self.notifier.watchdog_interval_s
        next_watchdog = clock()
        next_reopen = 0.0
        recorded_before = self.counters.recorded
        hang_file = os.environ.get(TEST_HANG_ENV)  # read once: not in the loop
        while not self._stopping:
            _hang_if_asked(hang_file)
            journal = recorder.journal
            try:
                recorder.poll(POLL_MS)
                journal.tick()
                self.stats.observe(journal)
                self._forward(journal)
                self._record_problems(journal)
                self._dispatch_signals(journal)
            except JournalError as exc:
                recorder = self._journal_failed(recorder, exc)
                next_reopen = clock() + REOPEN_SECONDS
            now = clock()
            if isinstance(recorder.journal, JournalDown) and now >= next_reopen:
                recorder = self._reopen_journal(recorder)
                next_reopen = now + REOPEN_SECONDS
            if wd is not None and now >= next_watchdog:
                self.notifier.watchdog()  # from the main loop only: a stuck loop stops pinging
                next_watchdog = now + wd
            if now >= next_status:
                counters = recorder.counters
                interval = now - next_status + STATUS_INTERVAL_S
                self._events_per_s = (counters.recorded - recorded_before) / interval
                recorded_before = counters.recorded
                self._write_status()
                self.notifier.status(self._status_line())
                next_status = now + STATUS_INTERVAL_S
        return recorder

    def _journal_failed(self, recorder: Recorder, exc: JournalError) -> Recorder:
        """A write failed and closed the journal: go on enforcing, counting what is not
        recorded (``JournalDown``). Any other journal error is the agent's own bug: raised."""
        journal = recorder.journal
        if not isinstance(journal, JournalWriter) or not journal.closed:
            raise exc
        log.error("%s: recording stops, enforcement goes on; the journal is tried again every "
                  "%g s and what is not recorded meanwhile is journaled as lost", exc,
                  REOPEN_SECONDS, extra={"SEALTRAIL_EVENT": "journal_down"})  # fmt: skip
        down = JournalDown(journal.host, journal.boot_id, journal.sealed_size, str(exc))
        self._journal_down = down
        self._write_status()
        self.notifier.status(self._status_line())
        return Recorder(down, recorder.stream, recorder.enforcer, self.counters)

    def _reopen_journal(self, recorder: Recorder) -> Recorder:
        """Open the journal again (the writer cuts a torn last line and says so); the first
        record: what was not recorded while it could not be written. Still failing: stay."""
        down = recorder.journal
        assert isinstance(down, JournalDown)
        try:
            writer = self.make.open_writer(self.config)
        except (SealtrailError, OSError) as exc:
            log.debug("journal still not writable: %s", exc)
            return recorder
        try:
            writer.append("loss", down.loss_fields())
            writer.flush_and_seal()
        except JournalError as exc:
            log.debug("journal still not writable: %s", exc)
            return recorder
        log.warning("the journal is writable again; %d records were not recorded while it was "
                    "not (journaled as a loss record)", down.total,
                    extra={"SEALTRAIL_EVENT": "journal_up"})  # fmt: skip
        self.journal = writer
        self._journal_down = None
        self._write_status()
        self.notifier.status(self._status_line())
        return Recorder(writer, recorder.stream, recorder.enforcer, self.counters)

    def _record_problems(self, journal: Journal) -> None:
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
            text_safe({"digest": digest, "errors": errors, "trigger": "directory change"}),
        )
        self.last_load = text_safe(
            {**self.last_load, "result": "mismatch", "digest": digest, "errors": errors}
        )
        self._write_status("directory change")
        self.notifier.status(self._status_line())

    def _dispatch_signals(self, journal: Journal) -> None:
        while self._signals:
            sig = self._signals.popleft()
            if sig == signal.SIGHUP:
                log.info("SIGHUP: reload")
                self.notifier.reloading()
                journal.append("reload", {"trigger": "SIGHUP"})
                self._load_policies(journal, "SIGHUP")
                self.notifier.ready(self._status_line())  # rejected too: the old set is in force
            else:
                log.info("%s: stopping", signal.Signals(sig).name)
                self._stopping = True
