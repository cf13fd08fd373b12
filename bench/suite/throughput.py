"""Kernel to sealed journal: offered event rates through the real agent, loss accounting above
what it sustains, auditd's backlog and lost counters at the same offered rates, the agent's RSS
and CPU at idle and at 10 k events/s, and the time from start to enforcing.

The events are the load generator's UDP connects to 127.0.0.1:9 (one syscall, one event, no
packet), paced with ``loadgen -R`` or flat out, from the bench cgroup on CPU 1; the agent runs
on CPU 0 with the example policies (enforcing) and its default record kinds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import agent_e2e
import benchlib

from . import agent as suite_agent
from . import auditd
from .agent import Agent, rss_kib
from .collector import Collector, cli

AGENT_CPU, LOADGEN_CPU = 0, 1


class Sampler:
    """Polls a process's RSS (and optionally auditd's backlog) every 100 ms in a thread."""

    def __init__(self, pid: int, backlog: bool = False) -> None:
        self.pid, self.backlog = pid, backlog
        self.rss_max = self.backlog_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.rss_max = max(self.rss_max, rss_kib(self.pid))
                if self.backlog:
                    self.backlog_max = max(self.backlog_max, auditd.status().get("backlog", 0))
            except (OSError, subprocess.CalledProcessError):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def offer(rate: float | None, seconds: float, cgroup: Path) -> tuple[int, dict[str, float]]:
    """Run the load generator: (its pid, its total line) for ``rate`` events/s or a flood."""
    burst = 1000 if rate is None else max(50, int(rate // 100))
    cmd = [str(benchlib.LOADGEN), "-c", str(LOADGEN_CPU), "-g", str(cgroup), "-n", str(burst),
           "-d", str(seconds)]  # fmt: skip
    if rate:
        cmd += ["-R", str(rate)]
    lg = subprocess.Popen([*cmd, "udpconnect", "9"], stdout=subprocess.PIPE, text=True)
    out, _ = lg.communicate()
    if lg.returncode:
        raise RuntimeError(f"loadgen failed ({lg.returncode})")
    row = {k: float(v) for k, v in (p.split("=") for p in out.split() if "=" in p)}
    return lg.pid, row


def sealtrail_run(
    rate: float | None, seconds: float, ringbuf: int, work: Path, cgroup: Path, policies: Path,
    idle_s: float = 0.0,
) -> dict[str, Any]:  # fmt: skip
    """One agent, one offered rate. With ``idle_s``: first its CPU and RSS with no load of
    ours for that long (other sessions' execs and connects are recorded too: host-wide)."""
    agent = Agent(work, policies, cgroup, "--ringbuf-size", str(ringbuf)).start(AGENT_CPU)
    idle = None
    try:
        time.sleep(1.0 if idle_s else 0.3)
        if idle_s:
            cpu0, t0 = agent_e2e.cpu_seconds(agent.pid), time.monotonic()
            time.sleep(idle_s)
            cpu = agent_e2e.cpu_seconds(agent.pid) - cpu0
            idle = {"cpu_pct": 100 * cpu / (time.monotonic() - t0), "seconds": idle_s,
                    "rss_kib": rss_kib(agent.pid)}  # fmt: skip
        cpu0, t0 = agent_e2e.cpu_seconds(agent.pid), time.monotonic()
        with Sampler(agent.pid) as rss:
            pid, row = offer(rate, seconds, cgroup)
            # the agent drains what the kernel queued when it stops; this wait is for its CPU
            agent_e2e.wait_quiet(agent.journal, quiet_s=0.5, limit_s=3.0)
        cpu = agent_e2e.cpu_seconds(agent.pid) - cpu0
        wall = time.monotonic() - t0
    finally:
        rc = agent.stop()
    res = agent_e2e.read_journal(agent.journal, pid)
    res["mismatch_errors"] = mismatch_errors(agent.journal)
    produced = int(row["iters"] + row["warmup"])
    recorded, lost = int(res["recorded"]), int(res["lost"])
    res.update({
        "who": "sealtrail", "offered_rate": rate, "ringbuf_bytes": ringbuf, "produced": produced,
        "produced_per_s": row["iters"] / row["secs"], "unaccounted": produced - recorded - lost,
        "agent_rc": rc, "agent_cpu_s": cpu, "agent_cpu_pct": 100 * cpu / wall,
        "agent_cpu_us_per_record": cpu * 1e6 / max(recorded, 1), "rss_max_kib": rss.rss_max,
        "verify": agent_e2e.verify(agent.state), "start_s": agent.start_s, "idle": idle,
    })  # fmt: skip
    return res


def mismatch_errors(journal: Path, most: int = 3) -> list[str]:
    """The first errors of the run's policy_mismatch records (what the agent could not keep
    as the policy says, e.g. a mark on a directory that vanished)."""
    out: list[str] = []
    for seg in sorted(journal.glob("seg-*")):
        for line in seg.read_bytes().splitlines():
            if b'"type":"policy_mismatch"' in line and len(out) < most:
                out += [str(e) for e in json.loads(line).get("errors", [])][: most - len(out)]
    return out


def journal_lines(journal: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in journal.glob("seg-*"))


def collector_run(
    rate: float | None, seconds: float, work: Path, cgroup: Path, policies: Path
) -> dict[str, Any]:
    """The agent forwarding to a loopback collector while the load runs: how long after the
    load the collector held every journal line written until then, and whether after the
    agent's clean stop (it forwards up to its final seal) it holds exactly the journal."""
    host = socket.gethostname()  # the agent journals as this host
    agent = Agent(work, policies, cgroup)
    cli("keys", "init", "--keys", str(agent.keys))
    with Collector(work / "collector", host, agent.keys / "journal.pub") as coll:
        agent.cmd += ["--forward", f"https://127.0.0.1:{coll.port}", "--forward-tls",
                      str(coll.bundle), "--forward-wait", "60"]  # fmt: skip
        agent.start(AGENT_CPU)
        try:
            time.sleep(0.3)
            t0 = time.monotonic()
            pid, row = offer(rate, seconds, cgroup)
            t_end, lines = time.monotonic(), journal_lines(agent.journal)
            while coll.held(host) < lines and time.monotonic() - t_end < 120:
                time.sleep(0.05)
            caught_up = time.monotonic()
        finally:
            agent.stop()
        held = coll.held(host)
    res = agent_e2e.read_journal(agent.journal, pid)
    produced = int(row["iters"] + row["warmup"])
    return {
        "who": "sealtrail+collector", "offered_rate": rate, "produced": produced,
        "produced_per_s": row["iters"] / row["secs"], "recorded": res["recorded"],
        "lost": res["lost"], "unaccounted": produced - int(res["recorded"]) - int(res["lost"]),
        "journal_records": res["records"], "collector_held": held,
        "collector_holds_journal": held == res["records"],
        "lines_at_load_end": lines, "catch_up_after_load_s": caught_up - t_end,
        "delivered_per_s": lines / (caught_up - t0),
    }  # fmt: skip


def auditd_run(rate: float | None, seconds: float, work: Path, cgroup: Path) -> dict[str, Any]:
    with auditd.Auditd(work, suite_agent.SRC / "policies") as a:
        assert a.proc is not None
        time.sleep(0.3)
        before = auditd.status()
        cpu0, t0 = agent_e2e.cpu_seconds(a.proc.pid), time.monotonic()
        with Sampler(a.proc.pid, backlog=True) as smp:
            pid, row = offer(rate, seconds, cgroup)
            time.sleep(1.0)  # auditd's INCREMENTAL_ASYNC flush
        after = auditd.status()
        cpu = agent_e2e.cpu_seconds(a.proc.pid) - cpu0
        wall = time.monotonic() - t0
        recorded = a.records(pid, "connect")
        log_bytes = a.log_bytes()
    produced = int(row["iters"] + row["warmup"])
    lost = after["lost"] - before["lost"]
    return {
        "who": "auditd", "offered_rate": rate, "produced": produced,
        "produced_per_s": row["iters"] / row["secs"], "recorded": recorded, "lost": lost,
        "unaccounted": produced - recorded - lost, "backlog_max": smp.backlog_max,
        "backlog_limit": after["backlog_limit"], "auditd_cpu_pct": 100 * cpu / wall,
        "rss_max_kib": smp.rss_max, "log_bytes_per_record": log_bytes / max(recorded, 1),
    }  # fmt: skip


PROBE = """
import socket, sys, time
port = int(sys.argv[1])
print("ready", flush=True)
while True:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
    except PermissionError:
        print(time.monotonic(), flush=True)
        break
    except OSError:
        time.sleep(0.002)
    finally:
        s.close()
"""


def time_to_enforce(work: Path, cgroup: Path) -> dict[str, Any]:
    """Exec of the agent to the first connect its guard denies (EPERM), seen by a process in
    the bench cgroup that tries a connect to the policy's port every ~2 ms; and to
    status.json saying loaded."""
    from tests.agentproc import CONNECT_DENY_POLICY

    port = benchlib.closed_tcp_port()
    pol = work / "enforce-policy"
    pol.mkdir(parents=True)
    (pol / "deny.toml").write_text(CONNECT_DENY_POLICY.format(name="bench-deny", port=port))

    def child() -> None:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    probe = subprocess.Popen([sys.executable, "-c", PROBE, str(port)], stdout=subprocess.PIPE,
                             text=True, preexec_fn=child)  # fmt: skip
    try:
        assert probe.stdout is not None
        probe.stdout.readline()
        t0 = time.monotonic()
        agent = Agent(work, pol, cgroup).start()
        try:
            probe.wait(30)
            denied = float(probe.stdout.readline() or "nan")
        finally:
            agent.stop()
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    return {"to_first_deny_s": denied - t0, "to_status_loaded_s": agent.start_s}


def measure(
    rates: list[float], seconds: float, idle_s: float, starts: int, flood: bool, work: Path,
    cgroup: Path, policies: Path, log: Callable[[str], None],
    collector_rates: tuple[float | None, ...] = (10_000.0,),
) -> dict[str, Any]:  # fmt: skip
    runs: list[dict[str, Any]] = []
    plan: list[tuple[float | None, int]] = [(r, 8 << 20) for r in rates]
    plan += [(None, 8 << 20)] * flood + [(None, 64 << 10)]
    for rate, ringbuf in plan:
        what = "flood" if rate is None else f"{rate:,.0f}/s"
        r = sealtrail_run(rate, seconds, ringbuf, work, cgroup, policies,
                          idle_s if not runs else 0.0)  # fmt: skip
        log(f"  sealtrail {what:>10} ring {ringbuf >> 10} KiB: recorded {r['recorded']} "
            f"lost {r['lost']} unaccounted {r['unaccounted']} "
            f"({r['recorded_per_s']:,.0f}/s)")  # fmt: skip
        runs.append(r)
        if ringbuf == 8 << 20:
            a = auditd_run(rate, seconds, work / f"auditd-{len(runs)}", cgroup)
            log(f"  auditd    {what:>10}: recorded {a['recorded']} lost {a['lost']} "
                f"backlog max {a['backlog_max']} unaccounted {a['unaccounted']}")  # fmt: skip
            runs.append(a)
    for rate in collector_rates:
        r = collector_run(rate, seconds, work / f"collector-{len(runs)}", cgroup, policies)
        log(f"  collector  {'flood' if rate is None else f'{rate:,.0f}/s':>10}: journal "
            f"{r['journal_records']} held {r['collector_held']} caught up "
            f"{r['catch_up_after_load_s']:.2f} s after the load")  # fmt: skip
        runs.append(r)
    clean = [r for r in runs if r["who"] == "sealtrail" and r["lost"] == 0
             and r["unaccounted"] == 0 and r["verify"]["rc"] == 0]  # fmt: skip
    enforce = [time_to_enforce(work / f"enforce-{i}", cgroup) for i in range(starts)]
    return {
        "seconds": seconds, "runs": runs,
        "best_lossless_rate": max((r["recorded_per_s"] for r in clean), default=0.0),
        "idle": runs[0]["idle"], "start_to_enforce": enforce,
    }  # fmt: skip
