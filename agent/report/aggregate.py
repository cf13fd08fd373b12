"""What the report shows, counted from the records that verified (``evidence``), in one pass.

Only counts, timestamps (8 bytes a record, for the timeline charts) and the rare records the
tables list (policy changes, loss, gaps, restarts: at most ``MAX_ROWS`` of each, the rest
counted) are kept: a journal of millions of records is reported in bounded memory.
"""

from __future__ import annotations

import collections
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

#: Verdict actions that stopped something, or would have in enforce mode.
DENIALS = ("deny", "kill", "would_deny", "would_kill")
#: Rows kept per table; the count of every row is kept whatever this is.
MAX_ROWS = 10_000
#: The latest denials listed with what they were about.
RECENT_DENIALS = 200
_POLICY_TYPES = frozenset({"policy_loaded", "policy_rejected", "policy_mismatch"})
_RESTART_TYPES = frozenset({"start", "stop", "recovery", "guard_takeover", "fanotify_takeover"})


@dataclass(frozen=True)
class Row:
    """One row of a table: its time and its cells, as text (escaped when rendered)."""

    ts: int
    cells: tuple[str, ...]


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)
    total: int = 0

    def add(self, ts: int, *cells: str) -> None:
        self.total += 1
        if len(self.rows) < MAX_ROWS:
            self.rows.append(Row(ts, cells))


def _s(value: object) -> str:
    """A field as text: strings as they are, anything else as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


@dataclass
class Aggregate:
    """Counts and tables of the verified records with ``since <= ts <= until`` (ns)."""

    since: int | None = None
    until: int | None = None
    records: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    types: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    #: (rule, action) of the verdicts in ``DENIALS``.
    denials: Counter[tuple[str, str]] = field(default_factory=Counter)
    event_times: dict[str, array[int]] = field(default_factory=dict)
    verdict_times: dict[str, array[int]] = field(default_factory=dict)
    recent_denials: collections.deque[Row] = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_DENIALS)
    )
    policy: Table = field(default_factory=Table)
    loss: Table = field(default_factory=Table)
    lost_events: int = 0
    gaps: Table = field(default_factory=Table)
    restarts: Table = field(default_factory=Table)
    #: Events and verdicts that name the acting user: ``uid``; ``loginuid`` (auditd's auid).
    with_uid: int = 0
    with_loginuid: int = 0

    def __post_init__(self) -> None:
        self._from = -1 if self.since is None else self.since
        self._to = 1 << 64 if self.until is None else self.until

    def __call__(self, record: dict[str, Any]) -> None:
        ts = int(record["ts"])
        if not self._from <= ts <= self._to:
            return
        self.records += 1
        if self.first_ts is None:
            self.first_ts = ts
        self.last_ts = ts
        rtype = record["type"]
        self.types[rtype] += 1
        if rtype == "event":
            kind = _s(record.get("kind"))
            self.kinds[kind] += 1
            self._when(self.event_times, kind, ts)
            self._who(record)
        elif rtype == "verdict":
            self._verdict(record, ts)
        elif rtype in _POLICY_TYPES:
            self._policy(record, rtype, ts)
        elif rtype == "loss":
            self._loss(record, ts)
        elif rtype == "enforcement_gap":
            self.gaps.add(
                ts, "enforcement gap", f"{_s(record.get('mechanism'))}: {_s(record.get('reason'))}"
            )
        if rtype in _RESTART_TYPES:
            self._restart(record, rtype, ts)

    @staticmethod
    def _when(times: dict[str, array[int]], key: str, ts: int) -> None:
        series = times.get(key)
        if series is None:
            series = times[key] = array("q")
        series.append(ts)

    def _who(self, record: dict[str, Any]) -> None:
        self.with_uid += "uid" in record
        self.with_loginuid += "loginuid" in record or "auid" in record

    def _verdict(self, record: dict[str, Any], ts: int) -> None:
        action, rule = _s(record.get("action")), _s(record.get("rule"))
        self.actions[action] += 1
        self._when(self.verdict_times, action, ts)
        self._who(record)
        if action in DENIALS:
            self.denials[rule, action] += 1
            self.recent_denials.append(
                Row(
                    ts,
                    (
                        rule,
                        action,
                        _s(record.get("mechanism")),
                        _s(record.get("pid")),
                        _s(record.get("uid")),
                        _s(record.get("exe")),
                        _s(record.get("object")),
                    ),
                )
            )

    def _policy(self, record: dict[str, Any], rtype: str, ts: int) -> None:
        change = rtype.removeprefix("policy_")
        digest = record.get("digest") if rtype != "policy_rejected" else record.get("kept")
        files = record.get("files")
        errors = record.get("errors")
        self.policy.add(
            ts,
            change,
            _s(record.get("trigger")),
            _s(digest),
            str(len(files)) if isinstance(files, list) else "",
            "; ".join(_s(e) for e in errors) if isinstance(errors, list) else "",
        )

    def _loss(self, record: dict[str, Any], ts: int) -> None:
        drops = record.get("drops")
        count = sum(v for v in drops.values() if type(v) is int) if isinstance(drops, dict) else 0
        self.lost_events += count
        since = record.get("since_ns")
        until = record.get("until_ns", record["ts"])
        start = int(since) if isinstance(since, str) and since.isdigit() else ts
        end = int(until) if isinstance(until, str) and until.isdigit() else ts
        self.loss.add(start, str(end), str(count), _s(drops), _s(record.get("reason")))
        if record.get("reason") == "journal_unwritable":
            self.gaps.add(
                start,
                "journal not writable",
                f"until {end}: {count} records not recorded ({_s(record.get('error'))})",
            )

    def _restart(self, record: dict[str, Any], rtype: str, ts: int) -> None:
        if rtype == "start":
            detail = (
                f"version {_s(record.get('version'))}, pid {_s(record.get('pid'))}, "
                f"kernel {_s(record.get('kernel'))}, boot {_s(record.get('boot_id'))}"
            )
        elif rtype == "stop":
            detail = f"reason {_s(record.get('reason'))}"
            if record.get("error"):
                detail += f": {_s(record.get('error'))}"
        elif rtype == "recovery":
            detail = (
                f"the run before ended without its stop record (crash or cut): "
                f"{_s(record.get('cut_bytes'))} torn bytes cut, last sealed seq "
                f"{_s(record.get('last_sealed_seq'))}"
            )
            self.gaps.add(ts, "unclean stop", detail)
        else:
            detail = _s({k: v for k, v in record.items() if k not in _COMMON})
        self.restarts.add(ts, rtype, detail)


_COMMON = frozenset({"seq", "ts", "host", "boot_id", "type", "prev"})
