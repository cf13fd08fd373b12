"""``sealtrail agent``: run the host agent in the foreground (systemd runs it as a service)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent import paths
from agent.cli.watch import add_ringbuf_size, parse_kinds
from agent.daemon import DEFAULT_RECORD_KINDS, Agent, AgentConfig
from agent.errors import UsageError
from agent.forward.forwarder import ForwardConfig
from agent.forward.pacing import DEFAULT_RATE, DEFAULT_STOP_WAIT, Pacing
from agent.journal.writer import DEFAULT_HEARTBEAT


def register(sub: Any) -> None:
    p = sub.add_parser(
        "agent",
        help="run the host agent: record events into the signed journal",
        description="Run the host agent in the foreground until SIGTERM/SIGINT; SIGHUP reloads.",
    )
    p.add_argument(
        "--policies",
        type=Path,
        default=paths.DEFAULT_POLICIES_DIR,
        metavar="DIR",
        help=f"policy directory (default {paths.DEFAULT_POLICIES_DIR})",
    )
    p.add_argument(
        "--journal",
        type=Path,
        default=paths.DEFAULT_JOURNAL_DIR,
        metavar="DIR",
        help=f"journal directory (default {paths.DEFAULT_JOURNAL_DIR})",
    )
    p.add_argument(
        "--keys",
        type=Path,
        default=paths.DEFAULT_KEYS_DIR,
        metavar="DIR",
        help=f"signing keys directory (default {paths.DEFAULT_KEYS_DIR})",
    )
    p.add_argument(
        "--record",
        metavar="KINDS",
        help="event kinds recorded besides what policies target "
        f"(default {','.join(sorted(DEFAULT_RECORD_KINDS))})",
    )
    add_ringbuf_size(p)
    p.add_argument(
        "--epoch-seconds",
        type=float,
        default=3600.0,
        metavar="S",
        help="signing key lifetime before forward-secure rotation (default 3600)",
    )
    p.add_argument(
        "--cgroup",
        type=Path,
        default=None,
        metavar="DIR",
        help="cgroup v2 directory the network guard attaches to (default: the root)",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        default=paths.DEFAULT_RUN_DIR,
        metavar="DIR",
        help=f"pid and status files (default {paths.DEFAULT_RUN_DIR})",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULT_HEARTBEAT,
        metavar="S",
        help="seal the journal at least this often, even when idle: a collector flags a host "
        f"silent after 3 heartbeats without a seal (default {DEFAULT_HEARTBEAT:g})",
    )
    fwd = p.add_argument_group("forwarding to a collector")
    fwd.add_argument(
        "--forward", metavar="URL", help="ship the journal to the collector at https://HOST:PORT"
    )
    fwd.add_argument(
        "--forward-tls",
        type=Path,
        metavar="DIR",
        help="the host's enrollment bundle (`collector enroll --out`): client.crt, client.key, "
        "ca.crt, collector.pub",
    )
    fwd.add_argument(
        "--forward-wait",
        type=float,
        default=DEFAULT_STOP_WAIT,
        metavar="S",
        help="on a clean stop, forward up to the final seal for at most S seconds; the rest "
        f"goes with the next start (default {DEFAULT_STOP_WAIT:g})",
    )
    fwd.add_argument(
        "--forward-rate",
        type=int,
        default=DEFAULT_RATE,
        metavar="N",
        help=f"catch-up limit in records/s, 0: none (default {DEFAULT_RATE})",
    )
    p.set_defaults(func=run)


def forward_config(args: argparse.Namespace) -> ForwardConfig | None:
    if args.forward is None:
        if args.forward_tls is not None:
            raise UsageError("--forward-tls needs --forward URL")
        return None
    if args.forward_tls is None:
        raise UsageError("--forward needs --forward-tls DIR (the enrollment bundle)")
    pacing = Pacing(rate=args.forward_rate, stop_wait=args.forward_wait)
    return ForwardConfig(args.forward, args.forward_tls, pacing)


def run(args: argparse.Namespace) -> int:
    config = AgentConfig(
        journal_dir=args.journal,
        keys_dir=args.keys,
        policies_dir=args.policies,
        record_kinds=parse_kinds(args.record) if args.record else DEFAULT_RECORD_KINDS,
        ringbuf_bytes=args.ringbuf_size,
        epoch_seconds=args.epoch_seconds,
        cgroup=args.cgroup,
        run_dir=args.run_dir,
        heartbeat=args.heartbeat,
        forward=forward_config(args),
    )
    if not config.heartbeat > 0:
        raise UsageError(f"--heartbeat must be a positive number of seconds, not {args.heartbeat}")
    return Agent(config).run()
