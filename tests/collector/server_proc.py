"""A real collector for tests: ``sealtrail collector init/enroll/serve`` as real processes on a
loopback port, and a client speaking the protocol over real mutual TLS (``http.client``)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.collector import layout
from agent.collector.protocol import HEAD_PATH, INGEST_PATH, LINES_TYPE, START_HEADER

ROOT = Path(__file__).resolve().parents[2]


def sealtrail(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"sealtrail {' '.join(argv)}: {proc.stderr}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Answer:
    status: int
    doc: Any
    headers: dict[str, str]


class Client:
    """One host's side of the protocol, from its enrollment bundle."""

    def __init__(self, bundle: Path | None, ca: Path, port: int) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(ca)
        if bundle is not None:
            ctx.load_cert_chain(bundle / layout.CLIENT_CERT, bundle / layout.CLIENT_KEY)
        self.ctx = ctx
        self.port = port

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Answer:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.ctx, timeout=timeout
        )
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            try:
                doc = json.loads(raw) if raw else None
            except ValueError:
                doc = raw.decode(errors="replace")
            return Answer(resp.status, doc, {k.lower(): v for k, v in resp.getheaders()})
        finally:
            conn.close()

    def head(self) -> Answer:
        return self.request("GET", HEAD_PATH)

    def ingest(self, start: int, lines: list[bytes], **extra: str) -> Answer:
        body = b"".join(line + b"\n" for line in lines)
        headers = {"Content-Type": LINES_TYPE, START_HEADER: str(start), **extra}
        return self.request("POST", INGEST_PATH, body, headers)


class Collector:
    """A collector directory and, while ``start``ed, its ``serve`` process."""

    def __init__(self, directory: Path, *, store: str | None = None, name: str = "coll") -> None:
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.log = directory.parent / f"{directory.name}.log"
        if not (directory / layout.CONFIG).exists():
            argv = ["collector", "init", "--dir", str(directory), "--name", name]
            argv += ["--listen", f"127.0.0.1:{self.port}"]
            if store is not None:
                argv += ["--store", store]
            sealtrail(*argv)
        self.store = store

    @property
    def ca(self) -> Path:
        return self.dir / layout.CA_CERT

    def enroll(self, host: str, journal_pub: Path, out: Path) -> Path:
        argv = ["collector", "enroll", "--dir", str(self.dir), "--host", host]
        argv += ["--journal-key", str(journal_pub), "--out", str(out)]
        if self.store is not None:
            argv += ["--store", self.store]
        sealtrail(*argv)
        return out

    def start(self, *, port: int | None = None) -> Collector:
        assert self.proc is None
        self.port = port or self.port
        argv = [sys.executable, "-m", "agent.cli", "collector", "serve", "--dir", str(self.dir)]
        argv += ["--listen", f"127.0.0.1:{self.port}"]
        if self.store is not None:
            argv += ["--store", self.store]
        log = open(self.log, "a")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, text=True, cwd=ROOT)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"collector did not listen in 60 s: {self.log.read_text()}")

    def client(self, bundle: Path | None) -> Client:
        return Client(bundle, self.ca, self.port)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            return proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
