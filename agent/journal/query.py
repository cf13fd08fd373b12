"""Finding records in a journal directory: filters, a jump by time, the last N, and follow.

The library behind ``sealtrail journal query|tail|export`` (docs/query.md), for anything that
reads records by what they say (reports, metrics, exports)::

    from agent.journal.query import Filter, parse_time, query, last, follow

    flt = Filter(since=parse_time("-1h"), actions=frozenset({"deny"}), auids=frozenset({1000}))
    for match in query(journal_dir, flt):     # oldest first
        match.record.seq, match.record.fields["rule"], match.line.data  # the stored bytes
    last(journal_dir, flt, 10)                # the 10 newest matches, oldest first
    for match in follow(journal_dir, flt):    # new records as they are appended, forever
        ...

``Filter`` is an object that cannot be invalid: it is built from values already parsed (a
``Filter.from_text`` builds it from command-line text and names the option that is wrong).
Every criterion given must hold (AND); a criterion with several values holds if one does (OR),
as with ``ausearch``. A criterion on a field a record does not carry excludes the record
(``--pid`` shows no seals).

Time: ``since`` does not read the journal from the start. Segment files are in time order,
so a binary search over the first record of each segment picks the segment, and a binary
search over byte offsets inside it (each probe reads the line after the offset) finds the
first record at or after ``since``: O(log n) small reads, whatever the journal's size. This
relies on the records' ``ts`` (the writer's wall clock) not going backwards: after the clock
was stepped back, records from before the step that are later than ``since`` can be passed
over (the records read are still filtered by ``ts``, so none outside the range is shown).
``until`` stops the scan at the first record after it, on the same assumption.

IO only, no verification: records are read as stored (``Match.line`` holds the stored bytes),
and a line that is not a record is passed over and counted in ``Scan.skipped``; ``sealtrail
journal verify`` is what says whether the journal is authentic.
"""

from __future__ import annotations

import fnmatch
import functools
import pwd
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO, NamedTuple

import orjson

from agent.errors import FormatError, UsageError
from agent.journal.canonical import JsonValue, canonical
from agent.journal.record import REQUIRED_FIELDS, VERDICT_ACTIONS, Record
from agent.journal.segments import Line, list_segments

#: ``loginuid`` of a task no login set (auditd prints it as ``unset``; ``(u32)-1``).
AUID_UNSET = 0xFFFFFFFF
_BLOCK = 1 << 20  # bytes read at a time while scanning forward
_PROBE = 1 << 16  # bytes read to find one line during a binary search
_FOLLOW_POLL_S = 0.25


# ----------------------------------------------------------------------------- time
_UNITS: Mapping[str, float] = {
    **dict.fromkeys(("us", "usec", "µs"), 1e-6),
    **dict.fromkeys(("ms", "msec"), 1e-3),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
    **dict.fromkeys(("w", "week", "weeks"), 7 * 86400.0),
    **dict.fromkeys(("M", "month", "months"), 30.44 * 86400.0),  # systemd.time(7)'s month
    **dict.fromkeys(("y", "year", "years"), 365.25 * 86400.0),
}
_SPAN_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Zµ]+)")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2})(\.\d+)?)?")


def _span(text: str) -> float | None:
    """Seconds of a systemd time span (``1h30min``, ``2 days``), None if it is not one."""
    pos, total = 0, 0.0
    while pos < len(text):
        match = _SPAN_PART.match(text, pos)
        if match is None or match.group(2) not in _UNITS:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total if pos else None


#: what argparse must take as a value, not an option, after --since/--until: "-1h", "-2d 3h"
#: (journalctl's relative times; parsers set it as their ``_negative_number_matcher``)
RELATIVE_TIME = re.compile(r"^-\d+(\.\d+)?[a-zA-Zµ \d.]*$")


def parse_time(text: str, now: float | None = None) -> int:
    """A point in time as nanoseconds since the epoch, from the forms ``journalctl --since``
    takes (systemd.time(7)), read in local time unless a zone is given:

    ``2026-12-02 18:40:00`` (seconds, fraction optional), ``2026-12-02`` (midnight),
    ``18:40`` (today), ISO 8601 (``2026-12-02T18:40:00Z``, ``+01:00``), a trailing ``UTC``;
    ``now``, ``today``, ``yesterday``, ``tomorrow``; ``@1764700800`` (epoch seconds);
    ``-1h``, ``1h ago``, ``+30min``, ``30min left`` (relative to now; units ``us ms s min h d
    w M y`` and their long names, combinable: ``-1h30min``); and a bare span ``10m`` as an
    age (what ``journal tail --since`` always took: ``10m`` = ``-10m``).
    Raises ``ValueError`` with the reason.
    """
    now = time.time() if now is None else now
    word = text.strip()
    if not word:
        raise ValueError("empty time")
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    days = {"today": 0, "yesterday": -1, "tomorrow": 1}
    if word == "now":
        return int(now * 1e9)
    if word in days:
        return int((midnight + timedelta(days=days[word])).timestamp() * 1e9)
    if word.startswith("@"):
        try:
            return int(float(word[1:]) * 1e9)
        except ValueError:
            raise ValueError("@ takes seconds since the epoch, like @1764700800") from None
    for sign, body in ((-1, word.removesuffix(" ago")), (1, word.removesuffix(" left"))):
        if body != word:
            seconds = _span(body)
            if seconds is not None:
                return int((now + sign * seconds) * 1e9)
    if word[0] in "+-" and (seconds := _span(word[1:])) is not None:
        return int((now + seconds * (1 if word[0] == "+" else -1)) * 1e9)
    if (seconds := _span(word)) is not None:
        return int((now - seconds) * 1e9)
    if (clock := _CLOCK.fullmatch(word)) is not None:
        hour, minute, second, frac = clock.groups()
        at = midnight.replace(hour=int(hour), minute=int(minute), second=int(second or 0))
        return int((at.timestamp() + float(frac or 0)) * 1e9)
    iso = word.removesuffix(" UTC").replace(" ", "T", 1)
    try:
        parsed = datetime.fromisoformat(iso + ("+00:00" if word.endswith(" UTC") else ""))
    except ValueError:
        raise ValueError(
            "not a time: use 'YYYY-MM-DD [HH:MM[:SS]]', 'HH:MM', ISO 8601, @EPOCH, "
            "now/today/yesterday, or a relative time like -1h, '2 days ago', +30min"
        ) from None
    return int(parsed.timestamp() * 1e9)


# ----------------------------------------------------------------------------- filters
def _paths(record: Record) -> Iterator[str]:
    """The paths a record is about: an event's object (and an exec's binary), a verdict's."""
    fields = record.fields
    places: list[Mapping[str, JsonValue]] = [fields]
    obj = fields.get("object")
    if record.type == "verdict" and isinstance(obj, dict):
        places.append(obj)
    for place in places:
        for name in ("path", "new_path", "filename"):
            value = place.get(name)
            if isinstance(value, str):
                yield value
    if fields.get("kind") == "exec" and isinstance(fields.get("exe"), str):
        yield str(fields["exe"])


def _int_field(fields: Mapping[str, JsonValue], name: str) -> int | None:
    value = fields.get(name)
    return value if type(value) is int else None


@dataclass(frozen=True)
class Filter:
    """What records to keep. ``None`` (or an empty ``Filter()``) keeps everything.

    ``since``/``until`` are ns since the epoch (inclusive); ``kinds`` match an event's ``kind``
    and a verdict's ``operation``; ``exes`` and ``paths`` are globs (``fnmatch``: ``*`` also
    crosses ``/``), ``paths`` tried on every path a record is about; ``policies`` are digest
    prefixes (a verdict's ``policy``, a policy record's ``digest``); ``auids`` and ``sessions``
    the login uid and audit session id the kernel recorded of the acting task.
    """

    since: int | None = None
    until: int | None = None
    types: frozenset[str] | None = None
    kinds: frozenset[str] | None = None
    actions: frozenset[str] | None = None
    rules: frozenset[str] | None = None
    policies: frozenset[str] | None = None
    pids: frozenset[int] | None = None
    exes: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    hosts: frozenset[str] | None = None
    auids: frozenset[int] | None = None
    sessions: frozenset[int] | None = None
    _checks: tuple[Callable[[Record], bool], ...] = field(
        init=False, repr=False, compare=False, default=()
    )
    #: Byte strings a stored line must hold for the record to match (one of each group):
    #: canonical JSON writes a field one way only, so lines that cannot match are passed over
    #: without parsing them (the full check follows on the rest).
    needles: tuple[tuple[bytes, ...], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.until < self.since:
            raise UsageError("--until is before --since: no record can match")
        if self.types is not None and (unknown := self.types - REQUIRED_FIELDS.keys()):
            raise UsageError(
                f"--type {','.join(sorted(unknown))}: not a record type "
                f"(one of {', '.join(sorted(REQUIRED_FIELDS))})"
            )
        if self.actions is not None and (unknown := self.actions - VERDICT_ACTIONS):
            raise UsageError(
                f"--action {','.join(sorted(unknown))}: not a verdict action "
                f"(one of {', '.join(sorted(VERDICT_ACTIONS))})"
            )
        for digest in self.policies or ():
            if not re.fullmatch(r"[0-9a-f]{4,64}", digest):
                raise UsageError(
                    f"--policy {digest!r}: give the policy digest, or at least its first 4 "
                    "hex digits (lower case)"
                )
        object.__setattr__(self, "_checks", tuple(self._build()))
        object.__setattr__(self, "needles", tuple(self._needles()))

    def _needles(self) -> Iterator[tuple[bytes, ...]]:
        def text(name: str, values: Iterable[str], *, prefix: bool = False) -> Iterator[bytes]:
            for value in values:
                encoded = canonical(value)
                yield b'"' + name.encode() + b'":' + (encoded[:-1] if prefix else encoded)

        def number(name: str, values: Iterable[int]) -> tuple[bytes, ...]:
            return tuple(b'"%s":%d' % (name.encode(), v) for v in values)

        if self.types is not None:
            yield tuple(text("type", self.types))
        if self.hosts is not None:
            yield tuple(text("host", self.hosts))
        if self.kinds is not None:
            yield (*text("kind", self.kinds), *text("operation", self.kinds))
        if self.actions is not None:
            yield tuple(text("action", self.actions))
        if self.rules is not None:
            yield tuple(text("rule", self.rules))
        if self.policies is not None:
            yield (*text("policy", self.policies, prefix=True),
                   *text("digest", self.policies, prefix=True))  # fmt: skip
        for name, wanted in (("pid", self.pids), ("auid", self.auids), ("ses", self.sessions)):
            if wanted is not None:
                yield number(name, wanted)

    @property
    def only_time(self) -> bool:
        """True if nothing but ``since`` and ``until`` is asked for (``stored_lines`` will do)."""
        others = (self.types, self.kinds, self.actions, self.rules, self.policies, self.pids,
                  self.exes, self.paths, self.hosts, self.auids, self.sessions)  # fmt: skip
        return all(value is None for value in others)

    def may_match(self, line: bytes) -> bool:
        """False if the stored ``line`` cannot hold a matching record (``needles``)."""
        return all(any(n in line for n in group) for group in self.needles)

    def _build(self) -> Iterator[Callable[[Record], bool]]:
        since, until = self.since, self.until
        if since is not None:
            yield lambda r: r.ts >= since
        if until is not None:
            yield lambda r: r.ts <= until
        if (types := self.types) is not None:
            yield lambda r: r.type in types
        if (hosts := self.hosts) is not None:
            yield lambda r: r.host in hosts
        if (kinds := self.kinds) is not None:
            yield lambda r: (r.fields.get("kind") if r.type == "event" else r.fields.get(
                "operation")) in kinds  # fmt: skip
        if (actions := self.actions) is not None:
            yield lambda r: r.type == "verdict" and r.fields.get("action") in actions
        if (rules := self.rules) is not None:
            yield lambda r: r.type == "verdict" and r.fields.get("rule") in rules
        if self.policies is not None:
            prefixes = tuple(self.policies)
            yield lambda r: any(
                isinstance(d := r.fields.get(name), str) and d.startswith(prefixes)
                for name in ("policy", "digest")
            )
        for name, wanted in (("pid", self.pids), ("auid", self.auids), ("ses", self.sessions)):
            if wanted is not None:
                yield lambda r, n=name, w=wanted: _int_field(r.fields, n) in w  # type: ignore[misc]
        if (exes := self.exes) is not None:
            yield (
                lambda r: (
                    isinstance(e := r.fields.get("exe"), str)
                    and any(fnmatch.fnmatchcase(e, g) for g in exes)
                )
            )
        if (globs := self.paths) is not None:
            yield lambda r: any(fnmatch.fnmatchcase(p, g) for p in _paths(r) for g in globs)

    def __call__(self, record: Record) -> bool:
        return all(check(record) for check in self._checks)

    @classmethod
    def from_text(cls, *, now: float | None = None, **options: str | None) -> Filter:
        """A filter from command-line text: each option comma-separated (``--pid 1,2``);
        ``since``/``until`` as ``parse_time``; ``auid`` numbers, user names or ``unset``."""
        values: dict[str, object] = {}
        for name, text in options.items():
            if text is None:
                continue
            flag = "--" + name
            if name in ("since", "until"):
                try:
                    values[name] = parse_time(text, now)
                except ValueError as exc:
                    raise UsageError(f"{flag} {text!r}: {exc}") from None
                continue
            items = [t.strip() for t in text.split(",") if t.strip()]
            if not items:
                raise UsageError(f"{flag} needs a value")
            if name == "pid" or name == "session":
                values["pids" if name == "pid" else "sessions"] = frozenset(
                    _number(flag, t) for t in items
                )
            elif name == "auid":
                values["auids"] = frozenset(_auid(t) for t in items)
            elif name in ("exe", "path"):
                values[name + "s"] = tuple(items)
            elif name == "policy":
                values["policies"] = frozenset(items)
            elif name in ("type", "kind", "action", "rule", "host"):
                values[name + "s"] = frozenset(items)
            else:
                raise UsageError(f"unknown filter {flag}")
        return cls(**values)  # type: ignore[arg-type]


def _number(flag: str, text: str) -> int:
    if not text.isdigit():
        raise UsageError(f"{flag} {text!r}: not a number")
    return int(text)


def _auid(text: str) -> int:
    """A login uid: a number, ``unset`` (no login set it), or a user name of this host."""
    if text == "unset" or text == "-1":
        return AUID_UNSET
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise UsageError(f"--auid {text!r}: no such user on this host (give the uid)") from None


@functools.lru_cache(maxsize=4096)
def user_name(uid: int) -> str | None:
    """The name of ``uid`` on this host (``ausearch -i``), None if it has none (cached: a
    lookup reads /etc/passwd, and a listing asks for the same few uids on every line)."""
    if uid == AUID_UNSET:
        return "unset"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


# ----------------------------------------------------------------------------- reading
class Match(NamedTuple):
    """One record found: the stored line (its segment, offset and bytes) and the record."""

    line: Line
    record: Record


@dataclass
class Scan:
    """What a query passed over: lines that are not records (``journal verify`` says why)."""

    skipped: int = 0


def _record(data: bytes) -> Record | None:
    try:
        return Record.from_dict(orjson.loads(data))
    except (orjson.JSONDecodeError, FormatError, TypeError):
        return None


def _ts_of(data: bytes) -> int | None:
    record = _record(data)
    return None if record is None else record.ts


def _line_at(f: BinaryIO, offset: int) -> tuple[int, bytes] | None:
    """The first complete line starting at or after ``offset`` (offset 0 is a line start)."""
    pos = offset
    if offset > 0:  # skip the rest of the line ``offset`` falls in
        f.seek(offset - 1)
        while True:
            chunk: bytes = f.read(_PROBE)
            if not chunk:
                return None
            nl = chunk.find(b"\n")
            if nl >= 0:
                pos += nl
                break
            pos += len(chunk)
    f.seek(pos)
    data = b""
    while True:
        chunk = f.read(_PROBE)
        if not chunk:
            return None  # no newline: a torn last line is not a record yet
        nl = chunk.find(b"\n")
        if nl >= 0:
            return pos, data + chunk[:nl]
        data += chunk


def _first_ts(path: Path) -> int | None:
    with path.open("rb") as f:
        found = _line_at(f, 0)
    return None if found is None else _ts_of(found[1])


def seek_time(directory: Path, since: int) -> tuple[int, int]:
    """Where to start reading for records at or after ``since``: (index into
    ``list_segments``, byte offset of a line start). Binary searches, no full read."""
    segments = list_segments(directory)
    lo, hi = 0, len(segments) - 1
    start = 0
    while lo <= hi:  # the last segment whose first record is before ``since``
        mid = (lo + hi) // 2
        ts = _first_ts(segments[mid][1])
        if ts is not None and ts < since:
            start, lo = mid, mid + 1
        else:
            hi = mid - 1
    if not segments:
        return 0, 0
    path = segments[start][1]
    with path.open("rb") as f:
        lo, hi = 0, f.seek(0, 2)
        best = 0  # a line start before every record at or after ``since``
        while hi - lo > _PROBE:
            mid = (lo + hi) // 2
            found = _line_at(f, mid)
            if found is None:
                hi = mid
                continue
            line_start, data = found
            ts = _ts_of(data)
            if ts is not None and ts < since:
                best, lo = line_start, line_start + 1
            else:
                hi = mid
    return start, best


def _lines(path: Path, offset: int) -> Iterator[Line]:
    """The complete lines of one segment from ``offset``, read a block at a time."""
    name = path.name
    with path.open("rb") as f:
        f.seek(offset)
        pending, base = b"", offset
        while block := f.read(_BLOCK):
            content = pending + block
            pos, find = 0, content.find
            while (nl := find(b"\n", pos)) >= 0:
                yield Line(name, base + pos, content[pos:nl])
                pos = nl + 1
            pending, base = content[pos:], base + pos


def query(
    directory: Path,
    flt: Filter | None = None,
    *,
    scan: Scan | None = None,
) -> Iterator[Match]:
    """Every record that ``flt`` keeps, oldest first (starting at ``flt.since`` by a jump)."""
    flt = flt or Filter()
    scan = scan if scan is not None else Scan()
    segments = list_segments(directory)
    first, offset = seek_time(directory, flt.since) if flt.since is not None else (0, 0)
    until = flt.until
    # lines that cannot match are passed over unparsed, up to where records after ``until``
    # may begin (a second jump); from there every record is parsed, to stop at the first
    stop_at = seek_time(directory, until + 1) if until is not None else (len(segments), 0)
    may_match = flt.may_match if flt.needles else None
    for index in range(first, len(segments)):
        for line in _lines(segments[index][1], offset if index == first else 0):
            before_end = (index, line.offset) < stop_at
            if may_match is not None and before_end and not may_match(line.data):
                continue
            record = _record(line.data)
            if record is None:
                scan.skipped += 1
                continue
            if until is not None and record.ts > until:
                return
            if flt(record):
                yield Match(line, record)


def stored_lines(directory: Path, since: int | None = None, until: int | None = None) -> Iterator[
    Line
]:  # fmt: skip
    """The stored lines of the records written from ``since`` to ``until`` (ns, inclusive),
    for output as stored (``-o json``): only the lines near the two ends are parsed, to find
    where the range begins and ends; between them lines are handed out as they are (a damaged
    line too: ``journal verify`` says what is wrong with it). The same lines as ``query``
    with a filter of only ``since`` and ``until`` (on the same clock assumption), without
    parsing each (about 15 us a record on this project's CI machine kind)."""
    segments = list_segments(directory)
    first, offset = seek_time(directory, since) if since is not None else (0, 0)
    stop_at = seek_time(directory, until + 1) if until is not None else (len(segments), 0)
    started = since is None
    for index in range(first, len(segments)):
        for line in _lines(segments[index][1], offset if index == first else 0):
            before_end = (index, line.offset) < stop_at
            if started and before_end:
                yield line
                continue
            ts = _ts_of(line.data)
            if ts is None:
                continue
            if not started:
                if since is not None and ts < since:
                    continue
                started = True
            if until is not None and ts > until:
                return
            yield line


def _lines_backward(path: Path) -> Iterator[Line]:
    """The complete lines of one segment, last first (a torn last line left out)."""
    name = path.name
    with path.open("rb") as f:
        end = f.seek(0, 2)
        head = b""  # the start of a line whose beginning is not read yet (it ends at ``end``)
        complete = False  # a newline was seen after ``head``
        while end > 0:
            start = max(0, end - _PROBE)
            f.seek(start)
            content = f.read(end - start) + head
            parts = content.split(b"\n")
            starts = [start]
            for part in parts[:-1]:
                starts.append(starts[-1] + len(part) + 1)
            head = parts[0]
            body = list(zip(starts[1:], parts[1:], strict=True))
            if not complete:
                if not body:
                    end = start
                    continue
                body = body[:-1]  # after the last newline: a torn line or nothing
                complete = True
            for offset, data in reversed(body):
                yield Line(name, offset, data)
            end = start
        if complete and head:
            yield Line(name, 0, head)


def last(directory: Path, flt: Filter | None, count: int, *, scan: Scan | None = None) -> list[
    Match
]:  # fmt: skip
    """The ``count`` newest records ``flt`` keeps, oldest first: read from the end backwards,
    stopping at ``count`` matches or at the first record before ``flt.since``."""
    flt = flt or Filter()
    scan = scan if scan is not None else Scan()
    found: list[Match] = []
    if count <= 0:
        return found
    for _, path in reversed(list_segments(directory)):
        for line in _lines_backward(path):
            if flt.since is None and not flt.may_match(line.data):
                continue
            record = _record(line.data)
            if record is None:
                scan.skipped += 1
                continue
            if flt.since is not None and record.ts < flt.since:
                return found[::-1]
            if flt(record):
                found.append(Match(line, record))
                if len(found) >= count:
                    return found[::-1]
    return found[::-1]


class Position(NamedTuple):
    """A place in a journal: segment number and byte offset (a line start)."""

    segment: int
    offset: int


def end_position(directory: Path) -> Position:
    """Where the next record will be appended: after the last complete line."""
    segments = list_segments(directory)
    if not segments:
        return Position(1, 0)
    number, path = segments[-1]
    data_end = path.stat().st_size
    with path.open("rb") as f:  # a torn last line is read again when it is completed
        f.seek(max(0, data_end - _PROBE))
        tail = f.read()
    cut = tail.rfind(b"\n")
    return Position(number, data_end - len(tail) + cut + 1 if cut >= 0 else 0)


def follow(
    directory: Path,
    flt: Filter | None = None,
    start: Position | None = None,
    *,
    poll: float = _FOLLOW_POLL_S,
    idle: Callable[[], bool] | None = None,
) -> Iterator[Match]:
    """Records ``flt`` keeps as they are appended after ``start`` (default: the end), going on
    into the next segment when the writer rotates. Runs until ``idle`` (called between polls
    that found nothing) returns False; forever without it."""
    flt = flt or Filter()
    number, offset = start if start is not None else end_position(directory)
    path = directory / f"seg-{number:06d}.jsonl"
    partial = b""
    while True:
        data = b""
        if path.exists():
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
        if data:
            base = offset - len(partial)
            offset += len(data)
            content = partial + data
            cut = content.rfind(b"\n") + 1
            partial = content[cut:]
            pos = 0
            while pos < cut:
                nl = content.index(b"\n", pos)
                data = content[pos:nl]
                record = _record(data) if flt.may_match(data) else None
                if record is not None and flt(record):
                    yield Match(Line(path.name, base + pos, content[pos:nl]), record)
                pos = nl + 1
            continue
        newer = [(n, p) for n, p in list_segments(directory) if n > number]
        if newer:
            number, path = newer[0]
            offset, partial = 0, b""
            continue
        if idle is not None and not idle():
            return
        time.sleep(poll)
