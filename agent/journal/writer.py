"""The journal writer: append records, seal them in batches, rotate segments and keys, recover.

The agent daemon talks to the journal only through ``JournalWriter``:

    writer = JournalWriter.open(journal_dir, keys_dir, host=..., boot_id=...)
    seq = writer.append("verdict", {"action": "deny", "policy": digest, "rule": "r1", ...})
    writer.tick()            # from the main loop, at least every 50 ms: seals, key rotation
    writer.close({"reason": "SIGTERM"})   # writes `stop` and a final seal

Durability: ``append`` hands the line to the kernel before it returns (a crash of the agent loses
nothing it was told was appended); a seal first fsyncs the records, then writes the signed
checkpoint and fsyncs again, so a seal on disk always covers records on disk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from agent.errors import FormatError, JournalError
from agent.journal.canonical import JsonValue, canonical
from agent.journal.checkpoint import Checkpoint, rotation_signing_input
from agent.journal.keys import KeyStore, SigningKey, b64
from agent.journal.live import LiveSegment
from agent.journal.record import WRITER_TYPES, check_fields
from agent.journal.recover import Recovery, Scan, ScanState, save_scan_state, scan
from agent.journal.roots import SealRoots
from agent.journal.state import ChainState, key_text
from agent.native.encoder import EventEncoder, realtime_clock

log = logging.getLogger(__name__)

DEFAULT_EPOCH_SECONDS = 3600.0
DEFAULT_SEAL_INTERVAL = 0.1
DEFAULT_SEAL_EVERY = 8192
DEFAULT_SEGMENT_BYTES = 64 << 20
#: An idle journal is still sealed this often, so the collector can tell a quiet host from a
#: cut-off, stopped or killed one (it flags a host silent after 3 heartbeats without a seal).
DEFAULT_HEARTBEAT = 10.0

__all__ = ["JournalWriter", "Recovery"]


class JournalWriter:
    """Thread-safe appender of one host's journal. Construct with ``JournalWriter.open``."""

    def __init__(
        self,
        live: LiveSegment,
        keys: KeyStore,
        key: SigningKey,
        scan: Scan,
        *,
        host: str,
        boot_id: str,
        epoch_seconds: float,
        seal_interval: float,
        seal_every: int,
        segment_bytes: int,
        heartbeat: float,
        clock: Callable[[], int],
    ) -> None:
        self.directory = live.directory
        self.host = host
        self.boot_id = boot_id
        self.recovery = scan.recovery
        self._live = live
        self._keys = keys
        self._key = key
        #: In C where the native core is loaded: one struct that both this writer's own
        #: records and ``append_events`` extend.
        self._chain = scan.chain
        self._last_seal_seq = scan.last_seal_seq
        #: the Merkle root at each recent seal boundary, for the forwarder (``roots``)
        self.seal_roots = SealRoots()
        self._epoch_ns = int(epoch_seconds * 1e9)
        self._epoch_start = scan.epoch_start if scan.epoch_start is not None else clock()
        self._rotated_key_id = scan.key_id  # as the scan finds them: from the last key rotation
        self._rotated_at = scan.epoch_start
        self._seal_interval = seal_interval
        self._seal_every = seal_every
        self._segment_bytes = segment_bytes
        self._heartbeat = heartbeat
        self._clock = clock
        self._lock = threading.Lock()
        self._unsealed = 0
        self._unsealed_since = 0.0
        self._sealed_at = time.monotonic()
        self._common = {"host": host, "boot_id": boot_id}

    # ----------------------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        journal_dir: Path | str,
        keys_dir: Path | str,
        *,
        host: str,
        boot_id: str,
        epoch_seconds: float = DEFAULT_EPOCH_SECONDS,
        seal_interval: float = DEFAULT_SEAL_INTERVAL,
        seal_every: int = DEFAULT_SEAL_EVERY,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        heartbeat: float = DEFAULT_HEARTBEAT,
        protect_files: bool = True,
        create_keys: bool = True,
        clock: Callable[[], int] = time.time_ns,
        use_native: bool = True,
    ) -> JournalWriter:
        """Open (creating if needed) the journal, recovering a torn tail after a crash.

        ``create_keys``: make the genesis key pair if ``keys_dir`` has none (the agent's first
        start). ``protect_files``: set FS_APPEND_FL / FS_IMMUTABLE_FL where supported.
        ``heartbeat``: the longest time ``tick`` lets pass without a seal, idle or not.
        ``use_native``: keep the chain in the native core where it is built (the same bytes
        either way; ``append_events`` needs it).
        """
        if not host or not boot_id:
            raise JournalError("host and boot_id must be non-empty")
        directory = Path(journal_dir)
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        keys = KeyStore(Path(keys_dir))
        keys.bootstrap(create=create_keys)
        found = scan(directory, use_native=use_native)
        if found.host is not None and found.host != host:
            raise JournalError(f"{directory} is the journal of host {found.host!r}, not {host!r}")
        key = keys.resume(found.key_id)
        writer = cls(
            LiveSegment.open(directory, protect_files=protect_files),
            keys,
            key,
            found,
            host=host,
            boot_id=boot_id,
            epoch_seconds=epoch_seconds,
            seal_interval=seal_interval,
            seal_every=seal_every,
            segment_bytes=segment_bytes,
            heartbeat=heartbeat,
            clock=clock,
        )
        if found.recovery is not None:
            log.warning("journal recovered after an unclean shutdown: %s", found.recovery)
            with writer._lock:
                writer._emit(writer._record("recovery", found.recovery.fields()))
                writer._seal()
        return writer

    # ----------------------------------------------------------------------------- appending
    def append(self, type: str, fields: Mapping[str, JsonValue]) -> int:
        """Append one record; returns its seq. Seals inline when a batch is due."""
        if type in WRITER_TYPES:
            raise JournalError(f"{type} records are written by the journal itself")
        try:
            check_fields(type, fields)
        except FormatError as exc:
            raise JournalError(str(exc)) from None
        with self._lock:
            if self._live.closed:
                raise JournalError("journal is closed")
            try:
                seq = self._emit(self._record(type, fields))
            except FormatError as exc:  # raised before anything is written
                raise JournalError(f"{type} record not written: {exc}") from None
            self._seal_if_due()
            return seq

    def append_many(self, records: Sequence[tuple[str, Mapping[str, JsonValue]]]) -> int:
        """Append records in order with one write; returns how many. The same checks and
        guarantee as ``append`` (every line reaches the kernel before it returns); a record
        that cannot be encoded raises after the ones before it are written."""
        for rtype, fields in records:
            if rtype in WRITER_TYPES:
                raise JournalError(f"{rtype} records are written by the journal itself")
            try:
                check_fields(rtype, fields)
            except FormatError as exc:
                raise JournalError(str(exc)) from None
        with self._lock:
            if self._live.closed:
                raise JournalError("journal is closed")
            lines: list[bytes] = []
            failed: str | None = None
            add = self._chain.add
            for rtype, fields in records:
                try:
                    line = canonical(self._record(rtype, fields))
                except FormatError as exc:
                    failed = f"{rtype} record not written: {exc}"
                    break
                add(line)  # a write failure afterwards closes the writer
                lines.append(line + b"\n")
            if lines:
                self._live.write(b"".join(lines))
                self._count_unsealed(len(lines))
            if failed is not None:
                raise JournalError(failed)
            self._seal_if_due()
            return len(lines)

    @property
    def takes_events(self) -> bool:
        """True if ``append_events`` can be used (the chain is in the native core)."""
        return self._chain.takes_events

    def append_events(self, encoder: EventEncoder, batch: bytes, pos: int) -> tuple[int, int, int]:
        """Append the run of kernel events ``encoder.scan`` prepared, starting at ``pos``.

        Returns (where it stopped, records appended, why it stopped: ``layout.ENC_*``). Like
        ``append``, the lines are handed to the kernel before it returns, and it seals inline
        when a batch is due.
        """
        with self._lock:
            if self._live.closed:
                raise JournalError("journal is closed")
            if self._unsealed >= self._seal_every:
                self._seal()
            fixed_ts = 0 if realtime_clock(self._clock) else self._clock()
            end = self._chain.add_events(
                encoder, batch, pos, limit=self._seal_every - self._unsealed, fixed_ts=fixed_ts
            )
            taken = encoder.taken
            if taken:
                self._live.write(encoder.output())
                self._count_unsealed(taken)
                self._seal_if_due()
            return end, taken, encoder.stop

    def tick(self) -> None:
        """Seal records older than the seal interval, seal an idle journal every heartbeat
        (the seal then covers only the seal before it), and rotate an expired epoch key."""
        with self._lock:
            if self._live.closed:
                return
            now = time.monotonic()
            if self._unsealed and now - self._unsealed_since >= self._seal_interval:
                self._seal()
            elif now - self._sealed_at >= self._heartbeat and self.next_seq:
                self._seal(heartbeat=True)
            if self._clock() - self._epoch_start >= self._epoch_ns:
                self._rotate_key()

    def flush_and_seal(self) -> int | None:
        """Seal now; returns the seal's seq, or None if nothing was unsealed."""
        with self._lock:
            if self._live.closed:
                raise JournalError("journal is closed")
            return self._seal()

    def rotate_key(self) -> None:
        """End the key epoch now (the daemon may do this on demand; ``tick`` does it on time)."""
        with self._lock:
            if self._live.closed:
                raise JournalError("journal is closed")
            self._rotate_key()

    def close(self, fields: Mapping[str, JsonValue] | None = None) -> None:
        """Write ``stop`` (with ``fields``) and a final seal, then close. Idempotent."""
        with self._lock:
            if self._live.closed:
                return
            self._emit(self._record("stop", dict(fields or {})))
            self._seal(rotate_segment=False)
            self._live.close()

    @property
    def closed(self) -> bool:
        """Closed: by ``close``, or by a write that failed (then nothing more is written)."""
        return self._live.closed

    @property
    def next_seq(self) -> int:
        return self._chain.next_seq

    @property
    def sealed_size(self) -> int:
        """Records durable on disk: every record up to and including the last seal (each seal
        is fdatasynced after it is written, the records it covers before). What a forwarder
        may send: a record it sent that a power loss then took back would fork the journal
        at the collector."""
        return self._last_seal_seq + 1

    @property
    def key_id(self) -> str:
        return self._key.key_id

    # ----------------------------------------------------------------------------- internals
    def _record(self, rtype: str, fields: Mapping[str, JsonValue]) -> dict[str, JsonValue]:
        record: dict[str, JsonValue] = dict(fields)
        record.update(self._common)
        record["seq"] = self._chain.next_seq
        record["ts"] = str(self._clock())
        record["type"] = rtype
        record["prev"] = self._chain.prev
        return record

    def _emit(self, record: dict[str, JsonValue]) -> int:
        """Encode, write and chain one record (one native call where the chain is in C).
        Caller holds the lock."""
        seq = self._chain.next_seq
        self._live.write_line(self._chain, canonical(record))
        self._count_unsealed(1)
        return seq

    def _seal_if_due(self) -> None:
        """Seal when the batch is full or its oldest record waited the seal interval."""
        if self._unsealed >= self._seal_every or (
            time.monotonic() - self._unsealed_since >= self._seal_interval
        ):
            self._seal()

    def _count_unsealed(self, n: int) -> None:
        if not self._unsealed:
            self._unsealed_since = time.monotonic()
        self._unsealed += n

    def _seal(self, *, rotate_segment: bool = True, heartbeat: bool = False) -> int | None:
        if not (self._unsealed or heartbeat):
            return None
        self._live.sync()  # the records a seal covers are durable before the seal exists
        chain = self._chain
        checkpoint = Checkpoint(
            host=self.host,
            size=chain.next_seq,
            root=chain.root().hex(),
            last=chain.prev,
            ts=self._clock(),
            key_id=self._key.key_id,
        )
        signature = self._key.sign(checkpoint.signing_input())
        seal = self._record(
            "seal",
            {
                "size": checkpoint.size,
                "root": checkpoint.root,
                "key_id": checkpoint.key_id,
                "sig": b64(signature),
            },
        )
        seal["ts"] = str(checkpoint.ts)
        seq = self._emit(seal)
        self._live.sync()
        self._last_seal_seq = seq
        self.seal_roots.add(seq + 1, chain.root())
        self._sealed_at = time.monotonic()
        self._unsealed = 0
        if rotate_segment and self._live.size >= self._segment_bytes:
            self._rotate_segment()
        return seq

    def _rotate_segment(self) -> None:
        """Seal the live segment (it ends in the seal just written), note where the journal
        stands for the next reopen, and start the next segment."""
        live = self._live
        live.seal()
        state = self._scan_state(live)
        if state is not None:
            save_scan_state(self.directory, state)
        self._live = live.next()

    def _scan_state(self, live: LiveSegment) -> ScanState | None:
        chain = self._chain
        try:
            return ScanState(
                segment=live.path.name,
                size=live.size,
                chain=ChainState(
                    host=self.host,
                    next_seq=chain.next_seq,
                    prev=chain.prev,
                    frontier=chain.frontier(),
                    boot=self.boot_id,
                    key_id=self._rotated_key_id,
                    key=key_text(self._key.public) if self._rotated_key_id else None,
                    epoch_start=self._rotated_at,
                    last_seal=self._last_seal_seq,
                    last_type="seal",
                ),
            )
        except FormatError as exc:  # e.g. a host name a chain state cannot hold: only
            log.warning("scan state not saved (%s): reopening rescans", exc)  # slower reopens
            return None

    def _rotate_key(self) -> None:
        """New epoch: seal with the old key, publish the new key signed by it, erase the old."""
        self._seal()
        old = self._key
        new = self._keys.create_epoch_key()
        record = self._record(
            "key_rotation",
            {"new_key": b64(new.public.raw), "new_key_id": new.key_id, "old_key_id": old.key_id},
        )
        record["sig"] = b64(old.sign(rotation_signing_input(record)))
        self._emit(record)
        self._live.sync()
        self._keys.erase(old.key_id)
        self._key = new
        self._epoch_start = int(str(record["ts"]))
        self._rotated_key_id, self._rotated_at = new.key_id, self._epoch_start
        log.info("journal key rotated: %s -> %s", old.key_id, new.key_id)
        self._seal()
