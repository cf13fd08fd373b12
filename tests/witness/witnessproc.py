"""Real witnesses for tests: ``sealtrail witness init`` and ``serve`` as processes on loopback,
and a log that signs checkpoints over a real RFC 9162 tree (the journal's Merkle code)."""

from __future__ import annotations

import contextlib
import http.client
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.c2sp.checkpoint import Checkpoint
from agent.c2sp.keys import Signer, VerifierKey
from agent.c2sp.note import Note, Signature
from agent.journal import merkle
from agent.journal.protect import clear_all
from agent.witness.protocol import AddCheckpoint
from tests.agentproc import end_process
from tests.collector.server_proc import ROOT, free_port, sealtrail


@dataclass
class Log:
    """A log: its key and leaves; ``note(size)`` is its signed checkpoint at that size."""

    signer: Signer
    leaves: list[bytes] = field(default_factory=list)

    @classmethod
    def new(cls, origin: str = "example.com/log", n: int = 0) -> Log:
        log = cls(Signer.generate(origin))
        log.grow(n)
        return log

    @property
    def origin(self) -> str:
        return self.signer.name

    def grow(self, n: int) -> None:
        start = len(self.leaves)
        self.leaves += [merkle.leaf_hash(b"entry %d" % i) for i in range(start, start + n)]

    def checkpoint(self, size: int) -> Checkpoint:
        return Checkpoint(self.origin, size, merkle.subtree_root(self.leaves[:size]))

    def note(self, size: int, root: bytes | None = None) -> Note:
        cp = self.checkpoint(size)
        if root is not None:
            cp = Checkpoint(cp.origin, size, root)
        text = cp.text()
        return Note(
            text, (Signature(self.signer.name, self.signer.key_id, self.signer.sign(text)),)
        )

    def request(self, old: int, size: int, root: bytes | None = None) -> bytes:
        proof = merkle.consistency_proof(old, self.leaves[:size]) if old else []
        return AddCheckpoint(old, tuple(proof), self.note(size, root)).to_bytes()


class WitnessProc:
    def __init__(self, directory: Path, name: str, logs: list[Log | str]) -> None:
        self.dir = directory
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.log = directory.parent / f"{directory.name}.log"
        if not (directory / "witness.toml").exists():
            argv = ["witness", "init", "--dir", str(directory), "--name", name]
            for log in logs:
                argv += ["--log", log if isinstance(log, str) else log.signer.verifier.to_text()]
            sealtrail(*argv)
        self.vkey = VerifierKey.from_text((directory / "witness.vkey").read_text())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WitnessProc:
        assert self.proc is None
        argv = [sys.executable, "-m", "agent.cli", "witness", "serve", "--dir", str(self.dir)]
        argv += ["--listen", f"127.0.0.1:{self.port}"]
        offset = self.log.stat().st_size if self.log.exists() else 0
        out = open(self.log, "a")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen(argv, stdout=out, stderr=out, text=True, cwd=ROOT)
        out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"witness exited: {self.log.read_text()[offset:]}")
            if "serving on" in self.log.read_text()[offset:]:
                return self
            time.sleep(0.05)
        raise AssertionError(f"witness did not listen in 60 s: {self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        with contextlib.suppress(subprocess.TimeoutExpired):
            end_process(proc, sig, 30)
        return proc.returncode

    def cleanup(self) -> None:
        self.stop()
        if self.dir.exists():
            clear_all(self.dir)  # the high-water file is append-only

    def post(self, body: bytes) -> tuple[int, str, bytes]:
        return self.http("POST", "/add-checkpoint", body)

    def http(self, method: str, path: str, body: bytes | None = None) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type", ""), resp.read()
        finally:
            conn.close()
