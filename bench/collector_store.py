"""Collector store benchmark: ``Store.append`` throughput for one host, batches of 10 k records,
on SQLite (WAL, synchronous=FULL) and PostgreSQL (a throwaway local server, fsync on), and the
read-back rate of ``Store.records``.

    python bench/collector_store.py [--batches N] [--batch 10000] [--repeat 3]
                                    [--dir DIR] [--postgres URL | --no-postgres]

Lines are ~456 bytes (the journal's average record); their hashes are computed before the clock
starts, since the verifier has them already. Every append is a durable commit, as at ingest.
Without --postgres a server is started with Debian's binaries (tests/collector/pgserver.py).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.collector.store import open_store
from agent.journal.keys import SigningKey
from agent.journal.record import record_hash


def make_batch(start: int, count: int) -> tuple[list[bytes], list[bytes]]:
    pad = "p" * 280
    lines = [
        (
            '{"boot_id":"0f3c1a2b-9d4e-4c6f-8a7b-112233445566","host":"bench-01","kind":"exec",'
            f'"pad":"{pad}","seq":{start + i},"ts":"{1764146065000000000 + i}","type":"event"}}'
        ).encode()
        for i in range(count)
    ]
    return lines, [record_hash(line) for line in lines]


def run_once(url: str, batches: int, size: int) -> tuple[float, float, float]:
    """(append records/s, p99 batch ms, read records/s) on a fresh store at ``url``."""
    prepared = [make_batch(b * size, size) for b in range(batches)]
    with open_store(url) as store:
        store.enroll("bench-01", "a" * 64, SigningKey.generate().public.to_line(), 1)
        times = []
        started = time.perf_counter()
        for b, (lines, hashes) in enumerate(prepared):
            t0 = time.perf_counter()
            if not store.append("bench-01", b * size, lines, hashes, "{}", None, None, b):
                raise SystemExit("bench: compare-and-swap failed on a store of our own")
            times.append(time.perf_counter() - t0)
        append_rate = batches * size / (time.perf_counter() - started)
        started = time.perf_counter()
        count = sum(1 for _ in store.records("bench-01", 0, batches * size))
        read_rate = count / (time.perf_counter() - started)
    p99 = sorted(times)[max(0, int(len(times) * 0.99) - 1)] * 1000
    return append_rate, p99, read_rate


def report(name: str, runs: list[tuple[float, float, float]], size: int) -> None:
    rates = [r[0] for r in runs]
    print(
        f"{name:<11} append {statistics.median(rates):>9,.0f} records/s "
        f"(runs {', '.join(f'{r:,.0f}' for r in rates)}; "
        f"{statistics.median(rates) * 456 / 1e6:.0f} MB/s; "
        f"batch of {size:,} p99 {statistics.median(r[1] for r in runs):.0f} ms)  "
        f"read {statistics.median(r[2] for r in runs):>9,.0f} records/s",
        flush=True,
    )


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.collector.pgserver import temporary_server

    with temporary_server() as server:
        yield server.url()


def drop_tables(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "DROP TABLE IF EXISTS batches, records, quarantine, heads, hosts, schema_version"
            " CASCADE"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="where the SQLite files go (default /var/tmp)")
    parser.add_argument("--postgres", metavar="URL", help="an existing (empty) database to use")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    print(
        f"collector store: {args.batches} batches of {args.batch:,} records (~456 B), "
        f"{args.repeat} runs each, one host, every append a durable commit"
    )
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(dir=args.dir or "/var/tmp") as tmp:
            runs.append(run_once(str(Path(tmp) / "store.sqlite"), args.batches, args.batch))
    report("sqlite", runs, args.batch)
    if args.no_postgres:
        return 0
    with postgres(args.postgres) as url:
        runs = []
        for _ in range(args.repeat):
            drop_tables(url)
            runs.append(run_once(url, args.batches, args.batch))
        drop_tables(url)
    report("postgresql", runs, args.batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
