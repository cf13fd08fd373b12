"""Query benchmark: how long ``journal query --since`` takes on a large journal.

    python bench/journal_query.py [--gb 10] [--days 30] [--dir DIR] [--reuse]

Writes a journal of about ``--gb`` GB with the real writer (64 MB segments, seals every 8192
records, the record mix of bench/journal_bench.py with login uids and sessions), its record
times spread evenly over ``--days`` days and ending now, then times, each ``--runs`` times
with the journal's pages dropped from the page cache first (``posix_fadvise(DONTNEED)`` on
its own files only: cold reads, without touching what others have cached):

- the jump alone (``seek_time``: which segment, which byte offset);
- ``journal query --since <last hour>`` in-process, counting the records (each parsed);
- the same lines unparsed (``stored_lines``: what ``-o json`` with only a time range does);
- the same with ``--action deny`` (few matches) and with ``--auid 1000``;
- ``sealtrail journal query --since @T -o json > /dev/null`` as a process (Python start included);
- ``journal tail -n 10`` (reads backwards from the end);
- what a scan from the start would cost: one whole segment read and parsed, times the
  number of segments (measured on one, extrapolated; the scan itself would take minutes).

Results as JSON in build/bench/journal_query.json. ``--reuse`` keeps a journal made earlier
in ``--dir`` (its size and span are read from it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import num, print_table
from journal_bench import realistic

from agent.journal.query import Filter, last, query, seek_time, stored_lines
from agent.journal.segments import list_segments
from agent.journal.writer import JournalWriter

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bench"
BATCH = 4096


def generate(directory: Path, gb: float, days: float) -> dict[str, Any]:
    """A journal of about ``gb`` GB whose records span ``days`` days up to now."""
    target = int(gb * 1e9)
    per_record = 485  # bytes per record of this mix (with auid and ses), measured
    count = max(1, target // per_record)
    end = time.time_ns()
    step = int(days * 86400e9) // count
    clock_ns = [end - count * step]
    rnd = random.Random(15)
    w = JournalWriter.open(
        directory / "journal", directory / "keys", host="bench-host", boot_id="bench-boot",
        protect_files=False, seal_interval=3600.0, clock=lambda: clock_ns[0],
    )  # fmt: skip
    w.append("start", {"version": "bench"})
    t = time.perf_counter()
    written, i = 0, 0
    while written < target:
        batch = []
        for _ in range(BATCH):
            rtype, fields = realistic(rnd, i)
            fields["auid"] = rnd.choice([1000, 1001, 0xFFFFFFFF])
            fields["ses"] = rnd.randrange(1, 50)
            batch.append((rtype, fields))
            i += 1
        w.append_many(batch)
        clock_ns[0] += step * BATCH
        if i % (BATCH * 16) == 0:
            written = sum(p.stat().st_size for _, p in list_segments(directory / "journal"))
            print(f"\r{written / 1e9:.2f} GB, {i} records", end="", file=sys.stderr, flush=True)
    w.close({"reason": "bench"})
    print(file=sys.stderr)
    return {"appended": i, "generate_s": time.perf_counter() - t}


def drop_cache(directory: Path) -> None:
    for _, path in list_segments(directory):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(runs: int, directory: Path, fn: Any) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(runs):
        drop_cache(directory)
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return times, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=10.0)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--dir", type=Path, default=OUT / "journal-query")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--reuse", action="store_true")
    args = ap.parse_args()
    directory: Path = args.dir / "journal"
    made: dict[str, Any] = {}
    if not (args.reuse and directory.is_dir()):
        if args.dir.exists():
            subprocess.run(["rm", "-rf", str(args.dir)], check=True)
        made = generate(args.dir, args.gb, args.days)
    segments = list_segments(directory)
    size = sum(p.stat().st_size for _, p in segments)
    (last_record,) = last(directory, None, 1)
    hour_ago = last_record.record.ts - 3600 * 10**9
    runs = args.runs

    seek_t, _ = timed(runs, directory, lambda: seek_time(directory, hour_ago))
    hour = Filter(since=hour_ago)
    hour_t, hour_n = timed(runs, directory, lambda: sum(1 for _ in query(directory, hour)))
    unparsed = lambda: sum(1 for _ in stored_lines(directory, hour_ago))  # noqa: E731
    raw_t, raw_n = timed(runs, directory, unparsed)
    deny = Filter(since=hour_ago, actions=frozenset({"deny"}))
    deny_t, deny_n = timed(runs, directory, lambda: sum(1 for _ in query(directory, deny)))
    auid = Filter(since=hour_ago, auids=frozenset({1000}))
    auid_t, auid_n = timed(runs, directory, lambda: sum(1 for _ in query(directory, auid)))
    tail_t, _ = timed(runs, directory, lambda: last(directory, None, 10))
    cli = [sys.executable, "-m", "agent.cli", "journal", "query", "--journal", str(directory),
           "--since", f"@{hour_ago / 1e9:.9f}", "-o", "json"]  # fmt: skip
    cli_t, _ = timed(runs, directory, lambda: subprocess.run(
        cli, stdout=subprocess.DEVNULL, check=True, cwd=ROOT))  # fmt: skip
    text = [*cli[:-1], "text"]  # the default output: aligned rows, user names resolved
    text_t, _ = timed(runs, directory, lambda: subprocess.run(
        text, stdout=subprocess.DEVNULL, check=True, cwd=ROOT))  # fmt: skip
    # a scan from the start, estimated: one whole segment through the same code, times all
    mid = len(segments) // 2
    one = Filter(since=_first_ts(segments[mid][1]), until=_first_ts(segments[mid + 1][1]) - 1)
    scan_t, scan_n = timed(1, directory, lambda: sum(1 for _ in query(directory, one)))

    result = {
        "journal_bytes": size,
        "segments": len(segments),
        "records": last_record.record.seq + 1,
        "span_days": args.days,
        "last_hour_records": hour_n,
        "seek_s": seek_t,
        "last_hour_s": hour_t,
        "last_hour_stored_lines_s": raw_t,
        "last_hour_deny_s": deny_t,
        "last_hour_deny_records": deny_n,
        "last_hour_auid_s": auid_t,
        "last_hour_auid_records": auid_n,
        "cli_last_hour_json_s": cli_t,
        "cli_last_hour_text_s": text_t,
        "tail_10_s": tail_t,
        "one_segment_scan_s": scan_t[0],
        "one_segment_records": scan_n,
        "full_scan_estimate_s": scan_t[0] * len(segments),
        **made,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "journal_query.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"journal: {size / 1e9:.2f} GB, {len(segments)} segments, {result['records']} records "
        f"over {args.days:g} days; cold page cache each run"
    )

    def row(name: str, times: list[float], n: object) -> list[object]:
        return [name, statistics.median(times) * 1e3, min(times) * 1e3, max(times) * 1e3, n]

    print_table(
        [("query", -44), ("median ms", 10), ("min", 8), ("max", 8), ("records", 9)],
        [
            row("jump to the last hour (seek_time)", seek_t, None),
            row("query --since last hour (count)", hour_t, hour_n),
            row("stored lines of the last hour, unparsed", raw_t, raw_n),
            row("query --since last hour --action deny", deny_t, deny_n),
            row("query --since last hour --auid 1000", auid_t, auid_n),
            row("sealtrail journal query ... -o json (process)", cli_t, hour_n),
            row("sealtrail journal query ... -o text (process)", text_t, hour_n),
            row("tail -n 10", tail_t, 10),
            row("scan of one whole segment", scan_t, scan_n),
            ["scan from the start (estimate)", result["full_scan_estimate_s"] * 1e3, None, None,
             result["records"]],
        ],
    )  # fmt: skip
    print(f"(min/max over {runs} runs; {num(made.get('generate_s'), '.0f')} s to generate)")


def _first_ts(path: Path) -> int:
    with path.open("rb") as f:
        return int(json.loads(f.readline())["ts"])


if __name__ == "__main__":
    main()
