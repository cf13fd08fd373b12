"""Report benchmark: `sealtrail report` over a journal of N records written by the real writer.

    python bench/report.py [--records 1000000] [--dir DIR]

The journal is written with ``JournalWriter`` (its default seals: every 100 ms or 8192
records) from journal_bench's realistic record mix (exec, exit, fork, connect, accept, open,
some verdicts). Then ``sealtrail report --journal DIR --key PUB -o FILE`` runs as a separate
process, as a user runs it: wall time from exec to exit (interpreter start, verification,
the second pass, charts, HTML), its peak RSS and the page's size. Prints a table and writes
build/bench/report.json.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import num, print_table
from journal_bench import realistic

from agent import native
from agent.journal import protect
from agent.journal.writer import JournalWriter

REPO = Path(__file__).resolve().parents[1]


def write(root: Path, count: int) -> float:
    """The journal of ``count`` records (plus its seals); returns the seconds it took."""
    rnd = random.Random(5)
    w = JournalWriter.open(root / "journal", root / "keys", host="bench-host", boot_id="b")
    started = time.perf_counter()
    w.append("start", {"version": "bench", "pid": 1})
    w.append("policy_loaded", {"digest": "9f" * 32, "files": ["/etc/p.toml"], "trigger": "start"})
    done = 2
    while done < count - 1:
        n = min(256, count - 1 - done)
        w.append_many([realistic(rnd, done + i) for i in range(n)])
        w.tick()
        done += n
    w.close({"reason": "bench"})
    return time.perf_counter() - started


def report(root: Path) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of one ``sealtrail report`` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "agent.cli", "report", "--journal", str(root / "journal"),
         "--key", str(root / "keys" / "journal.pub"), "-o", str(root / "report.html")],
        check=True, cwd=REPO, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    return seconds, max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="report runs")
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary dir)")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="report-bench-"))
    try:
        wrote = write(base, args.records)
        size = sum(p.stat().st_size for p in (base / "journal").glob("seg-*.jsonl"))
        runs = [report(base) for _ in range(args.repeat)]
        best = min(s for s, _ in runs)
        page = (base / "report.html").stat().st_size
        rows: list[list[object]] = [
            ["journal", num(args.records, ",.0f"), f"records (+ seals), {size / 1e6:,.0f} MB, "
             f"written in {wrote:.1f} s"],
            ["report", f"{best:.1f} s", f"best of {args.repeat} "
             f"({', '.join(f'{s:.1f}' for s, _ in runs)} s): `sealtrail report` exec to exit"],
            ["rate", num(args.records / best, ",.0f"), "records/s"],
            ["peak RSS", f"{max(r for _, r in runs) / 1024:,.0f} MB", "of the report process"],
            ["page", f"{page / 1e3:,.0f} kB", "the HTML file, charts embedded"],
        ]  # fmt: skip
        print_table([("report", -9), ("", 11), ("", -1)], rows)
        if not native.available():
            print("native journal core not built (`make native`): verify ran in Python")
        out = REPO / "build" / "bench"
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps({
            "records": args.records, "journal_bytes": size, "write_seconds": wrote,
            "report_seconds": [s for s, _ in runs], "peak_rss_kib": [r for _, r in runs],
            "page_bytes": page, "native": native.available(),
        }, indent=2) + "\n")  # fmt: skip
    finally:
        if args.dir is None:
            protect.clear_all(base / "journal")
            shutil.rmtree(base)


if __name__ == "__main__":
    main()
