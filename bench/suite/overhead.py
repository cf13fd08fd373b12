"""Added cost per operation: no agent, sealtrail (monitor, enforce, 1,000 rules), auditd.

Every configuration runs every workload once per round; rounds are interleaved and rotated
(reversed every other round), so drift and other sessions' load hit every configuration alike.
The load generator (bench/loadgen.c) and tar run in the bench cgroup (the guard's) on one CPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib
from benchlib import REPO, BpfStats, summary
from fanotify_overhead import cpu_ticks, fanotify_marks, wait_quiet

from . import agent as suite_agent
from .agent import Agent, rss_kib
from .auditd import Auditd

CPU = 1  # the workloads' CPU; the agent and auditd are not pinned (as a user runs them)
CONFIGS = ("none", "monitor", "enforce", "rules1000", "auditd")
SEALTRAIL = ("monitor", "enforce", "rules1000")


@dataclass(frozen=True)
class Workload:
    name: str
    what: str
    mode: str  # loadgen mode, or "tar"
    arg: str
    iters: int
    #: "both": sealtrail and auditd (as configured) both record every operation;
    #: "neither": no rule of either names it (the cost of being there at all)
    records: str


def workloads(work: Path, scale: float) -> list[Workload]:
    target = work / "unnamed" / "f"  # no rule of either names it
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")

    def n(full: int) -> int:
        return max(1, int(full * scale))

    return [
        Workload("open+close", "open(O_RDONLY)+close of a file no rule names", "open",
                 str(target), n(200_000), "neither"),
        Workload("stat", "stat(2) of that file", "stat", str(target), n(200_000), "neither"),
        Workload("fork+exec", "fork + execve(/bin/true) + wait", "exec", "/bin/true",
                 n(2_000), "both"),
        Workload("udp connect", "connect(2) of a UDP socket to 127.0.0.1:9", "udpconnect",
                 "9", n(200_000), "both"),
        Workload("tcp connect+accept", "socket, connect, accept, close x2 on loopback",
                 "tcpaccept", "", n(20_000), "both"),
        Workload("getppid", "getppid(2): no rule and no probe is about it (the control: what "
                 "any syscall pays)", "getppid", "", n(400_000), "neither"),
        Workload("tar x", "tar -x of this repository's source tree (git archive HEAD)", "tar",
                 str(work / "src.tar"), n(8), "neither"),
    ]  # fmt: skip


def make_tarball(work: Path) -> dict[str, int]:
    tar = work / "src.tar"
    with tar.open("wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "HEAD"], check=True,
                       stdout=f)  # fmt: skip
    files = subprocess.run(["tar", "-tf", str(tar)], check=True, capture_output=True, text=True)
    return {"bytes": tar.stat().st_size, "entries": len(files.stdout.splitlines())}


def run_tar(tar: str, iters: int, cgroup: Path, dest: Path) -> float:
    """ns per `tar -x` of the tarball (fork+exec of tar included), in the cgroup on CPU."""

    def child() -> None:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        os.sched_setaffinity(0, {CPU})

    total = 0.0
    for _ in range(iters):
        dest.mkdir(parents=True)
        t0 = time.perf_counter()
        subprocess.run(["tar", "-x", "-f", tar, "-C", str(dest)], check=True, preexec_fn=child)
        total += time.perf_counter() - t0
        shutil.rmtree(dest)
    return total * 1e9 / iters


def run_one(wl: Workload, cgroup: Path, work: Path, iters: int | None = None) -> float:
    n = iters or wl.iters
    if wl.mode == "tar":
        return run_tar(wl.arg, n, cgroup, work / "untar")
    return benchlib.loadgen(wl.mode, wl.arg, iters=n, cpu=CPU, cgroup=cgroup)[0]["ns_per_iter"]


def bpf_pass(wls: list[Workload], cgroup: Path, work: Path, pid: int) -> dict[str, Any]:
    """BPF run time of the agent's programs per operation (BPF_ENABLE_STATS on, a separate
    pass with a quarter of the iterations: counting costs two clock reads per program run).
    The probes are host-wide: other processes' syscalls run them too, so the programs' run
    time per second with no workload of ours (1 s, before the pass) is subtracted for the
    duration of each workload."""
    out: dict[str, Any] = {}
    with BpfStats():
        t0, before = time.monotonic(), benchlib.own_prog_stats(pid)
        time.sleep(1.0)
        bg = _delta(before, benchlib.own_prog_stats(pid), time.monotonic() - t0)
        for wl in wls:
            iters = max(1, wl.iters // 4)
            t0, before = time.monotonic(), benchlib.own_prog_stats(pid)
            run_one(wl, cgroup, work, iters)
            secs = time.monotonic() - t0
            ran = _delta(before, benchlib.own_prog_stats(pid), 1.0)
            per = {name: (v - bg.get(name, 0.0) * secs) / iters for name, v in ran.items()}
            out[wl.name] = {"total_ns": sum(per.values()), "by_program": per}
        out["background_ns_per_s"] = bg
    return out


def _delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], secs: float
) -> dict[str, float]:
    """run_time_ns per second of each program between two readings."""
    return {name: (a[0] - before.get(name, (0, 0))[0]) / secs for name, a in after.items()}


def measure(
    rounds: int, scale: float, work: Path, cgroup: Path, policies: dict[str, Path],
    wait_foreign: float, log: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """Samples ns/op per configuration and workload, agent CPU and BPF run time per op,
    agent start times, tainted samples. The workloads' files (the file no rule names, the
    tarball and its extraction) are on a tmpfs of the run's own: disk writeback of other
    sessions made tar's times swing by 5x."""
    files = work / "tmpfs"
    files.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "suite-tmpfs", str(files)],
                   check=True)  # fmt: skip
    try:
        return _measure(rounds, scale, work, files, cgroup, policies, wait_foreign, log)
    finally:
        subprocess.run(["umount", "--lazy", str(files)], check=True)


def _measure(
    rounds: int, scale: float, work: Path, files: Path, cgroup: Path,
    policies: dict[str, Path], wait_foreign: float, log: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    wls = workloads(files, scale)
    tarball = make_tarball(files)
    samples: dict[str, dict[str, list[float]]] = {c: {w.name: [] for w in wls} for c in CONFIGS}
    agent_cpu: dict[str, dict[str, list[float]]] = {c: {} for c in SEALTRAIL}
    bpf: dict[str, Any] = {}
    starts: dict[str, list[float]] = {c: [] for c in SEALTRAIL}
    tainted: dict[str, list[list[str]]] = {}
    rss: dict[str, list[int]] = {c: [] for c in SEALTRAIL}
    marks: dict[str, dict[str, int]] = {}
    hz = os.sysconf("SC_CLK_TCK")
    for rnd in range(rounds):
        shift = rnd % len(CONFIGS)
        order = list(CONFIGS[shift:] + CONFIGS[:shift])
        if rnd % 2:
            order.reverse()
        for config in order:
            others = wait_quiet(wait_foreign)
            if others:
                tainted.setdefault(config, []).append(others)
            t0 = time.monotonic()
            if config == "auditd":
                with Auditd(work / f"auditd-{rnd}", suite_agent.SRC / "policies"):
                    for wl in wls:
                        samples[config][wl.name].append(run_one(wl, cgroup, files))
                shutil.rmtree(work / f"auditd-{rnd}", ignore_errors=True)
            elif config == "none":
                for wl in wls:
                    samples[config][wl.name].append(run_one(wl, cgroup, files))
            else:
                with Agent(work, policies[config], cgroup).start() as agent:
                    starts[config].append(agent.start_s)
                    for wl in wls:
                        c0 = cpu_ticks(agent.pid)
                        samples[config][wl.name].append(run_one(wl, cgroup, files))
                        us = (cpu_ticks(agent.pid) - c0) / hz * 1e6 / (wl.iters * 1.1)
                        agent_cpu[config].setdefault(wl.name, []).append(us)
                    rss[config].append(rss_kib(agent.pid))
                    marks[config] = fanotify_marks(agent.pid)
                    if rnd == 0:
                        bpf[config] = bpf_pass(wls, cgroup, files, agent.pid)
                shutil.rmtree(agent.state, ignore_errors=True)
            cells = "  ".join(f"{w} {samples[config][w][-1]:,.0f}" for w in samples[config])
            log(f"  round {rnd} {config:9} ns/op: {cells} ({time.monotonic() - t0:.1f} s)")
    return {
        "workloads": {w.name: {"what": w.what, "iters": w.iters, "records": w.records,
                               "loadgen": f"{w.mode} {w.arg}".strip()} for w in wls},
        "tarball": tarball, "rounds": rounds, "samples_ns": samples, "agent_cpu_us": agent_cpu,
        "bpf_ns_per_op": bpf, "start_s": starts, "tainted": tainted, "agent_rss_kib": rss,
        "fanotify_marks": marks,
        "rows": rows(samples, {w.name: w.records for w in wls}),
    }  # fmt: skip


def rows(
    samples: dict[str, dict[str, list[float]]], records: dict[str, str]
) -> list[dict[str, Any]]:
    """Per workload: each configuration's median and spread, added ns/op against "none"
    (median - median), and auditd-added / sealtrail-added per sealtrail configuration, with
    the goal's verdict: >= 5 where both record; sealtrail-added <= auditd-added where neither.
    The noise is the wider min..max of "none" and the configuration; ``within_noise``: the
    difference of the two added costs is inside it (the verdict is still the strict one)."""
    out = []
    for wl, rec in records.items():
        base = summary(samples["none"][wl])
        row: dict[str, Any] = {"workload": wl, "records": rec, "configs": {}}
        for c in CONFIGS:
            s = summary(samples[c][wl])
            noise = max(s["max"] - s["min"], base["max"] - base["min"])
            row["configs"][c] = {**s, "added": s["median"] - base["median"], "noise": noise}
        aud = row["configs"]["auditd"]["added"]
        for c in SEALTRAIL:
            st = row["configs"][c]
            ratio = aud / st["added"] if st["added"] > 0 else None
            if rec == "both":
                met = aud > 0 if ratio is None else ratio >= 5
            else:
                met = st["added"] <= aud
            st["ratio"] = ratio
            st["goal_met"] = bool(met)
            st["within_noise"] = abs(st["added"] - aud) <= st["noise"]
        out.append(row)
    return out
