"""``sealtrail agent``: run the host agent in the foreground (systemd runs it as a service)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent import paths
from agent.cli.watch import add_ringbuf_size, parse_kinds
from agent.daemon import DEFAULT_RECORD_KINDS, Agent, AgentConfig


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
        help=f"pid and status file (default {paths.DEFAULT_RUN_DIR})",
    )
    p.set_defaults(func=run)


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
    )
    return Agent(config).run()
