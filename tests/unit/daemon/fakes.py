"""The daemon's kernel side, faked for unit tests: a stream over a script of raw ring-buffer
records (decoded by the real EventStream code, which needs no kernel for that) and an enforcer
that keeps what it was handed, with what the journal held at that moment."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.enforce.enforcer import InstallResult
from agent.enforce.verdict import VerdictRecord
from agent.events import model
from agent.events.stream import EventStream, StreamItem
from agent.journal.canonical import JsonValue
from agent.policy.compile import CompiledPolicySet, compile_policy_set
from agent.policy.source import PolicySet
from tests.agentproc import journal_records
from tests.unit.events.records import batch


class ScriptedStream:
    """Poll number n hands out the n-th list of raw records of ``polls`` (nothing once they
    run out), as one native batch where ``batches``; ``on_poll(n)`` runs first (a test sends
    a signal or moves the clock there)."""

    def __init__(
        self,
        polls: list[list[bytes]],
        *,
        batches: bool = False,
        on_poll: Callable[[int], None] | None = None,
    ) -> None:
        self._events = EventStream()  # its decode path: the process table, the Decoder
        self.proctable = self._events.proctable
        self.decoder = self._events.decoder
        self.batches = batches
        self._polls = collections.deque(polls)
        self.on_poll = on_poll
        self.polls = 0
        self.queued: list[bytes] = []  # what drain() finds when the agent stops
        self.losses: collections.deque[model.LossEvent] = collections.deque()  # due_loss()
        self.started = self.closed = False
        self.reconfigured: list[tuple[frozenset[str], tuple[str, ...]]] = []

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True

    def _next(self) -> list[bytes]:
        self.polls += 1
        if self.on_poll is not None:
            self.on_poll(self.polls)
        return self._polls.popleft() if self._polls else []

    def _with_loss(self, items: list[StreamItem]) -> list[StreamItem]:
        loss = self.due_loss()
        return [*items, loss] if loss is not None else items

    def poll(self, timeout_ms: int) -> list[StreamItem]:
        return self._with_loss(self.decode_records(self._next()))

    def poll_batch(self, timeout_ms: int) -> bytes:
        return batch(self._next())

    def drain(self) -> list[StreamItem]:
        return self._with_loss(self.decode_records(self.queued))

    def decode_records(self, raws: list[bytes]) -> list[StreamItem]:
        return self._events.decode_records(raws)

    def due_loss(self) -> model.LossEvent | None:
        return self.losses.popleft() if self.losses else None

    def shared_maps(self) -> dict[str, int]:
        return {}

    def reconfigure(
        self, extra_kinds: frozenset[str], path_patterns: tuple[str, ...], open_flags: bool = False
    ) -> None:
        self.reconfigured.append((extra_kinds, path_patterns))

    def boot_ns(self, wall_ns: int) -> int:
        return wall_ns - (time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME))

    def pending_open_flags(self, tid: int) -> int | None:
        return None


def verdict_on(ev: model.Event, action: str = "deny") -> VerdictRecord:
    return VerdictRecord(action=action, rule="r1", policy="p", digest="d" * 64,
                         mechanism="fanotify", operation=ev.kind, after_the_fact=False,
                         pid=ev.pid, exe=ev.exe, object={})  # fmt: skip


class RecordingEnforcer:
    """Judges the kinds in ``judged`` (a deny verdict on each); keeps every event handed to it
    with the journal's records at that moment (``journal``: its directory)."""

    def __init__(self, journal: Path, judged: frozenset[str] = frozenset()) -> None:
        self.journal = journal
        self.judged = judged
        self.verdicts: collections.deque[VerdictRecord] = collections.deque()
        self.problems: collections.deque[str] = collections.deque()
        self.takeover: dict[str, JsonValue] | None = None
        self.fanotify_takeover: dict[str, JsonValue] | None = None
        self.restart_hold: str | None = None
        self.handled: list[tuple[model.Event, list[dict[str, Any]]]] = []
        self.installed: list[CompiledPolicySet] = []
        self.install_errors: tuple[str, ...] = ()
        self.closed = False

    @property
    def digest(self) -> str | None:
        return self.installed[-1].digest if self.installed else None

    def install(
        self, policy_set: PolicySet, compiled: CompiledPolicySet | None = None
    ) -> InstallResult:
        self.installed.append(compiled or compile_policy_set(policy_set))
        return InstallResult((), self.install_errors)

    def needs(self, kind: str) -> bool:
        return kind in self.judged

    def handle(self, ev: model.Event) -> None:
        self.handled.append((ev, journal_records(self.journal)))
        if not isinstance(ev, model.GuardEvent):
            self.verdicts.append(verdict_on(ev))

    def close(self) -> None:
        self.closed = True
