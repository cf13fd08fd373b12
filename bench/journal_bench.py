"""Journal benchmark: append and verify throughput, bytes per record on a realistic mix.

    python bench/journal_bench.py [--records N] [--dir DIR]

Append runs the real writer with its defaults (seal every 100 ms or 8192 records, fdatasync
before and after each seal, write-through appends) on one thread; verify runs the pure verifier
over the written segments (hash, canonical form, chain, seals, Merkle roots) plus the file
reads. The record mix follows what the agent records by default (exec, exit, fork, connect,
accept...) with some verdicts, using the field names of ``agent.events.model``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rfc8785
from benchlib import num, print_table

from agent import native
from agent.journal import protect
from agent.journal.canonical import canonical
from agent.journal.keys import KeyStore
from agent.journal.segments import list_segments, read_segment
from agent.journal.verify import Verifier
from agent.journal.writer import JournalWriter

BINARIES = ["/usr/bin/bash", "/usr/bin/ls", "/usr/bin/curl", "/usr/sbin/sshd", "/usr/bin/python3"]


def realistic(rnd: random.Random, i: int) -> tuple[str, dict[str, Any]]:
    base: dict[str, Any] = {
        "ts_ns": str(1_764_146_065_000_000_000 + i * 1000),
        "pid": rnd.randrange(300, 4_000_000),
        "tid": rnd.randrange(300, 4_000_000),
        "ppid": rnd.randrange(1, 40000),
        "uid": rnd.choice([0, 0, 1000, 33]),
        "gid": rnd.choice([0, 1000]),
        "cgroup_id": str(rnd.randrange(1 << 40, 1 << 62)),
        "comm": rnd.choice(["bash", "ls", "curl", "sshd", "python3"]),
        "exe": rnd.choice(BINARIES),
        "truncated": False,
    }
    roll = rnd.random()
    if roll < 0.25:
        exe = rnd.choice(BINARIES)
        argv = [exe.rsplit("/", 1)[1], *(f"--opt{k}" for k in range(rnd.randrange(4)))]
        base.update(kind="exec", filename=exe, argv=argv, argc=len(argv), cwd="/home/user")
    elif roll < 0.45:
        base.update(kind="exit", exit_code=0, signal=None, duration_ns=rnd.randrange(10**9))
    elif roll < 0.55:
        base.update(kind="fork", child_pid=rnd.randrange(300, 4_000_000))
    elif roll < 0.85:
        base.update(
            kind=rnd.choice(["connect", "accept"]),
            family="ipv4",
            protocol="tcp",
            local_addr="10.0.0.5",
            local_port=rnd.randrange(1024, 65535),
            remote_addr=f"93.184.{rnd.randrange(256)}.{rnd.randrange(256)}",
            remote_port=443,
            result=0,
        )
    elif roll < 0.95:
        base.update(
            kind="open",
            path=f"/etc/ssh/sshd_config.d/{rnd.randrange(9)}.conf",
            path_source="kernel",
            result=3,
            flags=0,
            mode=0,
        )
    else:
        return "verdict", {
            "action": rnd.choice(["deny", "kill", "audit"]),
            "policy": "9f" * 32,
            "rule": f"no-shell-{rnd.randrange(5)}",
            "event": base | {"kind": "exec", "filename": "/usr/bin/nc"},
        }
    return "event", base


def bench_canonical(records: list[tuple[str, dict[str, Any]]]) -> tuple[float, float]:
    """Records per second canonicalised by rfc8785 and by ours."""
    sample = [fields for _, fields in records[:20000]]
    t = time.perf_counter()
    for f in sample:
        rfc8785.dumps(f)
    slow = len(sample) / (time.perf_counter() - t)
    t = time.perf_counter()
    for f in sample:
        canonical(f)
    fast = len(sample) / (time.perf_counter() - t)
    return slow, fast


def bench_append(
    root: Path, records: list[tuple[str, dict[str, Any]]], batch: int = 1, **opts: Any
) -> float:
    """``batch`` 1: one ``append`` per record; more: ``append_many`` runs of that many (what
    the agent does with the records of one ring-buffer poll that Python decodes)."""
    journal, keys = root / "journal", root / "keys"
    w = JournalWriter.open(journal, keys, host="bench-host", boot_id="bench-boot", **opts)
    append, append_many, tick = w.append, w.append_many, w.tick
    t = time.perf_counter()
    if batch == 1:
        for i, (rtype, fields) in enumerate(records):
            append(rtype, fields)
            if i & 1023 == 0:
                tick()
    else:
        for i in range(0, len(records), batch):
            append_many(records[i : i + batch])
            tick()
    w.close()
    return len(records) / (time.perf_counter() - t)


def bench_verify(root: Path, use_native: bool | None) -> tuple[float, int, int]:
    genesis = KeyStore(root / "keys").genesis()
    t = time.perf_counter()
    verifier = Verifier(genesis, use_native=use_native)
    size = 0
    for _, path in list_segments(root / "journal"):
        content = read_segment(path)
        size += len(content)
        for finding in verifier.feed_segment(path.name, content):
            raise SystemExit(f"bench journal does not verify: {finding}")
    for finding in verifier.finish():
        if finding.severity == "error":
            raise SystemExit(f"bench journal does not verify: {finding}")
    rate = verifier.summary.records / (time.perf_counter() - t)
    return rate, verifier.summary.records, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary dir)")
    args = parser.parse_args()
    rnd = random.Random(5)
    records = [realistic(rnd, i) for i in range(args.records)]
    slow, fast = bench_canonical(records)
    rows: list[list[object]] = [
        ["canonical JSON", num(fast, ",.0f"), f"/s (rfc8785: {slow:,.0f}/s)"],
    ]
    best = f"records/s, best of {args.repeat}"
    base = args.dir or Path(tempfile.mkdtemp(prefix="journal-bench-"))
    try:
        rates = [bench_append(base / f"run{i}", records) for i in range(args.repeat)]
        rows.append(["append", num(max(rates), ",.0f"), f"{best} "
                     f"({', '.join(f'{r:,.0f}' for r in rates)}); seal every 100 ms or 8192 "
                     "records, fdatasync before and after each seal"])  # fmt: skip
        rates = [bench_append(base / f"many{i}", records, batch=256) for i in range(args.repeat)]
        rows.append(["append_many (256)", num(max(rates), ",.0f"), f"{best} "
                     f"({', '.join(f'{r:,.0f}' for r in rates)}); the same, one write per 256 "
                     "records"])  # fmt: skip
        modes = [("verify", None)] if native.available() else []
        for label, use_native in [*modes, ("verify, Python", False)]:
            results = [bench_verify(base / "run0", use_native) for _ in range(args.repeat)]
            vrate, count, size = max(results)
            what = f"{best}; hash, canonical form, chain, seals, Merkle roots, file reads"
            rows.append([label, num(vrate, ",.0f"), what])
        rows.append(["bytes per record", num(size / count, ",.1f"),
                     f"({count} records incl. seals, {size / 1e6:.1f} MB)"])  # fmt: skip
        print_table([("journal", -19), ("", 11), ("", -1)], rows)
        if not native.available():
            print("verify: native journal core not built (`make native`), Python path only")
    finally:
        if args.dir is None:
            for d in base.glob("*/journal"):
                protect.clear_all(d)
            shutil.rmtree(base)


if __name__ == "__main__":
    main()
