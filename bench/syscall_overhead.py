"""Syscall overhead of the sealtrail probes, measured with a C load generator.

    .venv/bin/python bench/syscall_overhead.py [--rounds N] [--quick]

Scenarios (each workload runs under the ones that apply, rounds interleaved so that drift
and other load on the machine hit every scenario alike):
  a  none        no agent: the baseline
  b  other-tp    EventStream with only `bind`: syscall tracepoints present but none for the
                 syscall under test; on this kernel that alone moves EVERY syscall to the slow
                 path (SYSCALL_WORK_SYSCALL_TRACEPOINT is set on all tasks)
  c  open-miss   `open` enabled, --path-prefix that does not match: the probe's own work on a
                 miss (enter saves args, exit walks the dentries, then the LPM lookup misses)
  d  open-hit    `open` enabled, prefix matches: every open is delivered and decoded
  e  connect     `connect` enabled (it has no in-kernel filter: every connect is delivered)
  f  proc        exec,fork,exit only (tp_btf sched hooks, no syscall tracepoint at all)

A second pass holds BPF_ENABLE_STATS and reads each program's run_time_ns/run_cnt: the
probe's own cost per invocation, without the tracepoint/slow-path cost around it.
Results: a table on stdout and build/bench/syscall_overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from pathlib import Path

import benchlib
from benchlib import BpfStats, Consumer, loadgen, own_prog_stats, summary

from agent.events.stream import EventStream, StreamConfig

TMP = benchlib.OUT_DIR / "tmp"
FILE = TMP / "f"
DEEP_DIR = TMP / "deep" / "/".join(["d"] * 24)
DEEP_FILE = DEEP_DIR / "f"
MISSING = TMP / "missing"
NOMATCH_PREFIXES = ("/etc/shadow", "/etc/sudoers.d", "/root/.ssh")


def workloads(quick: bool) -> dict[str, dict[str, object]]:
    k = 5 if quick else 1
    port = benchlib.closed_tcp_port()
    return {
        "getppid": {"mode": "getppid", "arg": "", "iters": 500_000 // k, "syscalls": 1},
        "open+close": {"mode": "open", "arg": str(FILE), "iters": 200_000 // k, "syscalls": 2},
        "open+close deep": {
            "mode": "open",
            "arg": str(DEEP_FILE),
            "iters": 100_000 // k,
            "syscalls": 2,
        },
        "open ENOENT": {
            "mode": "openfail",
            "arg": str(MISSING),
            "iters": 200_000 // k,
            "syscalls": 1,
        },
        "udp connect": {"mode": "udpconnect", "arg": "9", "iters": 200_000 // k, "syscalls": 1},
        "tcp connect refused": {
            "mode": "tcpconnect",
            "arg": str(port),
            "iters": 30_000 // k,
            "syscalls": 3,
        },
        "fork+exec true": {"mode": "exec", "arg": "/bin/true", "iters": 300 // k, "syscalls": 0},
    }


OPEN_WL = ["open+close", "open+close deep", "open ENOENT"]
SCENARIOS: dict[str, tuple[str, StreamConfig | None, list[str] | None]] = {
    "a": ("none", None, None),
    "b": ("other-tp (bind only)", StreamConfig(kinds=frozenset({"bind"})), None),
    "c": (
        "open, prefix miss",
        StreamConfig(kinds=frozenset({"open"}), path_prefixes=NOMATCH_PREFIXES),
        ["getppid", *OPEN_WL, "fork+exec true"],
    ),
    "d": (
        "open, prefix hit",
        StreamConfig(kinds=frozenset({"open"}), path_prefixes=(str(TMP),), ringbuf_bytes=64 << 20),
        OPEN_WL,
    ),
    "e": (
        "connect (delivered)",
        StreamConfig(kinds=frozenset({"connect"}), ringbuf_bytes=64 << 20),
        ["udp connect", "tcp connect refused"],
    ),
    "f": (
        "exec,fork,exit (tp_btf)",
        StreamConfig(kinds=frozenset({"exec", "fork", "exit"})),
        ["getppid", "fork+exec true"],
    ),
}


DELIVERING = ("d", "e", "f")


def applies(scn: str, wl: str) -> bool:
    only = SCENARIOS[scn][2]
    return only is None or wl in only


def prepare_files() -> None:
    DEEP_DIR.mkdir(parents=True, exist_ok=True)
    FILE.touch()
    DEEP_FILE.touch()
    MISSING.unlink(missing_ok=True)


def agent(config: StreamConfig | None) -> contextlib.AbstractContextManager[Consumer | None]:
    return Consumer(config) if config is not None else contextlib.nullcontext()


FOREIGN_WAIT_S = 120.0


def clean_sample(spec: dict[str, object], cpu: int) -> tuple[float, bool]:
    """One timed run with no foreign tracing programs loaded before or after it (another
    session's probes would put every syscall on the slow path). Waits for them to go away,
    up to FOREIGN_WAIT_S; past that the sample is kept and reported as tainted."""
    deadline = time.monotonic() + FOREIGN_WAIT_S
    while True:
        clean = not benchlib.foreign_bpf_programs()
        row = loadgen(str(spec["mode"]), str(spec["arg"]), iters=int(spec["iters"]), cpu=cpu)  # type: ignore[call-overload]
        clean = clean and not benchlib.foreign_bpf_programs()
        if clean or time.monotonic() > deadline:
            return row[0]["ns_per_iter"], clean
        time.sleep(0.5)


def timing_pass(wls: dict[str, dict[str, object]], rounds: int, cpu: int) -> dict[str, object]:
    samples: dict[str, dict[str, list[float]]] = {w: {} for w in wls}
    delivered: dict[str, dict[str, int]] = {}
    starts: list[float] = []
    tainted: dict[str, int] = {}
    order = list(SCENARIOS)
    for r in range(rounds):
        rot = order[r % len(order) :] + order[: r % len(order)]
        for scn in rot:
            with agent(SCENARIOS[scn][1]) as cons:
                if cons is not None:
                    starts.append(cons.start_s)
                    time.sleep(0.05)  # let the consumer thread settle
                for wl, spec in wls.items():
                    if not applies(scn, wl):
                        continue
                    ns, clean = clean_sample(spec, cpu)
                    samples[wl].setdefault(scn, []).append(ns)
                    if not clean:
                        tainted[f"{wl}/{scn}"] = tainted.get(f"{wl}/{scn}", 0) + 1
                if cons is not None:
                    time.sleep(0.2)  # let the consumer drain what was produced
                    d = delivered.setdefault(scn, {"events": 0, "lost": 0})
                    d["events"] += cons.events
                    d["lost"] += cons.losses
        print(f"  round {r + 1}/{rounds} done", flush=True)
    if tainted:
        print(f"WARNING: samples taken while foreign tracing programs were loaded: {tainted}")
    return {
        "samples": samples,
        "delivered": delivered,
        "stream_start_s": summary(starts),
        "tainted_samples": tainted,
    }


def _prog_delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], iters: int
) -> dict[str, dict[str, float]]:
    """Programs that ran for (most of) the workload's iterations; others are background."""
    progs = {}
    for name, (t1, c1) in after.items():
        t0, c0 = before.get(name, (0, 0))
        if c1 - c0 >= iters // 2:
            progs[name] = {"calls": c1 - c0, "ns_per_call": (t1 - t0) / (c1 - c0)}
    return progs


def stats_pass(wls: dict[str, dict[str, object]], cpu: int) -> dict[str, dict[str, object]]:
    """Per-program BPF run time (ns per invocation) for each scenario with programs.

    Done twice for scenarios that deliver: with the consumer draining (as in production: a
    caught-up consumer makes every record's commit wake it, irq_work + IPI, inside the
    program) and with nobody draining (the ring buffer holds unconsumed data, so no wakeup):
    the difference is the wakeup's cost.
    """
    out: dict[str, dict[str, object]] = {}
    with BpfStats():
        for scn, (_desc, config, _only) in SCENARIOS.items():
            if config is None:
                continue
            with Consumer(config):
                time.sleep(0.05)
                for wl, spec in wls.items():
                    if not applies(scn, wl):
                        continue
                    iters = int(spec["iters"])  # type: ignore[call-overload]
                    before = own_prog_stats()
                    loadgen(str(spec["mode"]), str(spec["arg"]), iters=iters, cpu=cpu)
                    progs = _prog_delta(before, own_prog_stats(), iters)
                    out.setdefault(wl, {})[scn] = progs
            if scn not in DELIVERING:
                continue
            for wl, spec in wls.items():
                if not applies(scn, wl):
                    continue
                iters = int(spec["iters"])  # type: ignore[call-overload]
                nodrain = StreamConfig(
                    kinds=config.kinds,
                    path_prefixes=config.path_prefixes,
                    ringbuf_bytes=64 << 20,
                )
                with EventStream(nodrain):
                    before = own_prog_stats()
                    loadgen(str(spec["mode"]), str(spec["arg"]), iters=iters, cpu=cpu)
                    progs = _prog_delta(before, own_prog_stats(), iters)
                out.setdefault(wl, {})[scn + "-nodrain"] = progs
    return out


def _probe_ns(progs: dict[str, dict[str, float]]) -> float | None:
    """BPF run time per iteration: every program that ran once per iteration, summed."""
    return sum(p["ns_per_call"] for p in progs.values()) if progs else None


def report(result: dict[str, object], wls: dict[str, dict[str, object]]) -> list[dict[str, object]]:
    timing = result["timing"]
    assert isinstance(timing, dict)
    samples = timing["samples"]
    stats = result["bpf_stats"]
    assert isinstance(stats, dict)
    rows: list[dict[str, object]] = []
    for wl, by_scn in samples.items():
        base = summary(by_scn["a"])
        nsc = int(wls[wl]["syscalls"])  # type: ignore[call-overload]
        for scn in SCENARIOS:
            if scn not in by_scn:
                continue
            s = summary(by_scn[scn])
            added = s["median"] - base["median"]
            progs = stats.get(wl, {}).get(scn, {})
            nodrain = stats.get(wl, {}).get(scn + "-nodrain", {})
            rows.append(
                {
                    "workload": wl,
                    "scenario": scn,
                    "scenario_desc": SCENARIOS[scn][0],
                    "ns_per_iter": s,
                    "added_ns_per_iter": added,
                    "added_ns_per_iter_min_based": s["min"] - base["min"],
                    "syscalls_per_iter": nsc,
                    "added_ns_per_syscall": added / nsc if nsc else None,
                    "bpf_programs": progs,
                    "bpf_programs_nodrain": nodrain,
                    "probe_ns_per_iter": _probe_ns(progs),
                    "probe_ns_per_iter_nodrain": _probe_ns(nodrain),
                }
            )
    return rows


def print_table(rows: list[dict[str, object]]) -> None:
    columns = [
        ("workload", -20),
        ("scenario", -29),
        ("ns/iter", 8),
        ("min..max", 17),
        ("+ns/iter", 8),
        ("(min)", 7),
        ("+ns/sys", 7),
        ("probe", 6),
        ("nowake", 6),
    ]
    lines: list[list[object] | None] = []
    last = None
    for r in rows:
        s = r["ns_per_iter"]
        assert isinstance(s, dict)
        if last is not None and r["workload"] != last:
            lines.append(None)
        last = r["workload"]
        lines.append(
            [
                r["workload"],
                f"{r['scenario']}: {r['scenario_desc']}",
                s["median"],
                f"{s['min']:.0f}..{s['max']:.0f}",
                benchlib.num(r["added_ns_per_iter"], "+.0f"),
                benchlib.num(r["added_ns_per_iter_min_based"], "+.0f"),
                benchlib.num(r["added_ns_per_syscall"], "+.0f"),
                r["probe_ns_per_iter"],
                r["probe_ns_per_iter_nodrain"],
            ]
        )
    benchlib.print_table(columns, lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    ap.add_argument("--quick", action="store_true", help="1/5 of the iterations, 3 rounds")
    ap.add_argument("--cpu", type=int, default=1, help="CPU the load generator is pinned to")
    ap.add_argument("--no-stats", action="store_true", help="skip the BPF_ENABLE_STATS pass")
    benchlib.add_probes_option(ap)
    args = ap.parse_args()
    benchlib.need_root("loads BPF programs")
    rounds = 3 if args.quick and args.rounds == 9 else args.rounds
    probes = benchlib.prepare(args)
    prepare_files()
    ncpu = os.cpu_count() or 1
    if ncpu > 1:  # the agent (consumer thread) on another CPU than the load generator
        os.sched_setaffinity(0, {c for c in range(ncpu) if c != args.cpu} or {0})
    foreign = benchlib.foreign_bpf_programs()
    if foreign:
        print(
            f"WARNING: tracing BPF programs already loaded ({', '.join(foreign)}): the "
            "no-agent baseline is NOT clean (every syscall may already be on the slow path)"
        )
    wls = workloads(args.quick)
    print(f"syscall_overhead: {rounds} interleaved rounds x {len(SCENARIOS)} scenarios ...")
    result: dict[str, object] = {
        "probes": probes,
        "host": {
            "kernel": platform.release(),
            "cpus": ncpu,
            "loadgen_cpu": args.cpu,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "foreign_bpf_programs_at_start": foreign,
            "loadavg_at_start": os.getloadavg(),
        },
        "scenarios": {k: v[0] for k, v in SCENARIOS.items()},
        "workloads": {k: {kk: str(vv) for kk, vv in v.items()} for k, v in wls.items()},
    }
    result["timing"] = timing_pass(wls, rounds, args.cpu)
    result["bpf_stats"] = {} if args.no_stats else stats_pass(wls, args.cpu)
    result["host"]["loadavg_at_end"] = os.getloadavg()  # type: ignore[index]
    result["foreign_bpf_programs_at_end"] = benchlib.foreign_bpf_programs()
    rows = report(result, wls)
    result["rows"] = rows
    print()
    print_table(rows)
    timing = result["timing"]
    assert isinstance(timing, dict)
    print()
    print(f"delivered/lost per scenario: {timing['delivered']}")
    start_ms = timing["stream_start_s"]["median"] * 1e3
    print(f"EventStream start (open+load+attach): median {start_ms:.1f} ms")
    print(
        "ns/iter: median over rounds; +ns/iter: median minus the no-agent median ((min): min "
        "minus min); +ns/sys: per syscall of the loop; probe: BPF run time per iteration "
        "(BPF_ENABLE_STATS), consumer draining; nowake: the same with nobody draining (no "
        "ring-buffer wakeup inside the program)"
    )
    path = benchlib.write_json("syscall_overhead.json", result)
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
