"""``sealtrail journal query|tail`` and ``agent.journal.query``: filters, the jump by time,
the newest N, follow across segment rotation, and errors for bad filters.

Journals are written by the real ``JournalWriter`` with a clock the test sets, so record times
are known and segments rotate (a small ``segment_bytes``)."""

from __future__ import annotations

import json
import pwd
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from agent.cli import main
from agent.errors import UsageError
from agent.journal.query import (
    AUID_UNSET,
    Filter,
    Position,
    end_position,
    follow,
    last,
    parse_time,
    query,
    seek_time,
    stored_lines,
)
from agent.journal.record import record_hash
from agent.journal.segments import list_segments
from agent.journal.writer import JournalWriter

T0 = 1_764_000_000 * 10**9  # 2025-11-24 16:00:00 UTC
STEP = 10**9  # one record a second
DIGEST = "cd" * 32


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def open_writer(root: Path, clock: Clock, segment_bytes: int = 4000) -> JournalWriter:
    return JournalWriter.open(
        root / "journal",
        root / "keys",
        host="web-01",
        boot_id="boot-1",
        segment_bytes=segment_bytes,
        protect_files=False,
        seal_every=25,
        seal_interval=3600.0,
        clock=clock,
    )


def event(i: int) -> dict[str, object]:
    """Record ``i`` of the test journal: execs, opens and connects of pids 100..104, login uids
    1000 and 1001 (and one task no login set), sessions 7 and 8."""
    kind = ("exec", "open", "connect")[i % 3]
    fields: dict[str, object] = {
        "kind": kind,
        "pid": 100 + i % 5,
        "uid": 0,
        "auid": (1000, 1001, AUID_UNSET)[i % 3 if i % 7 else 2],
        "ses": 7 + i % 2,
        "exe": "/usr/bin/curl" if kind == "connect" else "/bin/cat",
    }
    if kind == "open":
        fields["path"] = f"/etc/app/{i}.conf" if i % 2 else f"/var/log/{i}.log"
    if kind == "exec":
        fields["argv"] = ["cat", str(i)]
    return fields


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    """600 records one second apart (T0 .. T0+599 s) and verdicts, over many segments."""
    clock = Clock()
    w = open_writer(tmp_path, clock)
    w.append("start", {"version": "0.1.0"})
    w.append("policy_loaded", {"digest": DIGEST, "files": ["a.yaml"]})
    for i in range(600):
        clock.now = T0 + i * STEP
        w.append("event", event(i))
        if i % 50 == 49:
            w.append(
                "verdict",
                {"action": "deny" if i % 100 == 49 else "would_deny", "policy": DIGEST,
                 "rule": f"r{i // 100}", "pid": 100 + i % 5, "exe": "/bin/cat",
                 "operation": "open", "auid": 1000, "ses": 7,
                 "object": {"path": f"/etc/shadow{i}"}},
            )  # fmt: skip
    w.close({"reason": "test"})
    directory = tmp_path / "journal"
    assert len(list_segments(directory)) > 20
    return directory


def seqs(found: Iterator[object] | list[object]) -> list[int]:
    return [m.record.seq for m in found]  # type: ignore[attr-defined]


def all_records(directory: Path) -> list[tuple[int, int, dict[str, object]]]:
    out = []
    for _, path in list_segments(directory):
        for line in path.read_bytes().splitlines():
            d = json.loads(line)
            out.append((d["seq"], int(d["ts"]), d))
    return out


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------- time forms
def test_parse_time_forms_as_journalctl_takes_them() -> None:
    now = 1_764_700_800.0  # 2025-12-02 18:40:00 UTC
    assert parse_time("-1h", now) == int((now - 3600) * 1e9)
    assert parse_time("1h ago", now) == parse_time("-1h", now)
    assert parse_time("-1h30min", now) == int((now - 5400) * 1e9)
    assert parse_time("+30min", now) == int((now + 1800) * 1e9)
    assert parse_time("2 days ago", now) == int((now - 2 * 86400) * 1e9)
    assert parse_time("10m", now) == int((now - 600) * 1e9)  # tail's bare age, as before
    assert parse_time("now", now) == int(now * 1e9)
    assert parse_time("@1764700800.5") == 1_764_700_800_500_000_000
    assert parse_time("2025-12-02T18:40:00Z") == 1_764_700_800 * 10**9
    assert parse_time("2025-12-02 18:40:00 UTC") == 1_764_700_800 * 10**9
    local = datetime(2025, 12, 2, 18, 40).timestamp()
    assert parse_time("2025-12-02 18:40", now) == int(local * 1e9)
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    assert parse_time("today", now) == int(midnight.timestamp() * 1e9)
    assert parse_time("yesterday", now) == int(midnight.timestamp() * 1e9) - 86400 * 10**9
    assert parse_time("18:40", now) == int(midnight.replace(hour=18, minute=40).timestamp() * 1e9)
    for bad in ("", "soon", "-1 fortnight", "25:99:00", "@x"):
        with pytest.raises(ValueError):
            parse_time(bad, now)


# ----------------------------------------------------------------------------- filters
def test_each_filter_and_their_combination_select_exactly_the_matching_records(
    journal: Path,
) -> None:
    records = all_records(journal)

    def expect(pred: object) -> list[int]:
        return [s for s, _, d in records if pred(d)]  # type: ignore[operator]

    def got(**options: str) -> list[int]:
        return seqs(query(journal, Filter.from_text(**options)))

    assert got(pid="101,103") == expect(lambda d: d.get("pid") in (101, 103))
    assert got(kind="connect") == expect(lambda d: d.get("kind") == "connect")
    assert got(kind="open") == expect(
        lambda d: d.get("kind") == "open" or d.get("operation") == "open"
    )
    assert got(action="deny") == expect(lambda d: d.get("action") == "deny")
    assert got(rule="r2") == expect(lambda d: d.get("rule") == "r2")
    assert got(policy=DIGEST[:8]) == expect(
        lambda d: d.get("policy") == DIGEST or d.get("digest") == DIGEST
    )
    assert got(type="seal") == expect(lambda d: d["type"] == "seal")
    assert got(exe="*/curl") == expect(lambda d: d.get("exe") == "/usr/bin/curl")
    assert got(path="/etc/*") == expect(
        lambda d: (
            str(d.get("path", "")).startswith("/etc/")
            or str(d.get("object", {}).get("path", "")).startswith("/etc/")
        )  # type: ignore[union-attr]
    )
    assert got(auid="1001") == expect(lambda d: d.get("auid") == 1001)
    assert got(auid="unset") == expect(lambda d: d.get("auid") == AUID_UNSET)
    assert got(session="8") == expect(lambda d: d.get("ses") == 8)
    assert got(host="web-01") == expect(lambda d: True)
    assert got(host="db-02") == []
    combined = got(kind="open", pid="101", path="/etc/*", auid="1000,1001")
    assert combined and combined == expect(
        lambda d: (
            d.get("kind") == "open"
            and d.get("pid") == 101
            and str(d.get("path")).startswith("/etc/")
            and d.get("auid") in (1000, 1001)
        )
    )


def test_auid_by_user_name(journal: Path) -> None:
    root = pwd.getpwuid(0).pw_name
    assert Filter.from_text(auid=root).auids == frozenset({0})
    with pytest.raises(UsageError, match="--auid 'no-such-user-xyz': no such user"):
        Filter.from_text(auid="no-such-user-xyz")


def test_bad_filters_are_clear_errors(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        ("--since", "soon"): "--since 'soon': not a time",
        ("--pid", "abc"): "--pid 'abc': not a number",
        ("--action", "block"): "--action block: not a verdict action",
        ("--type", "evnt"): "--type evnt: not a record type",
        ("--policy", "XYZ"): "--policy 'XYZ': give the policy digest",
        ("--since", "-1h", "--until", "-2h"): "--until is before --since",
    }
    for argv, message in cases.items():
        rc, out, err = run(capsys, "journal", "query", "--journal", str(journal), *argv)
        assert rc == 2 and out == "" and message in err, (argv, err)
        assert "Traceback" not in err


# ----------------------------------------------------------------------------- time
def test_since_and_until_select_the_time_range_through_the_jump(journal: Path) -> None:
    records = all_records(journal)
    for first, end in ((0, 10), (123, 124), (301, 450), (599, 600), (250, 600)):
        since, until = T0 + first * STEP, T0 + (end - 1) * STEP
        found = seqs(query(journal, Filter(since=since, until=until)))
        assert found == [s for s, ts, _ in records if since <= ts <= until], (first, end)
        unparsed = [json.loads(line.data)["seq"] for line in stored_lines(journal, since, until)]
        assert unparsed == found  # the same lines, found without parsing each
    assert seqs(query(journal, Filter(since=T0 + 10_000 * STEP))) == []
    # with a filter whose lines are passed over unparsed, the end of the range still holds
    since, until = T0 + 120 * STEP, T0 + 420 * STEP
    picked = Filter(
        since=since, until=until, actions=frozenset({"would_deny"}), pids=frozenset({104})
    )
    assert seqs(query(journal, picked)) == [
        s for s, ts, d in records
        if since <= ts <= until and d.get("action") == "would_deny" and d.get("pid") == 104
    ]  # fmt: skip


def test_the_jump_lands_in_the_right_segment_without_reading_from_the_start(
    journal: Path,
) -> None:
    segments = list_segments(journal)
    since = T0 + 500 * STEP
    index, offset = seek_time(journal, since)
    assert index > len(segments) // 2  # a later segment: the earlier ones were not read
    path = segments[index][1]
    data = path.read_bytes()
    assert offset == 0 or data[offset - 1 : offset] == b"\n"  # a line start
    first = json.loads(data[offset : data.index(b"\n", offset)])
    assert int(first["ts"]) < since or offset == 0
    before = [d for _, p in segments[:index] for d in p.read_bytes().splitlines()]
    assert all(int(json.loads(d)["ts"]) <= since for d in before)


def test_lines_carry_their_segment_and_offset(journal: Path) -> None:
    for match in query(journal, Filter(since=T0 + 200 * STEP, until=T0 + 260 * STEP)):
        data = (journal / match.line.segment).read_bytes()
        start = match.line.offset
        assert data[start : start + len(match.line.data)] == match.line.data
        assert start == 0 or data[start - 1 : start] == b"\n"


# ----------------------------------------------------------------------------- tail
def test_last_reads_backwards_and_stops_at_since(journal: Path) -> None:
    records = all_records(journal)
    assert seqs(last(journal, None, 5)) == [s for s, _, _ in records[-5:]]
    denies = [s for s, _, d in records if d.get("action") == "deny"]
    assert seqs(last(journal, Filter(actions=frozenset({"deny"})), 2)) == denies[-2:]
    since = T0 + 590 * STEP
    assert seqs(last(journal, Filter(since=since), 1000)) == [
        s for s, ts, _ in records if ts >= since
    ]
    assert last(journal, None, 0) == []


def test_cli_query_and_tail_outputs(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    j = ["--journal", str(journal)]
    stored = [
        line.decode() for _, p in list_segments(journal) for line in p.read_bytes().splitlines()
    ]
    rc, out, _ = run(capsys, "journal", "query", *j, "-o", "json", "--kind", "connect")
    assert rc == 0 and out.splitlines() == [s for s in stored if '"kind":"connect"' in s]
    since, until = (T0 + 100 * STEP) / 1e9, (T0 + 200 * STEP) / 1e9
    rc, out, _ = run(capsys, "journal", "query", *j, "--since", f"@{since}",
                     "--until", f"@{until}", "--json")  # fmt: skip
    in_range = [s for s in stored if since * 1e9 <= int(json.loads(s)["ts"]) <= until * 1e9]
    assert rc == 0 and in_range and out.splitlines() == in_range
    rc, out, _ = run(capsys, "journal", "tail", *j, "-o", "json", "-n", "3")
    assert out.splitlines() == stored[-3:]
    rc, out, _ = run(capsys, "journal", "query", *j, "--action", "deny", "-n", "2")
    rows = out.splitlines()
    assert len(rows) == 2 and all(" verdict " in r and "deny" in r for r in rows)
    name = pwd.getpwuid(1000).pw_name if 1000 in {u.pw_uid for u in pwd.getpwall()} else None
    assert f"auid=1000({name})" in rows[0] if name else "auid=1000 " in rows[0]
    rc, out, _ = run(capsys, "journal", "query", *j, "--pid", "100", "--kind", "exec",
                     "-o", "ocsf")  # fmt: skip
    events = [json.loads(x) for x in out.splitlines()]
    assert events and all(e["class_uid"] == 1007 and e["process"]["pid"] == 100 for e in events)
    hashes = {record_hash(s.encode()).hex() for s in stored}
    assert all(e["metadata"]["uid"] in hashes for e in events)


# ----------------------------------------------------------------------------- follow
def test_follow_crosses_segment_rotation_and_applies_the_filter(tmp_path: Path) -> None:
    clock = Clock()
    w = open_writer(tmp_path, clock, segment_bytes=1500)
    w.append("start", {})
    w.flush_and_seal()
    directory = tmp_path / "journal"
    start = end_position(directory)
    before = len(list_segments(directory))
    for i in range(120):
        clock.now = T0 + i * STEP
        w.append("event", event(i))
        if i % 10 == 9:
            w.flush_and_seal()
    w.close()
    assert len(list_segments(directory)) > before + 5
    found = list(follow(directory, Filter(kinds=frozenset({"connect"})), start,
                        idle=lambda: False))  # fmt: skip
    assert [m.record.fields["pid"] for m in found] == [
        event(i)["pid"] for i in range(120) if event(i)["kind"] == "connect"
    ]
    assert len({m.line.segment for m in found}) > 5


def test_follow_from_the_end_waits_for_a_torn_line_to_be_completed(tmp_path: Path) -> None:
    clock = Clock()
    w = open_writer(tmp_path, clock)
    w.append("start", {})
    w.close()
    directory = tmp_path / "journal"
    (_, path), *_ = reversed(list_segments(directory))
    line = path.read_bytes().splitlines()[-1]
    with path.open("ab") as f:  # a writer half way through a line
        f.write(line[:10])
    start = end_position(directory)
    assert start == Position(list_segments(directory)[-1][0], path.stat().st_size - 10)
    assert list(follow(directory, None, start, idle=lambda: False)) == []
    with path.open("ab") as f:
        f.write(line[10:] + b"\n")
    (match,) = follow(directory, None, start, idle=lambda: False)
    assert match.line.data == line


def test_text_output_quotes_what_could_forge_a_line_or_drive_the_terminal() -> None:
    """Paths and argv are the observed world's: a newline, a terminal escape, a bidi override
    or a space comes out JSON-quoted with escapes; a plain path as it is."""
    from agent.cli.journal import format_record
    from agent.journal.record import Record

    hostile = "/tmp/x\n2026-12-02 00:00:00.000         7 verdict         allow \x1b]0;pwned\x07"
    fields = {"kind": "open", "path": hostile, "exe": "/usr/bin/\u202eexe", "argv": ["a\x1bb"],
              "comm": "ok", "note": "two words"}  # fmt: skip
    record = Record(seq=3, ts=1_764_633_600_123_456_789, host="h", boot_id="b",
                    type="event", prev="0" * 64, fields=fields)  # fmt: skip
    line = format_record(record, colour=False)
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line, repr(line)
    assert json.dumps(hostile) in line and "comm=ok" in line and 'note="two words"' in line
    assert ".123 " in line  # milliseconds, truncated
