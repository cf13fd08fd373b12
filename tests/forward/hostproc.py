"""A host for the end-to-end tests, as a process of its own: the real service loop
(``agent.daemon.Agent``) with the real forwarder over real mutual TLS, fed by a synthetic event
stream instead of the kernel (no root, no BPF), so a test can SIGTERM it, kill -9 it and
restart it on the same journal.

    python -m tests.forward.hostproc --journal J --keys K --run-dir R --host NAME \\
        --forward URL --forward-tls BUNDLE [--rate EVENTS/S] [--events N] [...]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from pathlib import Path

from agent.daemon import Agent, AgentConfig, Factories
from agent.forward.forwarder import ForwardConfig
from agent.forward.pacing import Pacing
from agent.journal.writer import JournalWriter
from agent.policy.mechanisms import HostCapabilities
from tests.unit.daemon.fakes import RecordingEnforcer, ScriptedStream
from tests.unit.events.records import connect_record, exec_record

CAPS = HostCapabilities(lsm=False, cgroup_sock=True, fanotify=True, send_signal=True)
POLLS_PER_S = 50


class SyntheticStream(ScriptedStream):
    """``rate`` events/s (exec and connect, alternating), ``events`` in all (0: no end); each
    poll waits as the ring buffer's poll would."""

    def __init__(self, rate: int, events: int) -> None:
        super().__init__([])
        self.per_poll = max(1, rate // POLLS_PER_S)
        self.left = events if events else None
        self._pids = itertools.count(1000)

    def _next(self) -> list[bytes]:
        time.sleep(1 / POLLS_PER_S)
        n = self.per_poll if self.left is None else min(self.left, self.per_poll)
        if self.left is not None:
            self.left -= n
        out = []
        for _ in range(n):
            pid = next(self._pids)
            out.append(exec_record(pid, b"/usr/bin/true", b"true", b"%d" % pid))
            if pid % 2:
                out.append(connect_record(pid, 443))
        return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--journal", type=Path, required=True)
    p.add_argument("--keys", type=Path, required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--forward", required=True)
    p.add_argument("--forward-tls", type=Path, required=True)
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--events", type=int, default=0)
    p.add_argument("--forward-wait", type=float, default=5.0)
    p.add_argument("--forward-rate", type=int, default=200_000)
    p.add_argument("--backoff-cap", type=float, default=2.0)
    p.add_argument("--heartbeat", type=float, default=10.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    pacing = Pacing(
        rate=args.forward_rate,
        stop_wait=args.forward_wait,
        backoff_base=min(0.2, args.backoff_cap),
        backoff_cap=args.backoff_cap,
    )
    config = AgentConfig(
        journal_dir=args.journal,
        keys_dir=args.keys,
        policies_dir=args.journal.parent / "no-policies",  # observe only
        run_dir=args.run_dir,
        heartbeat=args.heartbeat,
        forward=ForwardConfig(args.forward, args.forward_tls, pacing),
    )

    def open_writer(cfg: AgentConfig) -> JournalWriter:
        return JournalWriter.open(cfg.journal_dir, cfg.keys_dir, host=args.host, boot_id="boot-1",
                                  heartbeat=cfg.heartbeat, protect_files=False)  # fmt: skip

    stream = SyntheticStream(args.rate, args.events)
    make = Factories(
        open_stream=lambda _config: stream,
        open_writer=open_writer,
        open_enforcer=lambda _s, _c, _g, _p: RecordingEnforcer(args.journal),
        capabilities=lambda: CAPS,
    )
    return Agent(config, make).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
