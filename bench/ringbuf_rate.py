"""Ring buffer -> Python throughput, and agent start time.

    .venv/bin/python bench/ringbuf_rate.py [--seconds S] [--starts N]

1. Throughput: the C load generator floods matching opens (open+close of a file under the
   stream's --path-prefix) while this process drains the ring buffer:
     raw      records/s through libbpf's ring_buffer__poll + the Python callback (bytes only)
     decoded  Event objects/s from EventStream.poll (callback + decode + process table)
     offline  Decoder.decode alone over captured records (no kernel, no contention)
   in two layouts: flood on both cores (the consumer shares a CPU with a generator) and flood
   on one core with the consumer alone on the other. Offered = opens the generators made;
   drained + dropped = records the probe produced (drops counted by the kernel per op).
2. Start time: wall time from exec of `sealtrail watch --json --only exec` to its first event
   line on stdout while another thread execs /bin/true every few ms; median of N starts.
Results: stdout and build/bench/ringbuf_rate.json.
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time

import benchlib
from benchlib import loadgen, num, summary

from agent.events.decode import Clock, Decoder
from agent.events.stream import EventStream, StreamConfig
from agent.kernel import abi

TMP = benchlib.OUT_DIR / "tmp"
FILE = TMP / "f"
SEALTRAIL = benchlib.REPO / ".venv" / "bin" / "sealtrail"


def flood(cpus: list[int], seconds: float) -> tuple[list[subprocess.Popen[str]], float]:
    procs = [
        subprocess.Popen(
            [
                str(benchlib.LOADGEN),
                "-c",
                str(c),
                "-n",
                "20000",
                "-d",
                str(seconds),
                "open",
                str(FILE),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for c in cpus
    ]
    return procs, time.perf_counter()


def offered(procs: list[subprocess.Popen[str]]) -> int:
    total = 0
    for p in procs:
        out, _ = p.communicate()
        for part in out.split():
            if part.startswith("iters="):
                total += int(part.split("=")[1])
    return total


def throughput(mode: str, cpus: list[int], seconds: float, ringbuf: int) -> dict[str, object]:
    config = StreamConfig(
        kinds=frozenset({"open"}), path_prefixes=(str(TMP),), ringbuf_bytes=ringbuf
    )
    with EventStream(config) as stream:
        rb = stream._rb  # bench only: the raw ring buffer under the stream
        assert rb is not None
        records = nbytes = 0
        procs, t0 = flood(cpus, seconds)
        while any(p.poll() is None for p in procs):
            if mode == "raw":
                batch = rb.poll(100)
                records += len(batch)
                nbytes += sum(map(len, batch))
            else:
                records += len(stream.poll(100))
        # what is left when the generators stop belongs to the run
        if mode == "raw":
            batch = rb.drain()
            records += len(batch)
        else:
            records += len(stream.drain())
        elapsed = time.perf_counter() - t0
        made = offered(procs)
        dropped = stream.dropped_total()[abi.Op.OPEN]
    return {
        "mode": mode,
        "flood_cpus": cpus,
        "ringbuf_bytes": ringbuf,
        "seconds": elapsed,
        "offered_opens": made,
        "offered_per_s": made / elapsed,
        "drained": records,
        "drained_per_s": records / elapsed,
        "dropped": dropped,
        "dropped_pct": 100.0 * dropped / max(1, records + dropped),
        "bytes_per_record": nbytes / records if mode == "raw" and records else None,
    }


def offline_decode(n: int = 200_000) -> dict[str, float]:
    """Capture records, then time Decoder.decode alone (no exe lookup), and with the stream's
    process table as EventStream uses it. The generator has exited by then, so the table's
    lookup misses /proc for its pid on every record: that is the cost of an uncached miss."""
    config = StreamConfig(
        kinds=frozenset({"open"}), path_prefixes=(str(TMP),), ringbuf_bytes=64 << 20
    )
    with EventStream(config) as stream:
        assert stream._rb is not None
        loadgen("open", str(FILE), iters=n, cpu=1)
        raws = stream._rb.drain()
        out: dict[str, float] = {"records": len(raws)}
        for label, lookup in (("pure", None), ("proctable_dead_pid", stream.proctable.lookup)):
            dec = Decoder(Clock(), lookup)
            sample = raws if lookup is None else raws[:5000]
            t0 = time.perf_counter()
            for raw in sample:
                dec.decode(raw)
            dt = time.perf_counter() - t0
            out[f"{label}_per_s"] = len(sample) / dt
            out[f"{label}_us_per_record"] = dt * 1e6 / len(sample)
    return out


def start_time(starts: int) -> dict[str, object]:
    stop = threading.Event()

    def trigger() -> None:
        while not stop.is_set():
            subprocess.run(["/bin/true"], check=False)
            time.sleep(0.002)

    th = threading.Thread(target=trigger, daemon=True)
    th.start()
    times: list[float] = []
    try:
        for _ in range(starts):
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [str(SEALTRAIL), "watch", "--json", "--only", "exec"],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            line = proc.stdout.readline()
            dt = time.perf_counter() - t0
            proc.terminate()
            proc.communicate(timeout=10)
            if not line.startswith("{"):
                raise SystemExit(f"bench: watch printed {line!r}, not an event")
            times.append(dt)
    finally:
        stop.set()
        th.join()
    # the floor under it: interpreter + CLI import, no BPF
    t0 = time.perf_counter()
    subprocess.run([str(SEALTRAIL), "watch", "--help"], check=True, capture_output=True)
    help_s = time.perf_counter() - t0
    return {"first_event_s": summary(times), "samples_s": times, "cli_help_s": help_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="flood duration per run")
    ap.add_argument("--starts", type=int, default=5, help="agent starts to time (median)")
    benchlib.add_probes_option(ap)
    args = ap.parse_args()
    benchlib.need_root("loads BPF programs")
    probes = benchlib.prepare(args)
    TMP.mkdir(parents=True, exist_ok=True)
    FILE.touch()

    result: dict[str, object] = {
        "probes": probes,
        "foreign_bpf_programs": benchlib.foreign_bpf_programs(),
    }
    runs, lines = [], []
    for cpus in ([0, 1], [1]):
        for mode in ("raw", "decoded"):
            for ringbuf in (8 << 20, 64 << 20):
                where = ",".join(map(str, cpus))
                print(f"  flood: cpus {where}, {mode}, {ringbuf >> 20} MiB ...", flush=True)
                r = throughput(mode, cpus, args.seconds, ringbuf)
                runs.append(r)
                lines.append([where, mode, ringbuf >> 20, num(r["offered_per_s"], ",.0f"),
                              num(r["drained_per_s"], ",.0f"), num(r["dropped"], ","),
                              num(r["dropped_pct"], ".1f")])  # fmt: skip
    columns = [("cpus", -4), ("mode", -8), ("MiB", 3), ("offered/s", 11), ("drained/s", 11),
               ("dropped", 11), ("%", 5)]  # fmt: skip
    benchlib.print_table(columns, lines)
    result["throughput"] = runs
    off = offline_decode()
    result["offline_decode"] = off
    print(
        f"offline decode: {off['pure_per_s']:,.0f} records/s "
        f"({off['pure_us_per_record']:.2f} us each); with the process table missing a dead "
        f"pid: {off['proctable_dead_pid_us_per_record']:.1f} us each"
    )
    st = start_time(args.starts)
    result["start"] = st
    fe = st["first_event_s"]
    assert isinstance(fe, dict)
    print(
        f"agent start (exec of `sealtrail watch --json --only exec` -> first event line): "
        f"median {fe['median'] * 1e3:.0f} ms (min {fe['min'] * 1e3:.0f}, "
        f"max {fe['max'] * 1e3:.0f}, n={fe['n']}); "
        f"`sealtrail watch --help` alone: {st['cli_help_s'] * 1e3:.0f} ms"
    )
    path = benchlib.write_json("ringbuf_rate.json", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
