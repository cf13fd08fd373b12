"""The forwarder: ships the journal to the collector, exactly once, on a thread of its own.

It asks the collector for the host's head, sends the stored lines from there
(``source.JournalSource``), and moves on only when a signed receipt for exactly what it sent
checks out with the collector's key. The journal is the spool: nothing is queued, copied or
deleted, so a restart resumes from the head, and a batch the collector made durable but whose
answer was lost is sent again and skipped there (same bytes at an accepted seq).

- 409 gap: resume from the size the collector names.
- 413 (a batch over the collector's body limit): the same records again in half the bytes,
  down to one seal interval (a batch ends at a seal).
- A head this journal does not continue (the collector holds more records than it has, or its
  last record is not this journal's): the journal was wiped, cut or replaced since. Logged and
  journaled, then the journal is sent from record 0 (``_probe_until``): the collector compares
  what overlaps and rejects with the precise finding, ``rollback`` for a wiped journal (record
  0 differs), ``fork`` at the first differing seq; matching records are acknowledged as held.
- 422 rejection: logged and journaled once, kept in the status file, then retried only after a
  long backoff (``Pacing.refused``: 5 minutes, doubling to an hour): a journal is immutable,
  so the same batch fails the same way until someone changes the collector (re-enrollment).
  The records before the rejected seq are sent on their own first.
- Network errors and 5xx: exponential backoff with full jitter (``pacing``), from the head
  again. 429 and 503 with Retry-After: exactly as long as asked.
- Catch-up is rate-limited (``Pacing.rate`` records/s).
- Only records the writer made durable (``notify(sealed_size)``) are sent: a record that a
  power loss could take back after the collector stored it would fork the host there.

A thread, not a process: its work is reading files and talking to the network, done with
the GIL released (``pread``, socket IO, ssl's encryption), so it shares the agent's interpreter
without holding up the event path; receipts and errors reach the journal through
``take_records``, drained by the main loop, with no IPC and no second copy of the journal's
state. It never touches the journal writer (not thread-safe), and nothing waits on it: the
main loop only takes a list and sets an int. The LSM and cgroup programs enforce in the kernel;
the fanotify judges are Python threads and need the GIL as the main loop does, so what follows
holds for them too. ``bench/forward.py`` measured it (2 CPUs, shared machine): while the
forwarder catches up at full speed, the main thread's wake-ups from a 1 ms sleep are late by
3.6-5.6 ms at p99 (median unchanged, 0.1 ms), no worse than with the same forwarder in a child
process on the same CPU (4.6-6.2 ms): what it costs is a CPU's share, not the GIL. Its CPU:
0.3-0.4 us per record in catch-up, 0.75 us per event at 10 k events/s of 250-byte records;
a request costs 1.5-2 ms whatever its size (hence ``Pacing.batch_interval``), a byte about
1 ns (TLS, loopback TCP with the receiving side's work, the read). ``bench/forward_agent.py``:
in the real agent (550-byte records) forwarding adds 1.5 us per event to its 3 us.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from agent.collector.protocol import Receipt
from agent.errors import FormatError, ForwardError, JournalError
from agent.forward import fleetnote
from agent.forward.client import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    Answer,
    Bundle,
    CollectorClient,
    Endpoint,
)
from agent.forward.pacing import RETRY_AFTER_CAP, Pacing, RateLimit
from agent.forward.records import receipt_fields
from agent.forward.source import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_RECORDS, Batch, JournalSource
from agent.journal.canonical import JsonValue
from agent.journal.keys import PublicKey
from agent.journal.merkle import CompactTree
from agent.journal.record import RECORD_PREFIX, parse_line
from agent.journal.roots import SealRoots
from agent.status import write_status

log = logging.getLogger(__name__)

DEFAULT_PACING = Pacing()
#: When caught up, how often the journal's durable size is looked at without a notify.
IDLE_POLL = 1.0
MIN_BATCH_BYTES = 4096  # what a 413 halves the batch down to, at least
#: Receipts are journaled at most this often (and only for records other than bookkeeping).
RECEIPT_INTERVAL = 1.0
STATUS_INTERVAL = 1.0
STATUS_NAME = "forward.json"
#: Records the forwarder itself causes: a receipt for nothing else is not journaled (each
#: journaled receipt is a record to forward, whose receipt would be journaled, forever).
#: at most one fleet_checkpoint record per this many seconds: each is forwarded and accepted,
#: which grows the fleet log, so an idle host would otherwise journal one per fleet publication
FLEET_RECORD_INTERVAL = 60.0
BOOKKEEPING = frozenset({"receipt", "forward_error", "seal", "fleet_checkpoint"})
#: forward_error records waiting for the main loop, at most.
MAX_QUEUED = 64
#: Characters of a collector's own text (a rejection's code and detail) kept in what is
#: journaled, logged and in the status file: a hostile collector's megabyte stays out.
MAX_DETAIL = 1000
MAX_CODE = 64


@dataclass(frozen=True)
class ForwardConfig:
    """``sealtrail agent --forward URL --forward-tls DIR [--forward-wait S] [--forward-rate N]``."""

    url: str
    tls_dir: Path
    pacing: Pacing = DEFAULT_PACING
    batch_bytes: int = DEFAULT_BATCH_BYTES
    batch_records: int = DEFAULT_BATCH_RECORDS
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT


class Transport(Protocol):
    """What the forwarder needs of a collector connection: ``client.CollectorClient``."""

    def head(self) -> Answer: ...
    def ingest(self, start: int, body: memoryview) -> Answer: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class Wait(NamedTuple):
    """What ``step`` asks for next: wait ``seconds``; ``idle``: or until new records are
    durable (a backoff is not cut short by new records)."""

    seconds: float
    idle: bool = False


NOW = Wait(0.0)


class Forwarder:
    """Forwards the journal of ``host`` (module doc). ``durable``: the journal's sealed size
    when it starts; ``notify`` raises it."""

    def __init__(
        self,
        source: JournalSource,
        client: Transport,
        collector_key: PublicKey,
        *,
        host: str,
        durable: int,
        collector: str,
        pacing: Pacing = DEFAULT_PACING,
        status_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        roots: SealRoots | None = None,
    ) -> None:
        """``roots``: the writer's Merkle roots at its recent seals (``JournalWriter.seal_roots``);
        a receipt's root at a size not among them is computed from the journal."""
        self.host = host
        self.collector = collector
        self.pacing = pacing
        self._source = source
        self._roots = roots or SealRoots()
        #: the tree of the journal's first records, computed when ``roots`` did not know a size
        #: (a head at start-up, a receipt far behind); extended from where it is when it can be
        self._tree = CompactTree()
        self._tree_source: JournalSource | None = None
        self._client = client
        self._key = collector_key
        self._status_dir = status_dir
        self._clock = clock
        self._rng = rng or random.Random()
        self._rate = RateLimit(pacing.rate, clock)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        # shared with the main thread, under _cond
        self._durable = durable
        self._stop_at: float | None = None
        self._waiting_for_records = False  # an idle wait, which new records end
        self._records: collections.deque[tuple[str, dict[str, JsonValue]]] = collections.deque(
            maxlen=MAX_QUEUED
        )
        self._receipt: Receipt | None = None  # the newest verified receipt
        #: the largest fleet checkpoint covering this host the collector sent (thread's own)
        self.fleet: fleetnote.FleetNote | None = None
        self._fleet_journaled: float | None = None  # when the last fleet_checkpoint was queued
        #: the last fleet answer that checked out: the collector repeats it with every batch
        #: until it publishes another, and the same document checks the same way again
        self._fleet_checked: object = None
        self._unjournaled = False  # it acknowledges records other than bookkeeping
        self._journaled_at = -RECEIPT_INTERVAL
        # the thread's own
        self._head: int | None = None  # what the collector holds; None: ask it
        self._acked = 0  # covered by a verified receipt
        self._cap: int | None = None  # send no further than this (records before a rejected one)
        #: sending from 0 to show the collector where this journal differs from what it holds:
        #: receipts for more than was sent are fine up to here (records it holds already)
        self._probe_until: int | None = None
        self._send_after = 0.0  # caught up: no batch before this (Pacing.batch_interval)
        self._sending_all = False  # the batch in flight holds all that was durable
        self._attempt = 0
        self._rejections = 0
        self._problem_key: tuple[object, ...] | None = None
        self._outage_since: float | None = None
        self._state = "starting"
        self._last_error: dict[str, Any] | None = None
        self._rejected: dict[str, Any] | None = None
        self._oldest_unacked_ns: int | None = None
        self.sent_records = 0
        self.sent_bytes = 0
        self._status_at = -STATUS_INTERVAL

    @classmethod
    def open(
        cls,
        config: ForwardConfig,
        journal_dir: Path,
        *,
        host: str,
        durable: int,
        run_dir: Path,
        roots: SealRoots | None = None,
    ) -> Forwarder:
        """A forwarder to ``config.url`` with the bundle in ``config.tls_dir``; ``ForwardError``
        names what is wrong with either before anything is sent."""
        endpoint = Endpoint.parse(config.url)
        bundle = Bundle.load(config.tls_dir)
        client = CollectorClient(
            endpoint,
            bundle.context(),
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
        )
        source = JournalSource(
            journal_dir, max_bytes=config.batch_bytes, max_records=config.batch_records
        )
        return cls(
            source,
            client,
            bundle.collector_key,
            host=host,
            durable=durable,
            collector=str(endpoint),
            pacing=config.pacing,
            status_dir=run_dir,
            roots=roots,
        )

    # ------------------------------------------------------------------ the main thread's side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sealtrail-forward", daemon=True)
        self._thread.start()

    def notify(self, durable: int) -> None:
        """Records up to ``durable`` are on disk (the writer's ``sealed_size``): send them."""
        with self._cond:
            if durable > self._durable:
                self._durable = durable
                if self._waiting_for_records:  # else the wake-up is for nothing (``_sleep``)
                    self._cond.notify()

    def take_records(self) -> list[tuple[str, dict[str, JsonValue]]]:
        """Records for the journal: forward errors, and the newest receipt at most once per
        second (``RECEIPT_INTERVAL``), if it acknowledges more than bookkeeping records."""
        now = self._clock()
        with self._cond:
            out = list(self._records)
            self._records.clear()
            receipt = self._receipt
            if receipt and self._unjournaled and now - self._journaled_at >= RECEIPT_INTERVAL:
                out.append(("receipt", receipt_fields(receipt)))
                self._unjournaled = False
                self._journaled_at = now
        return out

    def stop(self, timeout: float | None = None) -> bool:
        """Forward what is durable (call ``notify`` with the final seal first), waiting at most
        ``timeout`` seconds (default ``pacing.stop_wait``), then stop. True if the collector
        holds it all; what is left is sent by the next start, from the head."""
        wait = self.pacing.stop_wait if timeout is None else timeout
        with self._cond:
            self._stop_at = self._clock() + wait
            self._cond.notify()
        thread = self._thread
        if thread is not None:
            thread.join(wait)
            if thread.is_alive():  # blocked in a request: cut it, the loop then sees the time
                self._client.abort()
                thread.join(1.0)
        with self._cond:
            return self._head is not None and self._head >= self._durable

    def status(self) -> dict[str, Any]:
        """What the status file holds (``sealtrail status``)."""
        with self._cond:
            durable = self._durable
        lag = max(0, durable - self._acked)
        oldest = self._oldest_unacked_ns
        lag_s = (time.time_ns() - oldest) / 1e9 if lag and oldest is not None else 0.0
        receipt = self._receipt
        return {
            "pid": os.getpid(),
            "collector": self.collector,
            "state": self._state,
            "head": self._head,
            "acknowledged": self._acked,
            "durable": durable,
            "lag_records": lag,
            "lag_seconds": round(max(0.0, lag_s), 3),
            "last_receipt": None
            if receipt is None
            else {"collector": receipt.collector, "size": receipt.size, "ts": str(receipt.ts)},
            "last_error": self._last_error,
            "rejected": self._rejected,
            # the largest witnessed fleet checkpoint covering this host (fleetnote)
            "fleet": None
            if self.fleet is None
            else {
                "size": self.fleet.size,
                "index": self.fleet.index,
                "host_size": self.fleet.host_size,
            },
            "sent_records": self.sent_records,
            "sent_bytes": self.sent_bytes,
            "updated_ns": _now_ns(),
        }

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    stop_at, durable = self._stop_at, self._durable
                if stop_at is not None and (
                    self._clock() >= stop_at or (self._head is not None and self._head >= durable)
                ):
                    break
                try:
                    wait = self.step()
                except Exception:  # a bug must not end forwarding for the agent's lifetime
                    log.exception("forwarder step failed")
                    self._attempt += 1
                    self._head = None
                    wait = self._retry()
                self._write_status()
                self._sleep(wait)
        finally:
            self._state = "stopped"
            self._client.close()
            self._write_status(force=True)

    def _sleep(self, wait: Wait) -> None:
        with self._cond:
            until = self._clock() + wait.seconds
            while True:
                if self._stop_at is not None:
                    until = min(until, self._stop_at)
                    if wait.idle:
                        return  # stopping: the loop decides whether anything is left
                if wait.idle and self._head is not None and self._durable > self._head:
                    return
                left = until - self._clock()
                if left <= 0:
                    return
                # a backoff or the batch interval is not cut short by new records, so the
                # main loop's notify (at every seal) only wakes an idle wait
                self._waiting_for_records = wait.idle
                try:
                    self._cond.wait(left)
                finally:
                    self._waiting_for_records = False

    def step(self) -> Wait:
        """One exchange with the collector (or none, when caught up or waiting on the rate)."""
        try:
            if self._head is None:
                return self._ask_head()
            with self._cond:
                durable = self._durable
            if self._cap is not None and self._head >= self._cap:
                self._cap = None
            limit = durable if self._cap is None else min(durable, self._cap)
            if self._head >= limit:
                self._state = "idle"
                return Wait(IDLE_POLL, idle=True)
            delay = self._rate.delay()
            if self._stop_at is None:  # stopping: the final seal goes at once
                delay = max(delay, self._send_after - self._clock())
            if delay > 0:
                return Wait(delay)
            batch = self._source.read(self._head, limit)
            if batch is None:  # durable records are complete lines: the files say otherwise
                return Wait(IDLE_POLL)
            if not batch.sealed:  # the collector would store none of it
                if self._cap is not None:  # no seal before the rejected record
                    self._cap = None
                    self._head = None
                    return self._rejected_wait()
                self._problem("journal", f"no seal after record {batch.start} before {limit}")
                return self._retry()
            if batch.start == self._acked:
                self._oldest_unacked_ns = batch.first.ts
            self._state = "forwarding"
            self._sending_all = batch.end >= durable
            answer = self._client.ingest(batch.start, batch.data)
            self._rate.spend(batch.count)
            return self._answered(batch, answer)
        except ForwardError as exc:
            return self._unreachable(str(exc))
        except JournalError as exc:
            self._head = None
            self._problem("journal", str(exc))
            return self._retry()

    # ------------------------------------------------------------------ answers
    def _ask_head(self) -> Wait:
        answer = self._client.head()
        if answer.status != 200:
            return self._refused(answer)
        size, host = answer.body.get("size"), answer.body.get("host")
        if type(size) is not int or size < 0:
            what = answer.problem or f"without a size: {answer.body!r:.200}"
            self._head = None
            self._problem("protocol", f"the head answer is not one: {what}")
            return self._retry()
        if host != self.host:
            self._problem(
                "protocol",
                f"the collector binds this client certificate to host {host!r}, but the "
                f"journal is host {self.host!r}: --forward-tls names another host's bundle",
            )
            return self._rejected_wait()
        self._reachable()
        last = answer.body.get("last_hash")
        last = last if isinstance(last, str) else None
        if answer.body.get("receipt") is not None and size:
            try:
                receipt = Receipt.from_dict(answer.body["receipt"])
                receipt.verify(self._key, host=self.host)
            except FormatError as exc:
                self._problem("receipt", f"the head's receipt is not trusted: {exc}")
            else:
                differs = self._root_differs(receipt) if receipt.size == size else None
                if receipt.size == size and differs is None:
                    self._acked = max(self._acked, size)
                elif differs is not None and last is not None and self._holds(size - 1, last):
                    # its last record is this journal's, its root is not: a lie, not a wiped
                    # or replaced journal (``_move_head`` judges those)
                    self._head = None
                    self._problem("root-mismatch", f"the head's receipt: {differs}")
                    return self._retry()
        return self._move_head(size, last)

    def _answered(self, batch: Batch, answer: Answer) -> Wait:
        status, body = answer.status, answer.body
        if status == 200:
            return self._accepted(batch, body)
        if status == 409 and body.get("error") == "gap":
            size = body.get("size")
            if type(size) is int and size >= 0:
                self._reachable()
                log.info("collector: gap, it holds %d records; resuming there", size)
                return self._move_head(size)
        if status == 422:
            self._reachable()
            return self._rejected_batch(batch, body)
        if status == 413 and batch.count > 1:  # over the collector's body limit: halve, again
            self._reachable()
            self._source.max_bytes = max(MIN_BATCH_BYTES, len(batch.data) // 2)
            self._source.max_records = max(1, batch.count // 2)
            log.info("collector: a batch of %d bytes is over its limit; sending at most %d",
                     len(batch.data), self._source.max_bytes)  # fmt: skip
            return NOW
        return self._refused(answer)

    def _accepted(self, batch: Batch, body: dict[str, Any]) -> Wait:
        try:
            receipt = Receipt.from_dict(body.get("receipt"))  # type: ignore[arg-type]
            receipt.verify(self._key, host=self.host)
            probing = self._probe_until is not None and batch.end <= self._probe_until
            held = receipt.size >= batch.end and body.get("size") == receipt.size
            if not (probing and held) and (
                receipt.size != batch.end or body.get("size") != batch.end
            ):
                raise FormatError(f"it is for {receipt.size} records, {batch.end} were sent up to")
        except FormatError as exc:
            self._head = None
            self._problem(
                "receipt", f"records {batch.start}-{batch.end - 1}: receipt not trusted: {exc}"
            )
            return self._retry()
        self._reachable()
        with self._cond:
            durable = self._durable
        if probing and receipt.size > durable:
            # It skipped what was sent as the same bytes, and holds records this journal does
            # not have: the journal lost its end. Its receipt is for records not here: neither
            # trusted nor journaled. Once the resend is through, that is the ``ahead`` state.
            self._head = batch.end
            if self._probe_until is not None and batch.end >= self._probe_until:
                self._head = None
                self._problem(
                    "ahead",
                    f"the collector holds {receipt.size} records of host {self.host}, and "
                    f"records 0-{batch.end - 1} match this journal, which has only {durable}: "
                    "the journal lost records the collector holds (cut since they were sent)",
                    key=("ahead",),
                )
                return self._rejected_wait()
            return NOW
        differs = self._root_differs(receipt)
        if differs is not None:
            self._head = None
            self._problem("root-mismatch", f"records {batch.start}-{batch.end - 1}: {differs}")
            return self._retry()
        self._head = self._acked = batch.end
        if self._probe_until is not None and batch.end >= self._probe_until:
            self._probe_until = None  # all it held matched: what follows is new to it
        # it took all there was: caught up. What became durable while it was on its way waits
        # for the interval too: sent at once, it would be a batch of a seal or two, for the
        # cost of a full one (a request costs about the same whatever its size)
        if self._sending_all:
            self._send_after = self._clock() + self.pacing.batch_interval
        self._attempt = self._rejections = 0
        self._problem_key = None
        self.sent_records += batch.count
        self.sent_bytes += len(batch.data)
        if self._rejected is not None and batch.end > self._rejected["seq"]:
            self._rejected = None
        substantive = _substantive(batch)
        with self._cond:
            self._receipt = receipt
            self._unjournaled = self._unjournaled or substantive
        if body.get("fleet") is not None:
            self._keep_fleet(body["fleet"], receipt.collector)
        return NOW

    def _keep_fleet(self, doc: object, collector: str) -> None:
        """Keep a larger witnessed fleet checkpoint covering this host (``fleetnote``)."""
        if (doc, collector) == self._fleet_checked:
            return  # checked, and kept unless one as large was already (below)
        try:
            fleet = fleetnote.check(doc, collector, self._key)
        except FormatError as exc:
            log.warning("the collector's fleet checkpoint is not trusted: %s", exc)
            return
        self._fleet_checked = (doc, collector)
        if self.fleet is not None and fleet.size <= self.fleet.size:
            return
        self.fleet = fleet
        # in the host's own chain too: the run directory is gone at the next boot, the
        # journal keeps the collector's witnessed word that records 0..host_size-1 are in it
        now = self._clock()
        if self._fleet_journaled is None or now - self._fleet_journaled >= FLEET_RECORD_INTERVAL:
            self._fleet_journaled = now
            fields: dict[str, JsonValue] = {
                "collector": collector,
                "checkpoint": fleet.note.decode("utf-8"),
                "index": fleet.index,
                "host_size": fleet.host_size,
            }
            with self._cond:
                self._records.append(("fleet_checkpoint", fields))
        if self._status_dir is not None:
            try:
                fleetnote.keep(self._status_dir, fleet)
            except OSError as exc:
                log.warning("cannot keep the fleet checkpoint: %s", exc.strerror)

    def _move_head(self, size: int, last_hash: str | None = None) -> Wait:
        with self._cond:
            durable = self._durable
        if size > durable:
            why = (f"the collector holds {size} records of host {self.host}, this journal "
                   f"only {durable} durable ones: it was cut or replaced since they were "
                   "sent")  # fmt: skip
        elif size and last_hash is not None and not self._holds(size - 1, last_hash):
            why = (f"the collector's record {size - 1} of host {self.host} is not this "
                   "journal's: it was wiped or replaced since it was sent")  # fmt: skip
        else:
            why = None
        if why is not None:
            if durable == 0:  # nothing to show it yet: ask again once there is
                self._head = None
                return Wait(IDLE_POLL, idle=True)
            if self._probe_until is None:
                self._problem("diverged", f"{why}; sending it from record 0 so that the "
                              "collector finds where it differs")  # fmt: skip
                self._probe_until = min(size, durable)
                self._head = 0
                return NOW
            self._head = None
            self._problem("ahead", why, key=("ahead",))
            return self._rejected_wait()
        if size < self._acked:
            self._problem(
                "behind",
                f"the collector holds {size} records, but signed receipts for {self._acked}: "
                "it lost acknowledged records; sending them again",
            )
        self._head = size
        return NOW

    def _root_differs(self, receipt: Receipt) -> str | None:
        """Why a receipt's root is not this journal's root at its size (None: it is).

        The collector signs whatever root it likes: only the journal's own says it holds
        these records. A size beyond what the journal holds cannot be this journal's."""
        try:
            mine = self._root_at(receipt.size)
        except JournalError as exc:
            return f"the receipt for {receipt.size} records cannot be checked: {exc}"
        if mine is None:
            return f"the receipt is for {receipt.size} records, the journal holds fewer"
        if mine.hex() != receipt.root:
            return (f"the collector signed root {receipt.root} for {receipt.size} records, "
                    f"the journal's is {mine.hex()}: it does not hold these records")  # fmt: skip
        return None

    def _root_at(self, size: int) -> bytes | None:
        """The journal's Merkle root of records 0 .. size-1 (None if it has fewer): the
        writer's, or computed from the journal (once at start-up for the head, then only for a
        size the writer no longer keeps, extending the tree from where it was)."""
        known = self._roots.get(size)
        if known is not None:
            return known
        with self._cond:
            durable = self._durable
        if size > durable:
            return None
        if size < self._tree.size:
            self._tree = CompactTree()
        if self._tree_source is None:
            self._tree_source = JournalSource(self._source.directory)
        while self._tree.size < size:
            batch = self._tree_source.read(self._tree.size, size)
            if batch is None:
                raise JournalError(f"record {self._tree.size} is not complete in the journal")
            for line in bytes(batch.data).splitlines():
                self._tree.append(hashlib.sha256(RECORD_PREFIX + line).digest())
        return self._tree.root()

    def _holds(self, seq: int, record_hash: str) -> bool:
        """Is the stored record ``seq`` of this journal the one with ``record_hash``?"""
        try:
            batch = self._source.read(seq, seq + 1)
        except JournalError:
            return False
        if batch is None:
            return False
        line = bytes(batch.data[:-1])  # its one line, less the newline
        return hashlib.sha256(RECORD_PREFIX + line).hexdigest() == record_hash

    def _rejected_batch(self, batch: Batch, body: dict[str, Any]) -> Wait:
        code, seq = _printable(body.get("error"), MAX_CODE), body.get("seq")
        detail = _printable(body.get("detail", ""), MAX_DETAIL)
        at = seq if type(seq) is int and batch.start <= seq < batch.end else batch.start
        self._state = "rejected"
        known = self._rejected
        if known is None or (known["error"], known["seq"]) != (code, at):
            self._rejected = {"error": code, "detail": detail, "seq": at, "at_ns": _now_ns()}
            self._problem(
                "rejected",
                f"records from {at} rejected ({code}): {detail}",
                key=("rejected", code, at),
                code=code,
                at_seq=at,  # not ``seq``: every record's own seq is a common field
                start=batch.start,
                count=batch.count,
            )
        else:
            log.debug("forwarding: records from %d rejected again (%s)", at, code)
        if at > batch.start:
            self._cap = at  # the records before the rejected one may be accepted alone
            return NOW
        self._head = None
        return self._rejected_wait()

    def _refused(self, answer: Answer) -> Wait:
        status, body = answer.status, answer.body
        if status in (429, 503):
            self._reachable()
            self._state = "pushback"
            if answer.retry_after is not None:
                return Wait(min(answer.retry_after, RETRY_AFTER_CAP))
            self._attempt += 1
            return Wait(self.pacing.retry(self._attempt, self._rng))
        if status >= 500:
            return self._unreachable(f"{self.collector}: HTTP {status} {body.get('error', '')}")
        self._head = None
        code = _printable(body.get("error", "no error named"), MAX_CODE)
        self._problem(
            "refused",
            f"HTTP {status}: {code}: {_printable(body.get('detail', ''), MAX_DETAIL)}",
            key=("refused", status),
        )
        return self._rejected_wait()

    # ------------------------------------------------------------------ waits and problems
    def _retry(self) -> Wait:
        self._attempt += 1
        self._state = "backoff"
        return Wait(self.pacing.retry(self._attempt, self._rng))

    def _rejected_wait(self) -> Wait:
        """A long wait: what was refused will be refused again until someone acts."""
        self._rejections += 1
        self._state = "rejected" if self._rejected else "error"
        return Wait(self.pacing.refused(self._rejections))

    def _unreachable(self, detail: str) -> Wait:
        self._head = None
        if self._outage_since is None:
            self._outage_since = self._clock()
        self._problem("unreachable", detail, key=("unreachable",))
        return self._retry()

    def _reachable(self) -> None:
        if self._outage_since is not None:
            log.info(
                "collector %s reachable again after %.1f s",
                self.collector,
                self._clock() - self._outage_since,
            )
            self._outage_since = None

    def _problem(
        self, error: str, detail: str, *, key: tuple[object, ...] | None = None, **extra: Any
    ) -> None:
        """Log and journal a problem once (until a batch is accepted), show it in status."""
        self._last_error = {"error": error, "detail": detail, "at_ns": _now_ns()}
        key = key or (error, detail)
        if key == self._problem_key:
            log.debug("forwarding: %s: %s", error, detail)
            return
        self._problem_key = key
        log.warning("forwarding to %s: %s: %s", self.collector, error, detail)
        fields: dict[str, JsonValue] = {k: v for k, v in extra.items() if v is not None}
        fields.update(collector=self.collector, error=error, detail=detail)
        with self._cond:
            self._records.append(("forward_error", fields))

    def _write_status(self, *, force: bool = False) -> None:
        now = self._clock()
        if self._status_dir is None or not (force or now - self._status_at >= STATUS_INTERVAL):
            return
        self._status_at = now
        try:
            write_status(self._status_dir, self.status(), name=STATUS_NAME)
        except OSError as exc:
            log.debug("forward status not written: %s", exc)


def _now_ns() -> str:
    return str(time.time_ns())


def _printable(value: object, limit: int) -> str:
    """A collector's text as it may be journaled: printable (other characters escaped as
    ``repr`` escapes them) and at most ``limit`` characters, saying how long it was if cut."""
    text = value if isinstance(value, str) else repr(value)
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])[:limit]
    return f"{shown}... (cut: {len(text)} characters)" if len(text) > limit else shown


def _substantive(batch: Batch) -> bool:
    """Whether the batch holds a record other than bookkeeping, read from the end (where its
    real records usually are: a few lines decide; the last one is parsed already)."""
    if batch.last.type not in BOOKKEEPING:
        return True
    lines = batch.lines_from_end()
    next(lines)  # the last
    for line in lines:
        try:
            if parse_line(line).type not in BOOKKEEPING:
                return True
        except FormatError:
            return True
    return False
