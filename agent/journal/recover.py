"""Reopening a journal: rebuild the chain from the segments and cut a torn tail after a crash.

``scan`` reads what the writer needs to go on: the chain (seq, last hash, Merkle tree), the
host, the key epoch and the last seal, from the saved ``ScanState`` onwards where it still fits
the files. Sealed segments are only hashed: the writer trusts its own history (auditing it is
``verify``'s job). The live segment is parsed line by line; the first line that is torn,
unparsable or does not continue the chain starts the cut (``_cut``), unless a seal follows it,
in which case sealed evidence would be destroyed and opening fails instead.

The ``Chain`` does the bulk work (in C where the native core is loaded; a day at 1,000
records/s is 86 M records): sealed segments are hashed in one call and only their seal and
rotation lines parsed; in the live segment, runs of ordinary records that parse and continue the
chain are taken in one call (the verifier's fast path) and every other line is judged here.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from agent.errors import FormatError, JournalCorrupt
from agent.journal import protect
from agent.journal.canonical import JsonValue
from agent.journal.chain import Chain, new_chain
from agent.journal.record import Record, parse_line, record_hash
from agent.journal.segments import (
    list_segments,
    live_segment,
    read_segment,
    segment_number,
    split_lines,
)
from agent.journal.state import ChainState

log = logging.getLogger(__name__)

SCAN_STATE = ".scan-state.json"
SCAN_STATE_FORMAT = 2
_SEAL_MARK = b'"type":"seal"'
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
class Scan:
    """What ``scan`` rebuilt from the segments."""

    chain: Chain
    host: str | None = None
    key_id: str | None = None  # from the last key rotation (None: the genesis key)
    epoch_start: int | None = None
    last_seal_seq: int = -1
    tail: tuple[bytes, bytes] = (b"", b"")  # the last two lines
    recovery: Recovery | None = None


# ------------------------------------------------------------------------------ saved state
@dataclass(frozen=True)
class ScanState:
    """What ``scan`` knows at the end of a sealed segment, saved when the writer seals one.

    A cache, not evidence: ``scan`` checks it against the files (the segment's size and last
    line, the next segment's first record) and falls back to the full scan on any mismatch.
    With it, reopening hashes only the segments written since, instead of the whole history
    (a month at 100 records/s is ~120 GB). ``chain``: where the journal stands after the
    segment (its last record is a seal).
    """

    segment: str
    size: int
    chain: ChainState

    def __post_init__(self) -> None:
        if not isinstance(self.segment, str) or segment_number(self.segment) is None:
            raise FormatError(f"scan state segment {self.segment!r} is not a segment name")
        if type(self.size) is not int or self.size < 0:
            raise FormatError(f"scan state size must be a byte count, got {self.size!r}")
        if not isinstance(self.chain, ChainState):
            raise FormatError("scan state chain must be a chain state")

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "format": SCAN_STATE_FORMAT,
            "segment": self.segment,
            "size": self.size,
            "chain": self.chain.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScanState:
        """The exact inverse of ``to_dict``; raises ``FormatError``."""
        if not isinstance(data, Mapping) or data.get("format") != SCAN_STATE_FORMAT:
            raise FormatError("unknown format")
        if set(data) != {"format", "segment", "size", "chain"}:
            raise FormatError(f"fields {sorted(data)}, expected format, segment, size, chain")
        return cls(data["segment"], data["size"], ChainState.from_dict(data["chain"]))


def save_scan_state(directory: Path, state: ScanState) -> None:
    """Replace the saved state atomically; a failure only makes reopening slower."""
    path = directory / SCAN_STATE
    tmp = directory / (SCAN_STATE + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, orjson.dumps(state.to_dict()))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot save %s: %s", path, exc.strerror)


def _load_scan_state(
    directory: Path, segments: list[tuple[int, Path]], live: int
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
    why = _stale(raw, segments, live)
    if isinstance(why, str):
        log.warning("ignoring %s (%s): scanning every segment", path, why)
        return None
    return why


def _stale(
    raw: object, segments: list[tuple[int, Path]], live: int
) -> str | tuple[int, ScanState, tuple[bytes, bytes]]:
    """Why ``raw`` cannot be used, or what it gives."""
    if not isinstance(raw, dict) or raw.get("format") != SCAN_STATE_FORMAT:
        return "unknown format"
    try:
        state = ScanState.from_dict(raw)
    except FormatError as exc:
        return f"malformed: {exc}"
    sealed = [p.name for n, p in segments if n < live]
    if state.segment not in sealed:
        return f"{state.segment} is not a sealed segment of this journal"
    index = sealed.index(state.segment)
    seg_path = segments[index][1]
    next_path = segments[index + 1][1] if index + 1 < len(segments) else None
    prev = state.chain.prev
    try:
        if seg_path.stat().st_size != state.size:
            return f"{state.segment} changed size"
        with open(seg_path, "rb") as f:
            f.seek(max(0, state.size - (1 << 20)))
            chunk = f.read()
            if state.size > len(chunk):
                chunk = chunk[chunk.find(b"\n") + 1 :]  # from a line start
        first = b""
        if next_path is not None:
            with open(next_path, "rb") as f:
                first = f.readline(1 << 24)
    except OSError as exc:
        return exc.strerror or str(exc)
    lines = chunk.split(b"\n")
    if len(lines) < 3 or lines[-1]:
        return f"{state.segment} does not end in two complete lines"
    if record_hash(lines[-2]).hex() != prev:
        return f"{state.segment} does not end in the record it names"
    if first.endswith(b"\n"):
        assert next_path is not None
        try:
            record = parse_line(first[:-1])
        except FormatError as exc:
            return f"{next_path.name} starts with a bad record: {exc}"
        if record.seq != state.chain.next_seq or record.prev != prev:
            return f"{next_path.name} does not continue it"
    return index, state, (lines[-3], lines[-2])


# ------------------------------------------------------------------------------ the scan
def scan(directory: Path, *, use_native: bool = True, use_saved_state: bool = True) -> Scan:
    """Rebuild seq, chain, tree and key state; cut a torn tail of the live segment."""
    segments = list_segments(directory)
    live = live_segment(segments)
    result = Scan(chain=new_chain(use_native=use_native))
    first = 0
    saved = _load_scan_state(directory, segments, live) if use_saved_state else None
    if saved is not None:
        index, st, result.tail = saved
        state = st.chain
        result.chain = new_chain(state, use_native=use_native)
        result.host, result.key_id = state.host, state.key_id
        result.epoch_start, result.last_seal_seq = state.epoch_start, state.last_seal
        first = index + 1
    chain = result.chain
    for number, path in segments[first:]:
        content = read_segment(path)
        if number < live:
            _trust_segment(result, path, content)
            continue
        pos, end = 0, len(content)
        boot: str | None = None
        while pos < end:
            if result.host is not None and boot is not None:
                taken_to = chain.add_ordinary(content, pos, result.host, boot)
                if taken_to > pos:
                    _after_bulk(result, content, pos, taken_to)
                    pos = taken_to
                    if pos >= end:
                        break
            nl = content.find(b"\n", pos)
            data = content[pos:] if nl < 0 else content[pos:nl]
            try:
                if nl < 0:
                    raise FormatError("torn line")
                record = parse_line(data)
                if record.seq != chain.next_seq or record.prev != chain.prev:
                    raise FormatError("does not continue the chain")
            except FormatError:
                _cut(result, path, content, pos)
                return result
            _trust(result, data, record)
            boot = record.boot_id
            pos = nl + 1
    n = chain.next_seq
    if n and not _clean_end(result):
        last = result.last_seal_seq
        result.recovery = Recovery(0, None, None, n - 1, last, n - 1 - last)
    return result


def _trust_segment(scan: Scan, path: Path, content: bytes) -> None:
    """A sealed segment, in bulk: hash every line, parse only the lines ``_trust`` would
    parse (the journal's first, seals, key rotations)."""
    end = scan.chain.add_lines(content)
    if end != len(content):
        raise JournalCorrupt(f"{path.name} ends in a torn line at byte {end}")
    if end == 0:
        return
    starts = {0} if not scan.host else set()
    for mark in (_SEAL_MARK, _ROTATION_MARK):
        at = content.find(mark)
        while at >= 0:
            starts.add(content.rfind(b"\n", 0, at) + 1)
            at = content.find(mark, at + len(mark))
    for start in sorted(starts):
        _note(scan, parse_line(content[start : content.index(b"\n", start)]))
    _after_bulk(scan, content, 0, end)


def _after_bulk(scan: Scan, content: bytes, start: int, end: int) -> None:
    """Bring the tail up to date after the chain took the lines of ``content[start:end]``."""
    last_start = max(start, content.rfind(b"\n", start, end - 1) + 1)
    if last_start > start:
        before_start = max(start, content.rfind(b"\n", start, last_start - 1) + 1)
        before = content[before_start : last_start - 1]
    else:
        before = scan.tail[1]
    scan.tail = (before, content[last_start : end - 1])


def _clean_end(scan: Scan) -> bool:
    """Did the last run end with ``close``: a stop record followed by its seal?"""
    before, last = scan.tail
    try:
        return parse_line(before).type == "stop" and parse_line(last).type == "seal"
    except FormatError:
        return False


def _trust(scan: Scan, line: bytes, record: Record) -> None:
    scan.chain.add(line)
    _note(scan, record)
    scan.tail = (scan.tail[1], line)


def _note(scan: Scan, record: Record) -> None:
    scan.host = scan.host or record.host
    if record.type == "key_rotation":
        scan.key_id = str(record.fields["new_key_id"])
        scan.epoch_start = record.ts
    elif record.type == "seal":
        scan.last_seal_seq = record.seq


def _cut(scan: Scan, path: Path, content: bytes, offset: int) -> None:
    tail = content[offset:]
    for later in split_lines(path.name, tail, offset):
        if later.offset > offset and _SEAL_MARK in later.data:
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
    n, last = scan.chain.next_seq, scan.last_seal_seq
    scan.recovery = Recovery(
        cut_bytes=len(tail),
        cut_segment=path.name,
        partial_seq=int(match.group(1)) if match else None,
        last_good_seq=n - 1,
        last_sealed_seq=last,
        unsealed_kept=n - 1 - last,
    )
    log.warning("cut %d bytes from %s at byte %d (torn tail)", len(tail), path.name, offset)
