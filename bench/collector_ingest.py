"""Collector ingest + verify throughput: one host in process, many hosts through the real server.

    python bench/collector_ingest.py [--records 200000] [--hosts 50] [--per-host 20000]
                                     [--catch-up 1000000] [--store URL] [--servers N]

1. one host, in process: ``Ingest.ingest`` (the journal's verifier resumed per batch, then the
   store's durable append) on batches of ``--batch`` records: records/s.
2. ``--hosts`` hosts at once through a real ``collector serve`` process over mutual TLS on
   loopback (one client thread per host, each with its own enrolled certificate): aggregate
   records/s, from the first request to the last receipt.
3. catch-up: one host's backlog of ``--catch-up`` records through the server: seconds.

``--servers N`` runs N ``collector serve`` processes on the one store (PostgreSQL: several
collectors serve one fleet behind a load balancer) and spreads the hosts over them round-robin.

Numbers only (no assertions); the machine is shared, so run it more than once.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.collector import layout  # noqa: E402
from agent.collector.ingest import Accepted, Ingest  # noqa: E402
from agent.collector.protocol import INGEST_PATH, LINES_TYPE, START_HEADER  # noqa: E402
from agent.collector.provision import enroll_host, init_collector  # noqa: E402
from agent.collector.store import open_store  # noqa: E402
from agent.journal.keys import KeyStore, SigningKey  # noqa: E402
from agent.journal.segments import iter_lines  # noqa: E402
from agent.journal.writer import JournalWriter  # noqa: E402


def journal(root: Path, host: str, records: int) -> tuple[Path, list[bytes]]:
    """A real journal of ``records`` exec events sealed every 1,000, as the agent writes."""
    keys = root / f"{host}.keys"
    w = JournalWriter.open(
        root / f"{host}.journal",
        keys,
        host=host,
        boot_id="boot-1",
        protect_files=False,
        seal_every=1 << 30,
        seal_interval=3600.0,
    )
    w.append("start", {"version": "bench"})
    for i in range(records):
        w.append("event", {"kind": "exec", "pid": 1000 + i % 30000, "path": "/usr/bin/true"})
        if (i + 1) % 1000 == 0:
            w.flush_and_seal()
    w.close({"reason": "bench"})
    lines = [ln.data for ln in iter_lines(root / f"{host}.journal") if ln.complete]
    return keys / "journal.pub", lines


def in_process(root: Path, records: int, batch: int, store_url: str | None) -> None:
    _, lines = journal(root, "solo", records)
    store = open_store(store_url or str(root / "solo.sqlite"))
    genesis = KeyStore(root / "solo.keys").genesis()
    store.enroll("solo", "00" * 32, genesis.to_line(), time.time_ns())
    host = store.host("solo")
    assert host is not None
    ingest = Ingest(store, "bench", SigningKey.generate())
    started = time.perf_counter()
    pos = 0
    while pos < len(lines):  # as the forwarder does: from the size the collector holds
        body = b"".join(ln + b"\n" for ln in lines[pos : pos + batch])
        outcome = ingest.ingest(host, pos, body)
        assert isinstance(outcome, Accepted), outcome
        pos = outcome.size if outcome.size > pos else pos + batch
    took = time.perf_counter() - started
    store.close()
    print(
        f"one host, in process: {len(lines):,} records in {took:.2f} s = "
        f"{len(lines) / took:,.0f} records/s (batches of {batch})"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, root: Path, store_url: str | None, count: int = 1) -> None:
        self.dir = root / "collector"
        self.ports = [free_port() for _ in range(count)]
        self.port = self.ports[0]
        init_collector(self.dir, name="bench", listen=f"127.0.0.1:{self.port}", store=store_url)
        self.procs: list[subprocess.Popen[bytes]] = []

    def enroll(self, host: str, pub: Path) -> ssl.SSLContext:
        out = self.dir.parent / f"{host}.bundle"
        enroll_host(self.dir, host, str(pub), out)
        ctx = ssl.create_default_context(cafile=str(out / layout.CA_CERT))
        ctx.load_cert_chain(out / layout.CLIENT_CERT, out / layout.CLIENT_KEY)
        return ctx

    def start(self) -> None:
        log = open(self.dir.parent / "serve.log", "ab")  # noqa: SIM115
        for port in self.ports:
            argv = [sys.executable, "-m", "agent.cli", "collector", "serve", "--dir",
                    str(self.dir), "--listen", f"127.0.0.1:{port}"]  # fmt: skip
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=log, cwd=REPO))
        for port in self.ports:
            for _ in range(600):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    time.sleep(0.05)
            else:
                raise SystemExit("collector did not start")

    def stop(self) -> None:
        for proc in self.procs:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def push(port: int, ctx: ssl.SSLContext, lines: list[bytes], batch: int, errors: list[str]) -> None:
    """Send ``lines`` as the forwarder does: each batch from the size the collector holds."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=300)
    pos, width = 0, batch
    try:
        while pos < len(lines):
            body = b"".join(ln + b"\n" for ln in lines[pos : pos + width])
            conn.request(
                "POST", INGEST_PATH, body, {"Content-Type": LINES_TYPE, START_HEADER: str(pos)}
            )
            resp = conn.getresponse()
            data = resp.read()
            if resp.status == 503:
                time.sleep(float(resp.getheader("Retry-After") or 1))
                continue
            if resp.status != 200:
                errors.append(f"{resp.status} {data[:200]!r}")
                return
            size = json.loads(data)["size"]
            pos, width = (size, batch) if size > pos else (pos, width * 2)  # no seal: send more
    finally:
        conn.close()


def through_server(
    server: Server, work: dict[str, tuple[ssl.SSLContext, list[bytes]]], batch: int, what: str
) -> None:
    errors: list[str] = []
    records = sum(len(lines) for _, lines in work.values())
    threads = [
        threading.Thread(
            target=push, args=(server.ports[n % len(server.ports)], ctx, lines, batch, errors)
        )
        for n, (ctx, lines) in enumerate(work.values())
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - started
    if errors:
        print(f"{what}: errors: {errors[:3]}")
    print(f"{what}: {records:,} records in {took:.2f} s = {records / took:,.0f} records/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--hosts", type=int, default=50)
    p.add_argument("--per-host", type=int, default=20_000)
    p.add_argument("--catch-up", type=int, default=1_000_000)
    p.add_argument("--store", help="store URL (default: a new SQLite file)")
    p.add_argument("--servers", type=int, default=1, help="collector processes on the store")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="st-ingest-") as tmp:
        root = Path(tmp)
        in_process(root, args.records, args.batch, args.store)
        server = Server(root, args.store, args.servers)
        work: dict[str, tuple[ssl.SSLContext, list[bytes]]] = {}
        for n in range(args.hosts):
            host = f"h{n:03d}"
            pub, lines = journal(root, host, args.per_host)
            work[host] = (server.enroll(host, pub), lines)
        backlog = None
        if args.catch_up:
            pub, lines = journal(root, "backlog", args.catch_up)
            backlog = {"backlog": (server.enroll("backlog", pub), lines)}
        server.start()
        try:
            what = f"{args.hosts} hosts at once, through {args.servers} server process(es)"
            through_server(server, work, args.batch, what)
            if backlog:
                through_server(server, backlog, args.batch, "catch-up of one host's backlog")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
