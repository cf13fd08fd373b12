"""Forwarding on the agent's side, against a real collector: catch-up, CPU per event, latency,
and what the forwarder thread costs the main thread (the GIL).

    python bench/forward.py [--backlog 1000000] [--rate 10000] [--seconds 20]
                            [--phases catch-up,steady,gil]

1. catch-up: a real journal of ``--backlog`` records (sealed every 1,000, as a busy agent seals
   them) sent by ``Forwarder`` from 0 to its end through a ``collector serve`` process over
   mutual TLS on loopback: seconds, and the forwarder thread's CPU per record
   (``pthread_getcpuclockid``: that thread only, not the collector).
2. steady: the daemon's loop (append ``--rate`` events/s, ``tick``, ``take_records``,
   ``notify``) for ``--seconds`` with the forwarder running: its thread's CPU per event beside
   the main thread's, how many requests, and the latency from a record's ``ts`` to its
   batch's receipt. (What forwarding costs the real agent: ``bench/forward_agent.py``.)
3. GIL: how late the main thread wakes from a 1 ms sleep (as the event loop wakes from
   ``poll``), with no forwarder, and while a forwarder catches up a backlog at full speed on
   a thread of this process, then in a child process on the same CPU (the collector on
   another): the difference between the two is what sharing the GIL costs.

Numbers only (no assertions); the machine is shared, so run it more than once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.forward.forwarder import ForwardConfig, Forwarder, Wait  # noqa: E402
from agent.forward.pacing import Pacing  # noqa: E402
from agent.forward.source import Batch  # noqa: E402
from agent.journal.segments import iter_lines  # noqa: E402
from agent.journal.writer import JournalWriter  # noqa: E402
from bench.collector_ingest import Server  # noqa: E402


class Timed(Forwarder):
    """Notes when each batch was acknowledged, and its thread's CPU clock."""

    acks: list[tuple[int, int, int]]

    def start(self) -> None:
        self.acks = []
        super().start()
        assert self._thread is not None and self._thread.ident is not None
        self.cpu_clock = time.pthread_getcpuclockid(self._thread.ident)

    def cpu(self) -> float:
        return time.clock_gettime(self.cpu_clock)

    def _accepted(self, batch: Batch, body: dict[str, Any]) -> Wait:
        wait = super()._accepted(batch, body)
        if self._head == batch.end:
            self.acks.append((batch.start, batch.end, time.time_ns()))
        return wait


def writer(root: Path, name: str) -> JournalWriter:
    return JournalWriter.open(root / f"{name}.journal", root / f"{name}.keys", host=name,
                              boot_id="boot-1", protect_files=False)  # fmt: skip


def event(i: int) -> dict[str, Any]:
    return {"kind": "exec", "pid": 1000 + i % 30000, "path": "/usr/bin/true",
            "argv": ["true", str(i)], "uid": 0, "ppid": 1}  # fmt: skip


def backlog(root: Path, name: str, records: int) -> JournalWriter:
    w = JournalWriter.open(root / f"{name}.journal", root / f"{name}.keys", host=name,
                           boot_id="boot-1", protect_files=False, seal_every=1 << 30,
                           seal_interval=3600.0)  # fmt: skip
    w.append("start", {"version": "bench"})
    batch: list[tuple[str, dict[str, Any]]] = []
    for i in range(records):
        batch.append(("event", event(i)))
        if len(batch) == 1000:
            w.append_many(batch)
            w.flush_and_seal()
            batch = []
    if batch:
        w.append_many(batch)
    w.close({"reason": "bench"})
    return w


def forwarder(server: Server, root: Path, name: str, durable: int, rate: int = 0) -> Timed:
    bundle = root / f"{name}.bundle"
    server.enroll(name, root / f"{name}.keys" / "journal.pub")
    config = ForwardConfig(f"https://127.0.0.1:{server.port}", bundle, Pacing(rate=rate))
    fwd = Timed.open(config, root / f"{name}.journal", host=name, durable=durable,
                     run_dir=root / f"{name}.run")  # fmt: skip
    assert isinstance(fwd, Timed)
    return fwd


def wait_caught_up(fwd: Timed, size: int, timeout: float = 600) -> float:
    started = time.perf_counter()
    while fwd.status()["acknowledged"] < size:
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"not caught up: {fwd.status()}")
        time.sleep(0.005)
    return time.perf_counter() - started


def catch_up(server: Server, root: Path, records: int) -> dict[str, float]:
    w = backlog(root, "backlog", records)
    fwd = forwarder(server, root, "backlog", w.sealed_size)
    fwd.start()
    took = wait_caught_up(fwd, w.sealed_size)
    cpu = fwd.cpu()
    fwd.stop(1.0)
    return {"records": w.sealed_size, "seconds": took, "records_per_s": w.sealed_size / took,
            "forwarder_cpu_us_per_record": cpu / w.sealed_size * 1e6}  # fmt: skip


def steady(server: Server, root: Path, rate: int, seconds: float) -> dict[str, float]:
    w = writer(root, "steady")
    w.append("start", {"version": "bench"})
    w.flush_and_seal()
    fwd = forwarder(server, root, "steady", w.sealed_size)
    fwd.start()
    main_cpu0, fwd_cpu0 = time.thread_time(), fwd.cpu()
    started = time.monotonic()
    n = 0
    while (now := time.monotonic()) - started < seconds:
        due = int((now - started) * rate) - n
        if due > 0:
            w.append_many([("event", event(n + i)) for i in range(due)])
            n += due
        w.tick()
        records = fwd.take_records()
        if records:
            w.append_many(records)
        fwd.notify(w.sealed_size)
        time.sleep(0.01)  # the loop's poll
    main_cpu, fwd_cpu = time.thread_time() - main_cpu0, fwd.cpu() - fwd_cpu0
    w.close({"reason": "bench"})
    fwd.notify(w.sealed_size)
    assert fwd.stop(10.0)
    ts = [json.loads(line.data)["ts"] for line in iter_lines(root / "steady.journal")]
    latencies = [(at - int(ts[seq])) / 1e6 for start, end, at in fwd.acks
                 for seq in range(start, end)]  # fmt: skip
    latencies.sort()
    return {"events": n, "main_cpu_us_per_event": main_cpu / n * 1e6,
            "forwarder_cpu_us_per_event": fwd_cpu / n * 1e6, "batches": len(fwd.acks),
            "latency_ms_p50": statistics.median(latencies),
            "latency_ms_p99": latencies[int(len(latencies) * 0.99)],
            "latency_ms_max": latencies[-1]}  # fmt: skip


def oversleep(seconds: float) -> list[float]:
    """How late (µs) a 1 ms sleep returns, for ``seconds``."""
    out = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        time.sleep(0.001)
        out.append((time.perf_counter() - t - 0.001) * 1e6)
    return sorted(out)


def _forward_all(server: Server, root: Path, name: str, size: int) -> None:
    fwd = forwarder(server, root, name, size)
    fwd.start()
    wait_caught_up(fwd, size)
    fwd.stop(1.0)


def gil(server: Server, root: Path, records: int) -> dict[str, float]:
    """The same catch-up by a thread of this process and by a child process, both on this
    process's CPU (the collector pinned to the others, as if it were elsewhere): what the
    thread costs the main thread beyond sharing a CPU with it is the GIL's share."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1 and server.procs:
        for proc in server.procs:
            for task in os.listdir(f"/proc/{proc.pid}/task"):  # the collector's threads
                os.sched_setaffinity(int(task), cpus[1:])
        os.sched_setaffinity(0, cpus[:1])
    out: dict[str, float] = {}

    def q(v: list[float], p: float) -> float:
        return v[min(len(v) - 1, int(len(v) * p))]

    quiet = oversleep(2.0)
    out |= {"quiet_p50_us": q(quiet, 0.5), "quiet_p99_us": q(quiet, 0.99)}
    for how in ("thread", "process"):
        w = backlog(root, f"gil-{how}", records)
        if how == "thread":
            runner: threading.Thread | multiprocessing.process.BaseProcess = threading.Thread(
                target=_forward_all, args=(server, root, f"gil-{how}", w.sealed_size)
            )
        else:
            runner = multiprocessing.get_context("fork").Process(
                target=_forward_all, args=(server, root, f"gil-{how}", w.sealed_size)
            )
        runner.start()
        time.sleep(0.5)  # connected, sending
        busy = oversleep(2.0)
        runner.join()
        out |= {f"{how}_p50_us": q(busy, 0.5), f"{how}_p99_us": q(busy, 0.99),
                f"{how}_max_us": busy[-1]}  # fmt: skip
    os.sched_setaffinity(0, cpus)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backlog", type=int, default=1_000_000)
    p.add_argument("--rate", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--phases", default="catch-up,steady,gil", help="which, comma-separated")
    args = p.parse_args()
    phases = args.phases.split(",")
    with tempfile.TemporaryDirectory(prefix="st-forward-") as tmp:
        root = Path(tmp)
        server = Server(root, None)
        server.start()
        try:
            runs = {
                "catch-up": lambda: catch_up(server, root, args.backlog),
                "steady": lambda: steady(server, root, args.rate, args.seconds),
                "gil": lambda: gil(server, root, min(args.backlog, 1_000_000)),
            }
            for name in phases:
                result = runs[name]()
                cells = ", ".join(f"{k} {v:,.2f}" for k, v in result.items())
                print(f"{name}: {cells}", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    threading.excepthook = lambda a: print(f"thread failed: {a.exc_value!r}", file=sys.stderr)
    main()
