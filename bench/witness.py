"""Witness benchmark: add-checkpoint requests per second of one ``sealtrail witness serve``
pinned to one core, and the time a fleet checkpoint takes to reach a 2-of-3 quorum of three
loopback witnesses (``agent.witness.client.Cosigners``, what the collector's publisher calls).

    python bench/witness.py [--logs 16] [--requests 20000] [--rounds 500]

Rate: the witness process is pinned to CPU 0 (``os.sched_setaffinity`` of the child), the
client (aiohttp, keep-alive, one connection per log) to the other CPUs; ``--logs`` logs each
send a chain of checkpoints growing by one leaf with its consistency proof, one request in
flight per log (a log waits for its cosignature before it sends the next, as tlog-witness
requires). Every 200 is committed (SQLite synchronous=FULL) and in the high-water file
(fdatasync) before it is sent. The bodies are made before the clock starts.

Quorum: ``--rounds`` successive fleet checkpoints (one new leaf each) sent to three witnesses
at once; the time is from the call until the quorum is met (the third answer is not waited for).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from agent.c2sp.checkpoint import Checkpoint
from agent.c2sp.keys import Signer
from agent.c2sp.note import Note, Signature
from agent.c2sp.policy import Policy
from agent.journal import merkle
from agent.journal.protect import clear_all
from agent.witness.client import Cosigners
from agent.witness.protocol import AddCheckpoint

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Witness:
    def __init__(self, directory: Path, name: str, logs: list[Signer], cpu: int | None) -> None:
        self.dir = directory
        self.port = _free_port()
        argv = [sys.executable, "-m", "agent.cli", "witness", "init", "--dir", str(directory)]
        argv += ["--name", name]
        for log in logs:
            argv += ["--log", log.verifier.to_text()]
        subprocess.run(argv, check=True, cwd=ROOT, capture_output=True)
        self.vkey = (directory / "witness.vkey").read_text().strip()
        serve = [sys.executable, "-m", "agent.cli", "witness", "serve", "--dir", str(directory)]
        serve += ["--listen", f"127.0.0.1:{self.port}"]
        pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
        self.proc = subprocess.Popen(
            serve, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=pin,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "serving on" not in line:
            raise SystemExit(f"witness did not start: {line}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU time the witness process used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)
        clear_all(self.dir)


def _chain(log: Signer, count: int) -> list[bytes]:
    """Request bodies 0->1, 1->2, ... for one log."""
    leaves: list[bytes] = []
    bodies = []
    for size in range(1, count + 1):
        leaves.append(merkle.leaf_hash(b"%s %d" % (log.name.encode(), size)))
        cp = Checkpoint(log.name, size, merkle.subtree_root(leaves))
        text = cp.text()
        note = Note(text, (Signature(log.name, log.key_id, log.sign(text)),))
        old = size - 1
        proof = merkle.consistency_proof(old, leaves) if old else []
        bodies.append(AddCheckpoint(old, tuple(proof), note).to_bytes())
    return bodies


async def _rate(url: str, chains: list[list[bytes]]) -> tuple[int, float]:
    ok = 0

    async def one(session: aiohttp.ClientSession, bodies: list[bytes]) -> None:
        nonlocal ok
        for body in bodies:
            async with session.post(url + "/add-checkpoint", data=body) as resp:
                await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"witness answered {resp.status}")
                ok += 1

    connector = aiohttp.TCPConnector(limit=len(chains))
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(one(session, bodies) for bodies in chains))
        return ok, time.perf_counter() - start


async def _quorum(policy: Policy, rounds: int, log: Signer) -> list[float]:
    leaves: list[bytes] = []
    times = []
    async with aiohttp.ClientSession() as session:
        client = Cosigners(policy, session)
        for size in range(1, rounds + 1):
            leaves.append(merkle.leaf_hash(b"entry %d" % size))
            cp = Checkpoint(log.name, size, merkle.subtree_root(leaves))
            text = cp.text()
            note = Note(text, (Signature(log.name, log.key_id, log.sign(text)),))
            start = time.perf_counter()
            out = await client.cosign(
                note, cp, lambda old: merkle.consistency_proof(old, leaves) if old else []
            )
            elapsed = time.perf_counter() - start
            if not policy.satisfied(out.cosignatures):
                raise SystemExit(f"round {size}: no quorum: {out.failures}")
            times.append(elapsed)
            await asyncio.sleep(0.002)  # let a third answer land before the next round
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--logs", type=int, default=16)
    ap.add_argument("--requests", type=int, default=20000, help="add-checkpoint calls in all")
    ap.add_argument("--rounds", type=int, default=500, help="fleet checkpoints for the quorum")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    client_cpus = set(cpus[1:]) or set(cpus)
    with tempfile.TemporaryDirectory(prefix="sealtrail-bench-witness-", dir="/var/tmp") as tmp:
        logs = [Signer.generate(f"bench.example/log{i}") for i in range(args.logs)]
        per_log = args.requests // args.logs
        chains = [_chain(log, per_log) for log in logs]
        w = Witness(Path(tmp) / "rate", "rate.example", logs, cpus[0])
        os.sched_setaffinity(0, client_cpus)
        try:
            cpu0 = w.cpu_seconds()
            ok, seconds = asyncio.run(_rate(w.url, chains))
            cpu = w.cpu_seconds() - cpu0
        finally:
            w.stop()
        print(
            f"add-checkpoint: {ok} cosigned in {seconds:.2f} s = {ok / seconds:,.0f}/s "
            f"(witness pinned to CPU {cpus[0]}, {args.logs} logs, each request durable)"
        )
        print(
            f"  witness CPU {cpu:.2f} s: {cpu / ok * 1e6:.0f} us per request = "
            f"{ok / cpu:,.0f} requests per CPU-second; load average {os.getloadavg()[0]:.1f}"
        )

        os.sched_setaffinity(0, set(cpus))
        fleet = Signer.generate("bench.example/fleet")
        ws = [Witness(Path(tmp) / f"q{i}", f"q{i}.example", [fleet], None) for i in range(3)]
        try:
            policy = Policy.parse(
                f"log {fleet.verifier.to_text()}\n"
                + "".join(f"witness W{i} {w.vkey} {w.url}\n" for i, w in enumerate(ws))
                + "group g 2 W0 W1 W2\nquorum g\n"
            )
            times = asyncio.run(_quorum(policy, args.rounds, fleet))
        finally:
            for w in ws:
                w.stop()
        ms = sorted(t * 1000 for t in times)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        print(
            f"2-of-3 quorum over {len(ms)} fleet checkpoints: p50 {statistics.median(ms):.2f} "
            f"ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
