"""A loopback collector for the throughput rows: `sealtrail collector init / enroll / serve`
as a user runs them (the CLI, so the snapshot's code), in a directory of the run's own; the
agent forwards to it with ``--forward`` over mutual TLS."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from benchlib import closed_tcp_port

from tests.agentproc import end_process

from .agent import SEALTRAIL


def cli(*argv: str) -> None:
    out = subprocess.run([str(SEALTRAIL), *argv], capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(f"sealtrail {' '.join(argv)}: {out.stderr[-2000:]}")


class Collector:
    """``with Collector(dir, host, journal_pub) as c:`` serves on ``c.addr``:``c.port``
    (127.0.0.1, or ``addr`` inside the network namespace ``netns``) with ``c.bundle`` enrolled
    for ``host``; stopped with SIGTERM (by its pid) on exit."""

    def __init__(
        self, directory: Path, host: str, journal_pub: Path, addr: str = "127.0.0.1",
        netns: str | None = None,
    ) -> None:  # fmt: skip
        self.dir, self.port, self.addr, self.netns = directory, closed_tcp_port(), addr, netns
        self.bundle = directory.parent / "bundle"
        san = [] if addr == "127.0.0.1" else ["--san", addr]  # else the default names
        cli("collector", "init", "--dir", str(directory), "--name", "bench-collector",
            "--listen", f"{addr}:{self.port}", *san)  # fmt: skip
        cli("collector", "enroll", "--dir", str(directory), "--host", host, "--journal-key",
            str(journal_pub), "--out", str(self.bundle))  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Collector:
        with (self.dir.parent / "collector.log").open("wb") as log:
            netns = ["ip", "netns", "exec", self.netns] if self.netns else []
            self.proc = subprocess.Popen([*netns, str(SEALTRAIL), "collector", "serve", "--dir",
                                          str(self.dir)], stdout=log, stderr=log)  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection((self.addr, self.port), timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError("collector did not start") from None
                time.sleep(0.05)

    def held(self, host: str) -> int:
        """Records the collector accepted for ``host`` (its head's size in the store)."""
        from agent.collector.store import open_store

        with open_store(str(self.dir / "store.sqlite")) as store:
            return int(store.head(host).size)

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            end_process(self.proc, signal.SIGTERM, 30)
