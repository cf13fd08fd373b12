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

import dataclasses
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import orjson

from agent.errors import FormatError, JournalCorrupt, JournalError
from agent.journal import native, protect
from agent.journal.canonical import JsonValue, canonical
from agent.journal.checkpoint import Checkpoint, rotation_signing_input
from agent.journal.durable import fsync_dir
from agent.journal.keys import KeyStore, SigningKey, b64
from agent.journal.merkle import CompactTree
from agent.journal.record import (
    GENESIS_PREV,
    RECORD_PREFIX,
    WRITER_TYPES,
    Record,
    check_fields,
    parse_line,
    record_hash,
)
from agent.journal.segments import list_segments, read_segment, segment_name, split_lines

log = logging.getLogger(__name__)

DEFAULT_EPOCH_SECONDS = 3600.0
DEFAULT_SEAL_INTERVAL = 0.1
DEFAULT_SEAL_EVERY = 8192
DEFAULT_SEGMENT_BYTES = 64 << 20
_ROTATION_MARK = b'"type":"key_rotation"'
_SEQ_RE = re.compile(rb'"seq":([0-9]+)[,}]')


@dataclass(frozen=True)
class Recovery:
    """What ``open`` found after an unclean shutdown; also written as a ``recovery`` record."""

    cut_bytes: int
    cut_segment: str | None
    partial_seq: int | None
    last_good_seq: int
    last_sealed_seq: int
    unsealed_kept: int

    def fields(self) -> dict[str, JsonValue]:
        return {
            "cut_bytes": self.cut_bytes,
            "cut_segment": self.cut_segment,
            "partial_seq": self.partial_seq,
            "last_good_seq": self.last_good_seq,
            "last_sealed_seq": self.last_sealed_seq,
            "unsealed_kept": self.unsealed_kept,
        }


@dataclass
class _Scan:
    """State rebuilt from the segments on open."""

    tree: CompactTree | native.NativeTree
    chain: native.Chain | None = None  # the native chain the tree lives in, if any
    next_seq: int = 0
    prev: str = GENESIS_PREV
    host: str | None = None
    key_id: str | None = None
    epoch_start: int | None = None
    last_seal_seq: int = -1
    tail: tuple[bytes, bytes] = (b"", b"")  # the last two lines
    recovery: Recovery | None = None


class JournalWriter:
    """Thread-safe appender of one host's journal. Construct with ``JournalWriter.open``."""

    def __init__(
        self,
        directory: Path,
        keys: KeyStore,
        key: SigningKey,
        scan: _Scan,
        *,
        host: str,
        boot_id: str,
        epoch_seconds: float,
        seal_interval: float,
        seal_every: int,
        segment_bytes: int,
        protect_files: bool,
        clock: Callable[[], int],
    ) -> None:
        self.directory = directory
        self.host = host
        self.boot_id = boot_id
        self.recovery = scan.recovery
        self._keys = keys
        self._key = key
        #: With the native core, the chain state lives in one C struct that both this writer's
        #: own records and ``append_events`` extend (``_scan`` built it).
        self._tree = scan.tree
        self._chain = scan.chain
        self._next_seq = scan.next_seq
        self._prev = scan.prev
        self._last_seal_seq = scan.last_seal_seq
        self._epoch_ns = int(epoch_seconds * 1e9)
        self._epoch_start = scan.epoch_start if scan.epoch_start is not None else clock()
        self._rotated_key_id = scan.key_id  # as _scan finds them: from the last key rotation
        self._rotated_at = scan.epoch_start
        self._host_seen = scan.host or host
        self._seal_interval = seal_interval
        self._seal_every = seal_every
        self._segment_bytes = segment_bytes
        self._protect = protect_files
        self._clock = clock
        self._lock = threading.Lock()
        self._unsealed = 0
        self._unsealed_since = 0.0
        self._closed = False
        self._fd = -1
        self._segment_no = 0
        self._segment_size = 0
        # Bound once: the hot path then pays no attribute lookups for them.
        self._sha256 = hashlib.sha256
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
        protect_files: bool = True,
        create_keys: bool = True,
        clock: Callable[[], int] = time.time_ns,
        use_native: bool = True,
    ) -> JournalWriter:
        """Open (creating if needed) the journal, recovering a torn tail after a crash.

        ``create_keys``: make the genesis key pair if ``keys_dir`` has none (the agent's first
        start). ``protect_files``: set FS_APPEND_FL / FS_IMMUTABLE_FL where supported.
        ``use_native``: keep the chain in the native core where it is built (the same bytes
        either way; ``append_events`` needs it).
        """
        if not host or not boot_id:
            raise JournalError("host and boot_id must be non-empty")
        directory = Path(journal_dir)
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        keys = KeyStore(Path(keys_dir))
        if not keys.exists():
            if not create_keys:
                raise JournalError(f"no genesis key in {keys_dir}; run `sealtrail keys init`")
            public = keys.init()
            log.info(  # the first start's normal course, not a problem
                "created genesis key %s in %s; enroll it with the collector",
                public.key_id,
                keys_dir,
            )
        scan = _scan(directory, use_native=use_native)
        if scan.host is not None and scan.host != host:
            raise JournalError(f"{directory} is the journal of host {scan.host!r}, not {host!r}")
        kid = scan.key_id or keys.genesis().key_id
        key = keys.load(kid)
        keys.erase_leftovers()
        for stray in keys.private_key_ids():
            if stray != kid:  # from a crash in the middle of a key rotation
                keys.erase(stray)
        writer = cls(
            directory,
            keys,
            key,
            scan,
            host=host,
            boot_id=boot_id,
            epoch_seconds=epoch_seconds,
            seal_interval=seal_interval,
            seal_every=seal_every,
            segment_bytes=segment_bytes,
            protect_files=protect_files,
            clock=clock,
        )
        writer._open_live_segment()
        if scan.recovery is not None:
            log.warning("journal recovered after an unclean shutdown: %s", scan.recovery)
            with writer._lock:
                writer._emit(writer._record("recovery", scan.recovery.fields()))
                writer._seal()
        return writer

    def _open_live_segment(self) -> None:
        segments = list_segments(self.directory)
        if segments:
            number, path = segments[-1]
            if protect.get_flags(path) & protect.FS_IMMUTABLE_FL:
                number += 1  # crashed between sealing a segment and creating the next
        else:
            number = 1
        self._open_segment(number)

    def _open_segment(self, number: int) -> None:
        path = self.directory / segment_name(number)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(path, flags, 0o640)
        self._segment_no = number
        self._segment_size = os.fstat(self._fd).st_size
        fsync_dir(self.directory)
        if self._protect:
            protect.set_flag(path, protect.FS_APPEND_FL, True)

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
            if self._closed:
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
            if self._closed:
                raise JournalError("journal is closed")
            lines: list[bytes] = []
            failed: str | None = None
            for rtype, fields in records:
                try:
                    lines.append(self._chain_line(self._record(rtype, fields)))
                except FormatError as exc:
                    failed = f"{rtype} record not written: {exc}"
                    break
            if lines:
                self._write(b"".join(lines))
                self._count_unsealed(len(lines))
            if failed is not None:
                raise JournalError(failed)
            self._seal_if_due()
            return len(lines)

    @property
    def takes_events(self) -> bool:
        """True if ``append_events`` can be used (the native core is loaded)."""
        return self._chain is not None

    def append_events(
        self, encoder: native.EventEncoder, batch: bytes, pos: int
    ) -> tuple[int, int, int]:
        """Append the run of kernel events ``encoder.scan`` prepared, starting at ``pos``.

        Returns (where it stopped, records appended, why it stopped: ``native.ENC_*``). Like
        ``append``, the lines are handed to the kernel before it returns, and it seals inline
        when a batch is due.
        """
        with self._lock:
            if self._closed:
                raise JournalError("journal is closed")
            chain = self._chain
            if chain is None:
                raise JournalError("the native core is not loaded")
            if self._unsealed >= self._seal_every:
                self._seal()
            chain.state.next_seq = self._next_seq
            fixed_ts = 0 if native.realtime_clock(self._clock) else self._clock()
            end = encoder.encode(
                chain, batch, pos, limit=self._seal_every - self._unsealed, fixed_ts=fixed_ts
            )
            taken = int(encoder.params.taken)
            if taken:
                self._write(encoder.output())
                self._next_seq = chain.next_seq
                self._prev = chain.prev.hex()
                self._count_unsealed(taken)
                self._seal_if_due()
            return end, taken, int(encoder.params.stop)

    def tick(self) -> None:
        """Seal records older than the seal interval and rotate an expired epoch key."""
        with self._lock:
            if self._closed:
                return
            if self._unsealed and time.monotonic() - self._unsealed_since >= self._seal_interval:
                self._seal()
            if self._clock() - self._epoch_start >= self._epoch_ns:
                self._rotate_key()

    def flush_and_seal(self) -> int | None:
        """Seal now; returns the seal's seq, or None if nothing was unsealed."""
        with self._lock:
            if self._closed:
                raise JournalError("journal is closed")
            return self._seal()

    def rotate_key(self) -> None:
        """End the key epoch now (the daemon may do this on demand; ``tick`` does it on time)."""
        with self._lock:
            if self._closed:
                raise JournalError("journal is closed")
            self._rotate_key()

    def close(self, fields: Mapping[str, JsonValue] | None = None) -> None:
        """Write ``stop`` (with ``fields``) and a final seal, then close. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._emit(self._record("stop", dict(fields or {})))
            self._seal(rotate_segment=False)
            self._closed = True
            os.close(self._fd)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def key_id(self) -> str:
        return self._key.key_id

    # ----------------------------------------------------------------------------- internals
    def _record(self, rtype: str, fields: Mapping[str, JsonValue]) -> dict[str, JsonValue]:
        record: dict[str, JsonValue] = dict(fields)
        record.update(self._common)
        record["seq"] = self._next_seq
        record["ts"] = str(self._clock())
        record["type"] = rtype
        record["prev"] = self._prev
        return record

    def _emit(self, record: dict[str, JsonValue]) -> int:
        """Encode, hash, add to the tree, write. Caller holds the lock."""
        seq = self._next_seq
        chain = self._chain
        if chain is not None:  # write and chain in one native call
            line = canonical(record)
            try:
                self._prev = chain.write(self._fd, line)
            except OSError as exc:
                self._fail_write(exc)
            self._segment_size += len(line) + 1
            self._next_seq = seq + 1
        else:
            self._write(self._chain_line(record))
        self._count_unsealed(1)
        return seq

    def _chain_line(self, record: dict[str, JsonValue]) -> bytes:
        """Encode a record built by ``_record`` and chain it (seq, prev, tree); returns the
        line to write. A write failure afterwards closes the writer (``_write``)."""
        line = canonical(record)
        chain = self._chain
        if chain is not None:
            chain.add(line)
            self._prev = chain.prev.hex()
        else:
            digest = self._sha256(RECORD_PREFIX + line).digest()
            self._tree.append(digest)
            self._prev = digest.hex()
        self._next_seq += 1
        return line + b"\n"

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

    def _write(self, data: bytes) -> None:
        """Hand one line to the kernel before ``append`` returns: a crash of the agent loses
        nothing appended. Batching writes measured no faster (the syscall is not the cost)."""
        try:
            written = os.write(self._fd, data)
            self._segment_size += written
            if written < len(data):  # a short write (a signal, a full disk): write the rest
                view = memoryview(data)[written:]
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                    self._segment_size += written
        except OSError as exc:
            self._fail_write(exc)

    def _fail_write(self, exc: OSError) -> NoReturn:
        # The line may be half written: stop here; reopening cuts the torn tail and says so.
        self._closed = True
        os.close(self._fd)
        raise JournalError(f"journal write failed, journal closed: {exc.strerror}") from exc

    def _sync(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:  # after a failed fsync the page cache state is unknowable
            self._closed = True
            os.close(self._fd)
            raise JournalError(f"journal fsync failed, journal closed: {exc.strerror}") from exc

    def _seal(self, *, rotate_segment: bool = True) -> int | None:
        if not self._unsealed:
            return None
        self._sync()  # the records a seal covers are durable before the seal exists
        checkpoint = Checkpoint(
            host=self.host,
            size=self._next_seq,
            root=self._tree.root().hex(),
            last=self._prev,
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
        self._sync()
        self._last_seal_seq = seq
        self._unsealed = 0
        if rotate_segment and self._segment_size >= self._segment_bytes:
            self._rotate_segment()
        return seq

    def _rotate_segment(self) -> None:
        os.close(self._fd)
        path = self.directory / segment_name(self._segment_no)
        if self._protect:
            protect.set_flag(path, protect.FS_APPEND_FL, False)
            protect.set_flag(path, protect.FS_IMMUTABLE_FL, True)
        _save_scan_state(
            self.directory,
            ScanState(
                segment=path.name,
                size=self._segment_size,
                next_seq=self._next_seq,
                prev=self._prev,
                tree_size=self._tree.size,
                frontier=[node.hex() for node in self._tree.frontier],
                host=self._host_seen,
                key_id=self._rotated_key_id,
                epoch_start=self._rotated_at,
                last_seal_seq=self._last_seal_seq,
            ),
        )
        self._open_segment(self._segment_no + 1)

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
        self._sync()
        self._keys.erase(old.key_id)
        self._key = new
        self._epoch_start = int(str(record["ts"]))
        self._rotated_key_id, self._rotated_at = new.key_id, self._epoch_start
        log.info("journal key rotated: %s -> %s", old.key_id, new.key_id)
        self._seal()


SCAN_STATE = ".scan-state.json"


@dataclass(frozen=True)
class ScanState:
    """What ``_scan`` knows at the end of a sealed segment, saved when the writer rotates it.

    A cache, not evidence: ``open`` checks it against the files (the segment's size and last
    line, the next segment's first record) and falls back to the full scan on any mismatch.
    With it, reopening hashes only the segments written since, instead of the whole history
    (a month at 100 records/s is ~120 GB).
    """

    segment: str
    size: int
    next_seq: int
    prev: str
    tree_size: int
    frontier: list[str]
    host: str
    key_id: str | None
    epoch_start: int | None
    last_seal_seq: int


def _save_scan_state(directory: Path, state: ScanState) -> None:
    path = directory / SCAN_STATE
    tmp = directory / (SCAN_STATE + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, orjson.dumps({"format": 1, **dataclasses.asdict(state)}))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:  # only reopening gets slower
        log.warning("cannot save %s: %s", path, exc.strerror)


def _load_scan_state(
    directory: Path, segments: list[tuple[int, Path]]
) -> tuple[int, ScanState, tuple[bytes, bytes]] | None:
    """The saved state, if it still describes these files: (index of its segment, state, the
    segment's last two lines)."""
    path = directory / SCAN_STATE
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        log.warning("ignoring %s (%s): scanning every segment", path, exc)
        return None
    why = _stale(raw, segments)
    if isinstance(why, str):
        log.warning("ignoring %s (%s): scanning every segment", path, why)
        return None
    return why


def _stale(
    raw: object, segments: list[tuple[int, Path]]
) -> str | tuple[int, ScanState, tuple[bytes, bytes]]:
    """Why ``raw`` cannot be used, or what it gives."""
    if not isinstance(raw, dict) or raw.pop("format", None) != 1:
        return "unknown format"
    try:
        state = ScanState(**raw)
        frontier = [bytes.fromhex(node) for node in state.frontier]
    except (TypeError, ValueError) as exc:
        return f"malformed: {exc}"
    if len(frontier) != bin(state.tree_size).count("1") or state.tree_size != state.next_seq:
        return "tree does not fit its size"
    names = [p.name for _, p in segments]
    if state.segment not in names[:-1]:
        return f"{state.segment} is not a sealed segment of this journal"
    index = names.index(state.segment)
    seg_path, next_path = segments[index][1], segments[index + 1][1]
    try:
        if seg_path.stat().st_size != state.size:
            return f"{state.segment} changed size"
        with open(seg_path, "rb") as f:
            f.seek(max(0, state.size - (1 << 20)))
            chunk = f.read()
            if state.size > len(chunk):
                chunk = chunk[chunk.find(b"\n") + 1 :]  # from a line start
        with open(next_path, "rb") as f:
            first = f.readline(1 << 24)
    except OSError as exc:
        return exc.strerror or str(exc)
    lines = chunk.split(b"\n")
    if len(lines) < 3 or lines[-1]:
        return f"{state.segment} does not end in two complete lines"
    if record_hash(lines[-2]).hex() != state.prev:
        return f"{state.segment} does not end in the record it names"
    if first.endswith(b"\n"):
        try:
            record = parse_line(first[:-1])
        except FormatError as exc:
            return f"{next_path.name} starts with a bad record: {exc}"
        if record.seq != state.next_seq or record.prev != state.prev:
            return f"{next_path.name} does not continue it"
    return index, state, (lines[-3], lines[-2])


def _scan(directory: Path, *, use_native: bool = True, use_saved_state: bool = True) -> _Scan:
    """Rebuild seq, chain, tree and key state; cut a torn tail of the last segment.

    Sealed (earlier) segments are only hashed: the writer trusts its own history (auditing it
    is ``verify``'s job). The last segment is parsed line by line; the first line that is torn,
    unparsable or does not continue the chain starts the cut, unless a seal follows it, in
    which case sealed evidence would be destroyed and opening fails instead.

    With the native core the same happens in bulk (a day at 1,000 records/s is 86 M records):
    sealed segments are hashed in C and only their seal and rotation lines parsed; in the last
    segment, runs of ordinary records that parse and continue the chain are taken in C (the
    verifier's fast path) and every other line is judged here as above.
    """
    chain = None
    if use_native and native.available():
        chain = native.Chain(0, bytes.fromhex(GENESIS_PREV), 0, [])
    scan = _Scan(tree=chain.tree() if chain is not None else CompactTree(), chain=chain)
    segments = list_segments(directory)
    first = 0
    saved = _load_scan_state(directory, segments) if use_saved_state else None
    if saved is not None:
        index, st, scan.tail = saved
        frontier = [bytes.fromhex(node) for node in st.frontier]
        if chain is not None:
            chain = scan.chain = native.Chain(
                st.next_seq, bytes.fromhex(st.prev), st.tree_size, frontier
            )
            scan.tree = chain.tree()
        else:
            assert isinstance(scan.tree, CompactTree)
            scan.tree.restore(st.tree_size, frontier)
        scan.next_seq, scan.prev, scan.host = st.next_seq, st.prev, st.host
        scan.key_id, scan.epoch_start, scan.last_seal_seq = (
            st.key_id,
            st.epoch_start,
            st.last_seal_seq,
        )
        first = index + 1
    for index, (_, path) in enumerate(segments):
        if index < first:
            continue
        content = read_segment(path)
        if index < len(segments) - 1:
            if chain is not None:
                _trust_segment(scan, chain, path, content)
                continue
            for line in split_lines(path.name, content):
                if not line.complete:
                    raise JournalCorrupt(f"{path.name} ends in a torn line at byte {line.offset}")
                _trust(scan, line.data)
            continue
        pos, end = 0, len(content)
        boot: str | None = None
        while pos < end:
            if chain is not None and scan.host is not None and boot is not None:
                taken_to = chain.add_ordinary(content, pos, scan.host, boot)
                if taken_to > pos:
                    _after_bulk(scan, chain, content, pos, taken_to)
                    pos = taken_to
                    if pos >= end:
                        break
            nl = content.find(b"\n", pos)
            data = content[pos:] if nl < 0 else content[pos:nl]
            try:
                if nl < 0:
                    raise FormatError("torn line")
                record = parse_line(data)
                if record.seq != scan.next_seq or record.prev != scan.prev:
                    raise FormatError("does not continue the chain")
            except FormatError:
                _cut(scan, path, content, pos)
                return scan
            _trust(scan, data, record)
            boot = record.boot_id
            pos = nl + 1
    if scan.next_seq and not _clean_end(scan):
        scan.recovery = Recovery(
            0,
            None,
            None,
            scan.next_seq - 1,
            scan.last_seal_seq,
            scan.next_seq - 1 - scan.last_seal_seq,
        )
    return scan


def _trust_segment(scan: _Scan, chain: native.Chain, path: Path, content: bytes) -> None:
    """A sealed segment, in bulk: hash every line in C, parse only the lines ``_trust``
    would parse (the journal's first, seals, key rotations)."""
    end = chain.add_lines(content)
    if end != len(content):
        raise JournalCorrupt(f"{path.name} ends in a torn line at byte {end}")
    if end == 0:
        return
    starts = {0} if not scan.host else set()
    for mark in (b'"type":"seal"', _ROTATION_MARK):
        at = content.find(mark)
        while at >= 0:
            starts.add(content.rfind(b"\n", 0, at) + 1)
            at = content.find(mark, at + len(mark))
    for start in sorted(starts):
        record = parse_line(content[start : content.index(b"\n", start)])
        _note(scan, record)
    _after_bulk(scan, chain, content, 0, end)


def _after_bulk(scan: _Scan, chain: native.Chain, content: bytes, start: int, end: int) -> None:
    """Bring the scan up to date after the chain took the lines of ``content[start:end]``."""
    scan.next_seq = chain.next_seq
    scan.prev = chain.prev.hex()
    last_start = max(start, content.rfind(b"\n", start, end - 1) + 1)
    if last_start > start:
        before_start = max(start, content.rfind(b"\n", start, last_start - 1) + 1)
        before = content[before_start : last_start - 1]
    else:
        before = scan.tail[1]
    scan.tail = (before, content[last_start : end - 1])


def _clean_end(scan: _Scan) -> bool:
    """Did the last run end with ``close``: a stop record followed by its seal?"""
    before, last = scan.tail
    try:
        return parse_line(before).type == "stop" and parse_line(last).type == "seal"
    except FormatError:
        return False


def _trust(scan: _Scan, line: bytes, record: Record | None = None) -> None:
    if scan.chain is not None:
        scan.chain.add(line)
        scan.prev = scan.chain.prev.hex()
    else:
        digest = hashlib.sha256(RECORD_PREFIX + line).digest()
        scan.tree.append(digest)
        scan.prev = digest.hex()
    if record is None and (_ROTATION_MARK in line or b'"type":"seal"' in line or not scan.host):
        record = parse_line(line)
    if record is not None:
        _note(scan, record)
    scan.next_seq += 1
    scan.tail = (scan.tail[1], line)


def _note(scan: _Scan, record: Record) -> None:
    scan.host = scan.host or record.host
    if record.type == "key_rotation":
        scan.key_id = str(record.fields["new_key_id"])
        scan.epoch_start = record.ts
    elif record.type == "seal":
        scan.last_seal_seq = record.seq


def _cut(scan: _Scan, path: Path, content: bytes, offset: int) -> None:
    tail = content[offset:]
    for later in split_lines(path.name, tail, offset):
        if later.offset > offset and b'"type":"seal"' in later.data:
            try:
                parse_line(later.data)
            except FormatError:
                continue
            raise JournalCorrupt(
                f"{path.name} is damaged at byte {offset} before a seal at byte {later.offset}; "
                "refusing to cut sealed records (run `sealtrail journal verify`)"
            )
    match = _SEQ_RE.search(tail)
    was_append_only = protect.get_flags(path) & protect.FS_APPEND_FL
    if was_append_only:  # the append-only flag forbids truncation, even by root
        protect.set_flag(path, protect.FS_APPEND_FL, False)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    if was_append_only:
        protect.set_flag(path, protect.FS_APPEND_FL, True)
    scan.recovery = Recovery(
        cut_bytes=len(tail),
        cut_segment=path.name,
        partial_seq=int(match.group(1)) if match else None,
        last_good_seq=scan.next_seq - 1,
        last_sealed_seq=scan.last_seal_seq,
        unsealed_kept=scan.next_seq - 1 - scan.last_seal_seq,
    )
    log.warning("cut %d bytes from %s at byte %d (torn tail)", len(tail), path.name, offset)
