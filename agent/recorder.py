"""The recorder: what the event stream yields, into the journal, in order.

It turns events into journal fields, chooses the record path once (the native encoder takes
the events that are only recorded, straight from ring-buffer bytes, where the native core is
loaded and the stream hands out batches; everything else is decoded and journaled in Python),
and keeps the rule that makes the journal evidence: an event the enforcer acts on is in the
journal before the enforcer sees it, and what the enforcer decided follows it.
"""

from __future__ import annotations

import collections
import ctypes
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.enforce.enforcer import ExeHistory
from agent.enforce.verdict import VerdictRecord
from agent.events import model
from agent.events.decode import KIND_OP, OP_KIND, Decoder, record_op
from agent.events.stream import StreamItem
from agent.events.who import LoginIdentities
from agent.journal.canonical import MAX_SAFE_INT, JsonValue
from agent.journaldown import Journal
from agent.kernel import abi
from agent.kernel.ringbuf import record_at
from agent.native.encoder import EventEncoder
from agent.native.layout import ENC_END, ENC_SLOW
from agent.policy.evaluate import Effect
from agent.policy.source import shown

log = logging.getLogger(__name__)

#: Event kinds the native encoder journals straight from ring-buffer bytes (native/strecord.c)
#: when nothing but the journal needs them.
NATIVE_KINDS = ("connect", "bind", "listen", "accept", "fork", "exit")


class ProcessTable(ExeHistory, Protocol):
    """The stream's process table (``agent.events.proctable.ProcTable``), which also learns
    of the forks and exits the native encoder journals (the Python path observes them)."""

    def forked(self, child_pid: int, exe: str | None) -> None: ...
    def exited(self, pid: int) -> None: ...


class RecordSource(Protocol):
    """What the recorder reads: ``agent.events.stream.EventStream`` (a fake in unit tests)."""

    @property
    def proctable(self) -> ProcessTable: ...
    @property
    def decoder(self) -> Decoder: ...
    @property
    def batches(self) -> bool: ...
    def poll(self, timeout_ms: int) -> list[StreamItem]: ...
    def poll_batch(self, timeout_ms: int) -> bytes: ...
    def drain(self) -> list[StreamItem]: ...
    def decode_records(self, raws: list[bytes]) -> list[StreamItem]: ...
    def due_loss(self) -> model.LossEvent | None: ...


class Judge(Protocol):
    """What the recorder hands events to: ``agent.enforce.enforcer.Enforcer``."""

    verdicts: collections.deque[VerdictRecord]

    def needs(self, kind: str) -> bool: ...
    def handle(self, ev: model.Event) -> None: ...


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


def text_safe(fields: dict[str, Any]) -> dict[str, JsonValue]:
    """Fields that may carry file names or paths (policy files, verdict objects, exes): bytes
    that are not UTF-8 escaped as in events, so that no name can stop the agent."""
    model.escape_undecodable(fields)
    return fields


def loss_fields(loss: model.LossEvent) -> dict[str, JsonValue]:
    drops: dict[str, JsonValue] = {k: v for k, v in sorted(loss.by_kind.items())}
    return {"drops": drops, "count": loss.count, "since_ns": str(loss.since_ns)}


def record_batch(
    journal: Journal,
    encoder: EventEncoder,
    batch: bytes,
    ops_mask: int,
    slow: Callable[[list[bytes]], None],
    kinds: Counter[str] | None = None,
    proc: Callable[[bytes], None] | None = None,
) -> int:
    """Journal a ring-buffer batch in order; returns the records the native encoder took.

    Runs of ``ops_mask`` records go to ``journal.append_events``; the record where the encoder
    stops, and every following one up to the next it may take, go to ``slow`` as raw records.
    ``kinds``: count the records the encoder took by kind there (``count_kinds``). ``proc``:
    given each fork or exit record the encoder took, before the next run is scanned (the
    process table learns it there, as the Python path's ``observe``).
    """
    taken_total = 0
    pos, end = 0, len(batch)
    while pos < end:
        start = pos
        run_end = encoder.scan(batch, pos, ops_mask)
        stop = ENC_END
        while pos < run_end:
            before = pos
            pos, taken, stop = journal.append_events(encoder, batch, pos)
            taken_total += taken
            if kinds is not None and taken:
                count_kinds(batch, before, pos, kinds)
            if stop == ENC_SLOW:
                break
        if proc is not None:
            for at in encoder.procs:
                if at >= pos:
                    break  # not taken: the Python path observes it
                proc(record_at(batch, at)[0])
        if pos >= end:
            break
        if stop != ENC_SLOW and run_end > start:
            continue  # the run ended at its pid limit: scan the next one
        raws: list[bytes] = []
        while pos < end:
            raw, after = record_at(batch, pos)
            op = record_op(raw)
            if raws and op < 64 and ops_mask >> op & 1:
                break
            raws.append(raw)
            pos = after
        slow(raws)
    return taken_total


#: Where a record's opcode is in a native batch, from its ``[u32 size]``: the ABI mirror's.
_OP_START = 4 + abi.Hdr.op.offset
_OP_END = _OP_START + abi.Hdr.op.size


def observe_native(table: ProcessTable, raw: bytes) -> None:
    """A fork or exit record the native encoder journaled, told to the process table as the
    Python path's ``observe`` would: a child runs its parent's binary, an exited pid none."""
    p = abi.Proc.from_buffer_copy(raw[: ctypes.sizeof(abi.Proc)])
    if p.hdr.op == abi.Op.FORK:
        table.forked(p.child_pid, table.lookup(p.hdr.pid, ""))
    else:
        table.exited(p.hdr.pid)


def count_kinds(batch: bytes, start: int, end: int, kinds: Counter[str]) -> None:
    """Count by kind the records of ``batch[start:end]`` (whole ``[u32 size][record]``s,
    ``agent.kernel.ringbuf``), reading only each header's opcode (no record is copied)."""
    ops = [0] * 64  # the encoder takes only ops below 64 (its ops mask): a list, no hashing
    pos = start
    size_of = int.from_bytes
    while pos < end:
        ops[size_of(batch[pos + _OP_START : pos + _OP_END], "little")] += 1
        pos += 4 + size_of(batch[pos : pos + 4], "little")
    for op, kind in OP_KIND.items():
        if ops[op]:
            kinds[kind] += ops[op]


@dataclass
class RecordCounters:
    """What the recorder journaled since start (the stop record and the status line), and by
    kind, drop kind and verdict for the metrics endpoint (``agent.metrics``)."""

    recorded: int = 0  # event records
    recorded_native: int = 0  # of which the native encoder wrote
    lost: int = 0  # events the kernel dropped, as loss records say
    verdicts: int = 0
    #: Event records by kind. The native path's are counted only where ``native_kinds`` is set
    #: (with --metrics): a scan of the batch in Python, ~0.3 us per event it took.
    kinds: Counter[str] = field(default_factory=Counter)
    native_kinds: bool = False
    #: Events the kernel dropped, by kind, as loss records say.
    drops: Counter[str] = field(default_factory=Counter)
    #: Verdict records by (action, rule).
    verdicts_by: Counter[tuple[str, str]] = field(default_factory=Counter)

    def fields(self) -> dict[str, JsonValue]:
        """The stop record's fields."""
        return {"recorded": self.recorded, "recorded_native": self.recorded_native,
                "lost": self.lost, "verdicts": self.verdicts}  # fmt: skip


@dataclass
class Recorder:
    """Journals what ``stream`` yields and hands the enforcer what it needs (module doc)."""

    journal: Journal
    stream: RecordSource
    enforcer: Judge
    counters: RecordCounters = field(default_factory=RecordCounters)
    #: whose the verdicts are: the login uid and session of each pid, from its events
    identities: LoginIdentities = field(default_factory=LoginIdentities)

    def __post_init__(self) -> None:
        self._encoder = self._native_encoder()

    @property
    def native(self) -> bool:
        """Whether the native encoder takes the events that are only recorded."""
        return self._encoder is not None

    def _native_encoder(self) -> EventEncoder | None:
        """The native record path, where the native core is loaded (else all in Python)."""
        stream, journal = self.stream, self.journal
        if not (stream.batches and journal.takes_events):
            return None
        lookup = stream.proctable.lookup
        return EventEncoder(
            host=journal.host,
            boot_id=journal.boot_id,
            clock_offset=stream.decoder.clock.offset_ns,
            exe_of=lambda pid: lookup(pid, ""),
        )

    def poll(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for the stream and journal what came."""
        if self._encoder is None:
            self.record(self.stream.poll(timeout_ms))
        else:
            self._record_batch(self._encoder, self.stream.poll_batch(timeout_ms))

    def drain(self) -> None:
        """Journal what the kernel already queued (before stopping: it is still evidence)."""
        self.record(self.stream.drain())

    def record(self, items: list[StreamItem]) -> None:
        """Journal decoded items with one write per run, and let the enforcer see the ones it
        needs; what it acts on is in the journal before it acts."""
        journal, enforcer, counters = self.journal, self.enforcer, self.counters
        pending: list[tuple[str, Mapping[str, JsonValue]]] = []
        for item in items:
            if isinstance(item, model.LossEvent):
                counters.lost += item.count
                counters.drops.update(item.by_kind)
                log.warning(
                    "kernel dropped %d events since %d",
                    item.count,
                    item.since_ns,
                    extra={"SEALTRAIL_EVENT": "loss"},
                )
                pending.append(("loss", loss_fields(item)))
                continue
            self.identities.note(item)
            guard = isinstance(item, model.GuardEvent)
            if not guard:  # a guard decision is a verdict record
                pending.append(("event", event_fields(item)))
                counters.recorded += 1
                counters.kinds[item.kind] += 1
            if guard or enforcer.needs(item.kind):
                if pending:
                    journal.append_many(pending)
                    pending = []
                enforcer.handle(item)
        if pending:
            journal.append_many(pending)
        self._record_verdicts()

    def _native_ops(self) -> int:
        """Ops whose events are only recorded, as a bit mask: the native encoder takes them."""
        mask = 0
        for kind in NATIVE_KINDS:
            if not self.enforcer.needs(kind):
                mask |= 1 << KIND_OP[kind]
        return mask

    def _record_batch(self, encoder: EventEncoder, batch: bytes) -> None:
        """One ring-buffer batch, in order: events that are only recorded through the native
        encoder, every other record through ``record`` (decode, enforcer)."""
        stream = self.stream
        taken = record_batch(
            self.journal,
            encoder,
            batch,
            self._native_ops(),
            lambda raws: self.record(stream.decode_records(raws)),
            self.counters.kinds if self.counters.native_kinds else None,
            self._native_proc,
        )
        self.counters.recorded += taken
        self.counters.recorded_native += taken
        loss = stream.due_loss()
        # with no loss too: the verdicts the enforcer's own threads made (fanotify) are
        # journaled at every poll, as on the Python path, not at the next decoded record
        self.record([loss] if loss is not None else [])

    def _native_proc(self, raw: bytes) -> None:
        observe_native(self.stream.proctable, raw)

    def _record_verdicts(self) -> None:
        verdicts = self.enforcer.verdicts
        while verdicts:
            verdict = verdicts.popleft()
            fields = verdict.fields()
            fields.update(self.identities.fields(verdict.pid))
            seq = self.journal.append("verdict", text_safe(fields))
            self.counters.verdicts += 1
            self.counters.verdicts_by[verdict.action, verdict.rule] += 1
            if verdict.action in _LOGGED_ACTIONS:
                log_verdict(verdict, seq)


#: Verdicts that are also logged: what was stopped, or would be in enforce mode. Allow and
#: audit verdicts are in the journal only (on a busy host they are its volume).
_LOGGED_ACTIONS = frozenset({Effect.DENY, Effect.KILL, Effect.WOULD_DENY, Effect.WOULD_KILL})


def log_verdict(verdict: VerdictRecord, seq: int) -> None:
    """One log line for a verdict journaled as ``seq``, with its journal fields
    (``agent.logsetup``)."""
    log.warning(
        "%s %s by rule %s (policy %s): pid %d %s",
        verdict.action,
        verdict.operation,
        verdict.rule,
        verdict.policy,
        verdict.pid,
        shown(verdict.exe or "?"),  # bytes that are not UTF-8 as \xNN
        extra={
            "SEALTRAIL_EVENT": "verdict",
            "SEALTRAIL_ACTION": verdict.action,
            "SEALTRAIL_RULE": verdict.rule,
            "SEALTRAIL_POLICY": verdict.digest,
            "SEALTRAIL_SEQ": seq,
        },
    )
