"""What forwarding costs the real agent: `sealtrail agent` recording UDP connects at a paced
rate, with and without ``--forward`` to a loopback collector; the agent process's CPU per
recorded event in both, and the difference.

    sudo .venv/bin/python bench/forward_agent.py [--rate 10000] [--seconds 15] [--runs 3]
                                                 [--rev HEAD]

Each run starts the agent of a commit (``--rev``: ``suite.agent.snapshot``, its code, native
core and probes, so other engineers' edits in the working tree are not measured) on CPU 0 with
``--record connect`` and one connect rule for a port nobody uses (``agent_e2e.POLICY``), the
guard on a cgroup of the benchmark's own; ``loadgen -R RATE udpconnect`` in that cgroup on CPU
1 (one connect, one event, no packet); with ``--forward``, ``collector serve`` (the same
commit's) on CPU 1 too, as if it were elsewhere. Runs alternate without and with forwarding.

  cpu us/event  utime+stime of the agent (all its threads, /proc/PID/stat) from just before
                the load to 1 s after it, over the load generator's connects the journal
                recorded; the loopback TCP receive work of the collector's side is charged to
                the sending agent, which a remote collector would not cost it
  threads       the busiest threads' CPU per event: the main loop's, then the forwarder's
  latency       with --forward: from an event's kernel time (``ts_ns``) to the first moment
                the collector's store holds it (it verifies a batch before storing it),
                sampled every 10 ms; p50, p99, max over the recorded connects
  held          with --forward, after the agent's clean stop: the collector holds the journal

``--remote``: the collector runs in a network namespace of the benchmark's own, behind a veth
pair (10.213.0.1 here, 10.213.0.2 there), with receive packet steering putting each side's
receive work on its own CPU (the collector's on CPU 1, the agent's on CPU 0). On loopback the
kernel does the collector's TCP receive work in the sending agent's context, and CPU accounting
by ticks (this kernel has no ``IRQ_TIME_ACCOUNTING``) charges it to the agent thread that is
running. With ``--remote`` that work is done on CPU 1, but each steered batch of packets costs
the sender an inter-processor interrupt instead (a VM exit on this machine kind; a NIC would
not cost it): neither is exactly a collector on another machine, and the two bracket it.
(Measured 2026-12-03 with ``perf record -p`` on the agent: the forwarder thread had 277 kernel
samples of 609 on loopback, TCP receive functions a handful of them; 391 of 769 with
``--remote``, 98 of them the IPI's ``native_write_msr``.)

The agent records every process's connects: a run whose journal holds more than 2 % records
of other processes (other sessions on a shared machine) is printed but left out of the
medians.

Numbers only (no assertions); the machine is shared, so read the spread over the runs.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import agent_e2e  # noqa: E402
import benchlib  # noqa: E402
from suite import agent as suite_agent  # noqa: E402
from suite.collector import Collector, cli  # noqa: E402
from suite.throughput import offer  # noqa: E402

from agent.collector.store import open_store  # noqa: E402

AGENT_CPU, OTHER_CPU = 0, 1
SAMPLE_S = 0.01
NETNS, VETH, HERE, THERE = "sealtrail-bench-fwd", "stbfwd", "10.213.0.1", "10.213.0.2"


class RemoteNet:
    """A network namespace ``NETNS`` reached from here through a veth pair, each end's receive
    work steered (RPS) to its side's CPU; removed (with the pair) on exit."""

    def __enter__(self) -> RemoteNet:
        def ip(*argv: str) -> None:
            subprocess.run(["ip", *argv], check=True, capture_output=True)

        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)  # a previous run's
        ip("netns", "add", NETNS)
        try:
            ip("link", "add", f"{VETH}0", "type", "veth", "peer", "name", f"{VETH}1")
            ip("link", "set", f"{VETH}1", "netns", NETNS)
            ip("addr", "add", f"{HERE}/30", "dev", f"{VETH}0")
            ip("link", "set", f"{VETH}0", "up")
            ip("-n", NETNS, "addr", "add", f"{THERE}/30", "dev", f"{VETH}1")
            ip("-n", NETNS, "link", "set", f"{VETH}1", "up")
            ip("-n", NETNS, "link", "set", "lo", "up")
            Path(f"/sys/class/net/{VETH}0/queues/rx-0/rps_cpus").write_text(f"{1 << AGENT_CPU:x}")
            subprocess.run(
                ["ip", "netns", "exec", NETNS, "sh", "-c",
                 f"echo {1 << OTHER_CPU:x} > /sys/class/net/{VETH}1/queues/rx-0/rps_cpus"],
                check=True, capture_output=True,
            )  # fmt: skip
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        subprocess.run(["ip", "link", "del", f"{VETH}0"], capture_output=True)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


class Held:
    """Samples, every ``SAMPLE_S``, how many records the collector's store holds for ``host``."""

    def __init__(self, store: Path, host: str) -> None:
        self.store, self.host = store, host
        self.samples: list[tuple[int, int]] = []  # (wall ns, size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with open_store(str(self.store)) as store:
            while not self._stop.wait(SAMPLE_S):
                size = int(store.head(self.host).size)
                if not self.samples or size != self.samples[-1][1]:
                    self.samples.append((time.time_ns(), size))

    def __enter__(self) -> Held:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def when(self, seq: int) -> int | None:
        """The first sample at which record ``seq`` was held (sizes only grow)."""
        i = bisect.bisect_right(self.samples, seq, key=lambda sample: sample[1])
        return self.samples[i][0] if i < len(self.samples) else None


def thread_cpu(pid: int) -> dict[int, float]:
    """utime + stime of each thread of ``pid``, seconds."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone
            continue
        out[int(task)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def event_times(journal: Path, pid: int) -> list[tuple[int, int]]:
    """(seq, kernel time in wall ns) of the load generator's connect events."""
    out = []
    for seg in sorted(journal.glob("seg-*")):
        for line in seg.read_bytes().splitlines():
            if b'"kind":"connect"' in line:
                rec = json.loads(line)
                if rec.get("type") == "event" and rec.get("pid") == pid:
                    out.append((int(rec["seq"]), int(rec.get("ts_ns", rec["ts"]))))
    return out


def one_run(
    forward: bool, rate: float, seconds: float, work: Path, cgroup: Path, remote: bool = False
) -> dict[str, Any]:
    policies = work / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "bench.toml").write_text(agent_e2e.POLICY.format(port=benchlib.closed_tcp_port()))
    agent = suite_agent.Agent(work, policies, cgroup, "--record", "connect")
    host = socket.gethostname()  # the agent journals as this host
    cli("keys", "init", "--keys", str(agent.keys))
    where = {"addr": THERE, "netns": NETNS} if remote else {}
    coll = (
        Collector(work / "collector", host, agent.keys / "journal.pub", **where)
        if forward
        else None
    )
    held = None
    try:
        if coll is not None:
            coll.__enter__()
            assert coll.proc is not None
            for task in os.listdir(f"/proc/{coll.proc.pid}/task"):
                os.sched_setaffinity(int(task), {OTHER_CPU})
            agent.cmd += ["--forward", f"https://{coll.addr}:{coll.port}", "--forward-tls",
                          str(coll.bundle)]  # fmt: skip
            held = Held(coll.dir / "store.sqlite", host)
        agent.start(AGENT_CPU)
        try:
            time.sleep(1.0)  # started, connected, idle
            if held is not None:
                held.__enter__()
            cpu0, t0 = agent_e2e.cpu_seconds(agent.pid), time.monotonic()
            threads0 = thread_cpu(agent.pid)
            pid, row = offer(rate, seconds, cgroup)
            time.sleep(1.0)  # the last seal and its batch
            cpu, wall = agent_e2e.cpu_seconds(agent.pid) - cpu0, time.monotonic() - t0
            threads = thread_cpu(agent.pid)
            if held is not None:
                last = max((seq for seq, _ in event_times(agent.journal, pid)), default=0)
                deadline = time.monotonic() + 10
                while held.when(last) is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                held.__exit__()
        finally:
            agent.stop()
        times = event_times(agent.journal, pid)
        journal = agent_e2e.read_journal(agent.journal, pid)
        res: dict[str, Any] = {
            "forward": forward, "recorded": len(times),
            "produced": int(row["iters"] + row["warmup"]),
            "offered_per_s": row["iters"] / row["secs"], "agent_cpu_s": cpu,
            "agent_cpu_pct": 100 * cpu / wall, "cpu_us_per_event": cpu * 1e6 / max(len(times), 1),
            # records of other processes' connects (other sessions on this machine) cost CPU
            # too: a run with many is not comparable
            "other_records": journal["records"] - len(times),
            "bytes_per_record": journal["bytes_per_record"],
            # the busiest threads (the main loop, then the forwarder's), us per event
            "threads_us_per_event": sorted(
                (round((t - threads0.get(tid, 0.0)) * 1e6 / max(len(times), 1), 2)
                 for tid, t in threads.items()), reverse=True)[:3],
        }  # fmt: skip
        if coll is not None and held is not None:
            lat = sorted((at - ts) / 1e6 for seq, ts in times if (at := held.when(seq)))
            nan = float("nan")
            res.update({
                "latency_ms_p50": statistics.median(lat) if lat else nan,
                "latency_ms_p99": lat[int(len(lat) * 0.99)] if lat else nan,
                "latency_ms_max": lat[-1] if lat else nan, "never_held": len(times) - len(lat),
                "held": coll.held(host), "journal_records": journal["records"],
            })  # fmt: skip
    finally:
        if coll is not None:
            coll.__exit__()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=10_000)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rev", default="HEAD", help="the commit whose agent runs")
    p.add_argument(
        "--remote", action="store_true", help="the collector in a netns, as if on another machine"
    )
    args = p.parse_args()
    benchlib.need_root("runs the agent")
    benchlib.build_loadgen()
    suite_agent.SRC = suite_agent.snapshot(args.rev)
    os.environ.pop("SEALTRAIL_BPF_DIR", None)  # the snapshot's agent/kernel/obj
    os.environ["PYTHONPATH"] = str(suite_agent.SRC)  # the agent and CLIs run the commit's code
    print(f"agent: {(suite_agent.SRC / '.complete').read_text().strip()}", flush=True)
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    benchlib.OUT_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="forward-agent-", dir=benchlib.OUT_DIR) as tmp, \
            benchlib.BenchCgroup("sealtrail-bench-forward") as cgroup, \
            (RemoteNet() if args.remote else contextlib.nullcontext()):  # fmt: skip
        for n in range(args.runs):
            for forward in (False, True):
                res = one_run(
                    forward,
                    args.rate,
                    args.seconds,
                    Path(tmp) / f"{n}-{forward}",
                    cgroup,
                    args.remote,
                )
                runs[forward].append(res)
                cells = ", ".join(f"{k} {v:,.2f}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in res.items())  # fmt: skip
                print(cells, flush=True)
    # runs whose journal holds many records of other processes (other sessions' connects)
    # measured another load: left out, and said so
    clean = {
        k: [r for r in v if r["other_records"] <= 0.02 * r["recorded"]] for k, v in runs.items()
    }
    left_out = sum(len(v) for v in runs.values()) - sum(len(v) for v in clean.values())
    if left_out:
        print(f"{left_out} run(s) left out: other processes' records in the journal")
    if not clean[False] or not clean[True]:
        raise SystemExit("no clean run of one kind: run it again")
    off = [r["cpu_us_per_event"] for r in clean[False]]
    on = [r["cpu_us_per_event"] for r in clean[True]]
    base, fwd = statistics.median(off), statistics.median(on)
    added = fwd - base
    print(f"agent cpu us/event without --forward: {', '.join(f'{v:.2f}' for v in off)} "
          f"(median {base:.2f}); with: {', '.join(f'{v:.2f}' for v in on)} (median {fwd:.2f}); "
          f"forwarding adds {added:.2f} us/event = {100 * added / base:.1f} %")  # fmt: skip
    p99 = [r["latency_ms_p99"] for r in clean[True]]
    print(f"event to held by the collector, p99 ms: {', '.join(f'{v:.0f}' for v in p99)}")


if __name__ == "__main__":
    main()
