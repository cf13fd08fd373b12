"""End to end: kernel ring buffer -> sealed journal records, through the real `sealtrail agent`.

    .venv/bin/python bench/agent_e2e.py [--seconds S] [--rates 50000,100000,...] [--quick]

Each run starts `sealtrail agent --record connect` (temp journal/keys/policies/run dirs; one
connect rule for a port nobody uses, guard attached to a cgroup of the benchmark's own) pinned
to CPU 0, then the C load generator, in that cgroup and pinned to CPU 1, makes UDP connect()s
to 127.0.0.1:9 (one syscall, one event each, no packet): first flat out ("flood"), then paced
at fixed offered rates (`loadgen -R`); one flood run uses a 64 KiB ring buffer so the kernel
must drop (the loss accounting under overload). When the load generator is done and the
journal has stopped growing, the agent gets SIGTERM (it drains what the kernel queued, then
seals), and the journal is read back:

  produced    connects the load generator made (timed iterations + its warm-up round)
  recorded    `event` records of kind connect with the load generator's pid
  lost        sum of `count` over `loss` records (the kernel's per-op drop counters)
  unaccounted produced - recorded - lost: must be 0 (loss is reported, never silent); other
              processes' connects can only make it negative (their drops count in `lost`)
  rec/s       recorded / (journal ts of the last - of the first such record): the rate at
              which records were sealed into the journal
  cpu us      the agent's CPU time (utime+stime, all threads) per recorded event; 1e6 / it
              is what one core could seal, whatever the load generator managed to offer
  B/rec       journal bytes per record (all segments / all records) and per event line

then `sealtrail journal verify` over the result (exit code, summary, wall time).
Segment files get chattr +a/+i; they are cleared (protect.clear_all) and removed afterwards.
Results: a table on stdout and build/bench/agent_e2e.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import BenchCgroup

from agent.journal import protect

SEALTRAIL = benchlib.REPO / ".venv" / "bin" / "sealtrail"
WORK = benchlib.OUT_DIR / "e2e"
PORT = 9
AGENT_CPU = 0
LOADGEN_CPU = 1

POLICY = """name = "bench-e2e"
mode = "enforce"

[[rules]]
id = "no-connect-{port}"
description = "a port the load generator does not use: the guard judges every connect"
operation = "connect"
targets.addresses = ["127.0.0.0/8"]
targets.ports = [{port}]
action = "deny"
"""


def _pin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})


def start_agent(root: Path, cgroup: Path, ringbuf: int) -> tuple[subprocess.Popen[bytes], float]:
    for d in ("journal", "keys", "policies", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "policies" / "bench.toml").write_text(POLICY.format(port=benchlib.closed_tcp_port()))
    cmd = [
        str(SEALTRAIL), "agent", "--journal", str(root / "journal"), "--keys",
        str(root / "keys"), "--policies", str(root / "policies"), "--cgroup", str(cgroup),
        "--run-dir", str(root / "run"), "--record", "connect", "--ringbuf-size", str(ringbuf),
        "--no-pin",  # pins in the default directory outlive the run and block other agents
    ]  # fmt: skip
    ncpu = os.cpu_count() or 1
    t0 = time.perf_counter()
    agent = subprocess.Popen(
        cmd,
        stderr=(root / "agent.log").open("wb"),
        preexec_fn=(lambda: _pin(AGENT_CPU)) if ncpu > 1 else None,
    )
    deadline = time.monotonic() + 60
    while not (root / "run" / "status.json").exists():
        if agent.poll() is not None:
            raise SystemExit(f"agent exited: {(root / 'agent.log').read_text()[-2000:]}")
        if time.monotonic() > deadline:
            agent.kill()
            raise SystemExit("agent did not start in 60 s")
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    time.sleep(0.1)  # status.json is written before the agent would exit on a rejected policy
    status = json.loads((root / "run" / "status.json").read_text() or "{}")
    if status.get("result") != "loaded" or agent.poll() is not None:
        agent.kill()
        agent.wait()
        log = (root / "agent.log").read_text()[-2000:]
        raise SystemExit(f"agent did not start: status {status}\n{log}")
    return agent, elapsed


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def journal_bytes(journal: Path) -> int:
    return sum(p.stat().st_size for p in journal.glob("seg-*"))


def wait_quiet(journal: Path, quiet_s: float = 1.0, limit_s: float = 120.0) -> None:
    """Until the journal has not grown for quiet_s (the agent caught up)."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        size = journal_bytes(journal)
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)


def read_journal(journal: Path, lg_pid: int) -> dict[str, object]:
    types: dict[str, int] = {}
    recorded = other_events = lost = lost_connect = 0
    event_bytes = 0
    first_ts = last_ts = 0
    total_bytes = total_records = 0
    for seg in sorted(journal.glob("seg-*")):
        data = seg.read_bytes()
        total_bytes += len(data)
        for line in data.splitlines():
            if not line:
                continue
            total_records += 1
            rec = json.loads(line)
            t = rec["type"]
            types[t] = types.get(t, 0) + 1
            if t == "event":
                event_bytes += len(line) + 1
                if rec.get("kind") == "connect" and rec.get("pid") == lg_pid:
                    recorded += 1
                    ts = int(rec["ts"])
                    first_ts = first_ts or ts
                    last_ts = ts
                else:
                    other_events += 1
            elif t == "loss":
                lost += int(rec.get("count", 0))
                lost_connect += int(rec.get("drops", {}).get("connect", 0))
    span = (last_ts - first_ts) / 1e9
    return {
        "recorded": recorded,
        "other_events": other_events,
        "lost": lost,
        "lost_connect": lost_connect,
        "types": types,
        "records": total_records,
        "bytes": total_bytes,
        "bytes_per_record": total_bytes / total_records if total_records else 0.0,
        "bytes_per_event": event_bytes / types.get("event", 1),
        "record_span_s": span,
        "recorded_per_s": recorded / span if span > 0 else 0.0,
    }


def verify(root: Path) -> dict[str, object]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [str(SEALTRAIL), "journal", "verify", "--journal", str(root / "journal"), "--key",
         str(root / "keys" / "journal.pub")],
        capture_output=True, text=True,
    )  # fmt: skip
    return {
        "rc": out.returncode,
        "summary": (out.stdout.strip().splitlines() or [out.stderr.strip()])[-1],
        "wall_s": time.perf_counter() - t0,
    }


def one_run(rate: float | None, seconds: float, ringbuf: int) -> dict[str, object]:
    WORK.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="run-", dir=WORK))
    try:
        with BenchCgroup("sealtrail-bench-e2e") as cgroup:
            agent, start_s = start_agent(root, cgroup, ringbuf)
            try:
                time.sleep(0.3)
                cpu0 = cpu_seconds(agent.pid)
                cmd = [str(benchlib.LOADGEN), "-c", str(LOADGEN_CPU), "-g", str(cgroup),
                       "-n", "1000", "-d", str(seconds)]  # fmt: skip
                if rate:
                    cmd += ["-R", str(rate)]
                t0 = time.perf_counter()
                lg = subprocess.Popen([*cmd, "udpconnect", str(PORT)], stdout=subprocess.PIPE,
                                      text=True)  # fmt: skip
                out, _ = lg.communicate()
                if lg.returncode:
                    raise SystemExit(f"loadgen failed ({lg.returncode})")
                gen_s = time.perf_counter() - t0
                row = {k: float(v) for k, v in (p.split("=") for p in out.split() if "=" in p)}
                produced = int(row["iters"] + row["warmup"])
                wait_quiet(root / "journal")
                drained_s = time.perf_counter() - t0
                agent_cpu_s = cpu_seconds(agent.pid) - cpu0
            finally:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(120)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
        res = read_journal(root / "journal", lg.pid)
        recorded, lost = int(res["recorded"]), int(res["lost"])  # type: ignore[call-overload]
        res.update({
            "offered_rate": rate, "produced": produced, "loadgen_s": row["secs"],
            "produced_per_s": row["iters"] / row["secs"], "unaccounted": produced - recorded - lost,
            "agent_start_s": start_s, "agent_rc": agent.returncode,
            "wall_until_journal_quiet_s": drained_s, "loadgen_wall_s": gen_s,
            "verify": verify(root), "ringbuf_bytes": ringbuf, "agent_cpu_s": agent_cpu_s,
            "agent_cpu_us_per_record": agent_cpu_s * 1e6 / max(recorded, 1),
        })  # fmt: skip
        return res
    finally:
        if (root / "journal").exists():
            protect.clear_all(root / "journal")
        shutil.rmtree(root, ignore_errors=True)


COLUMNS = (
    ("offered", 9), ("ringbuf", 8), ("produced", 9), ("made/s", 8), ("recorded", 9),
    ("lost", 8), ("unacc.", 6), ("rec/s", 8), ("cpu us", 6), ("B/rec", 6), ("B/event", 7),
    ("verify", 30),
)  # fmt: skip


def print_table(runs: list[dict[str, object]]) -> None:
    rows = []
    for r in runs:
        v = r["verify"]
        assert isinstance(v, dict)
        rb = int(r["ringbuf_bytes"])  # type: ignore[call-overload]
        cells = [
            f"{r['offered_rate']:.0f}" if r["offered_rate"] else "flood",
            f"{rb >> 10}K",
            str(r["produced"]),
            f"{r['produced_per_s']:.0f}",
            str(r["recorded"]),
            str(r["lost"]),
            str(r["unaccounted"]),
            f"{r['recorded_per_s']:.0f}",
            f"{r['agent_cpu_us_per_record']:.1f}",
            f"{r['bytes_per_record']:.0f}",
            f"{r['bytes_per_event']:.0f}",
            f"rc={v['rc']} {v['wall_s']:.1f}s {str(v['summary'])[:15]}",
        ]
        rows.append(cells)
    benchlib.print_table(COLUMNS, rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="load per run (default 5)")
    ap.add_argument(
        "--rates",
        default="50000,100000,150000",
        help="paced offered rates, events/s (comma-separated; a flood run always comes first)",
    )
    ap.add_argument("--ringbuf-size", type=int, default=8 << 20, help="agent --ringbuf-size")
    ap.add_argument("--quick", action="store_true", help="2 s runs")
    benchlib.add_probes_option(ap)
    args = ap.parse_args()
    benchlib.need_root("runs the agent")
    seconds = 2.0 if args.quick and args.seconds == 5.0 else args.seconds
    probes = benchlib.prepare(args)
    # flood with the agent's ring buffer, flood with a tiny one (forces drops: the loss
    # accounting under overload), then the paced rates
    plan: list[tuple[float | None, int]] = [(None, args.ringbuf_size), (None, 64 << 10)]
    plan += [(float(r), args.ringbuf_size) for r in args.rates.split(",") if r]
    runs = []
    for rate, ringbuf in plan:
        what = "flood" if rate is None else f"{rate:.0f}/s"
        print(f"  run: {what}, ring buffer {ringbuf >> 10} KiB, {seconds} s ...", flush=True)
        runs.append(one_run(rate, seconds, ringbuf))
    print()
    print_table(runs)
    clean = [r for r in runs if r["lost"] == 0 and r["unaccounted"] == 0]
    best = max((float(r["recorded_per_s"]) for r in clean), default=0.0)  # type: ignore[arg-type]
    print()
    per_rec = [float(r["agent_cpu_us_per_record"]) for r in runs if r["recorded"]]  # type: ignore[arg-type]
    cap = 1e6 / min(per_rec) if per_rec and min(per_rec) > 0 else 0.0
    print(f"highest rate recorded with no loss: {best:.0f} events/s; flood: "
          f"{runs[0]['recorded_per_s']:.0f} recorded/s, {runs[0]['lost']} reported lost; "
          f"agent CPU bound: {cap:.0f} records/s per core")  # fmt: skip
    print(
        "produced = connects made (incl. warm-up); recorded = event records of the load "
        "generator's pid; lost = sum of loss records; unacc. = produced - recorded - lost; "
        "rec/s = recorded / journal-ts span; cpu us = agent CPU time (all threads) per "
        "recorded event, its inverse the rate one core could seal; B/rec = journal bytes per "
        "record (all types)"
    )
    result = {
        "probes": probes,
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg": os.getloadavg(),
                 "agent_cpu": AGENT_CPU, "loadgen_cpu": LOADGEN_CPU},
        "seconds": seconds, "ringbuf_bytes": args.ringbuf_size, "runs": runs,
        "best_lossless_rate": best, "agent_cpu_bound_records_per_s": cap,
    }  # fmt: skip
    path = benchlib.write_json("agent_e2e.json", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
