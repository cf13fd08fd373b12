"""``sealtrail agent``: run the host agent in the foreground (systemd runs it as a service)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent import paths
from agent.cli.watch import add_ringbuf_size
from agent.config import FLAGS, load_settings
from agent.daemon import DEFAULT_RECORD_KINDS, Agent, AgentConfig
from agent.forward.pacing import DEFAULT_RATE, DEFAULT_STOP_WAIT
from agent.journal.writer import DEFAULT_HEARTBEAT
from agent.kernel.pins import DEFAULT_PIN_DIR, unpin


def register(sub: Any) -> None:
    p = sub.add_parser(
        "agent",
        help="run the host agent: record events into the signed journal",
        description="Run the host agent in the foreground until SIGTERM/SIGINT; SIGHUP reloads. "
        f"The settings below have keys in {paths.DEFAULT_AGENT_CONFIG} (which: "
        "docs/configuration.md); an option given here wins over the file.",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"the configuration file (default {paths.DEFAULT_AGENT_CONFIG}, if it exists)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the configuration the file and these options give, as TOML, and exit",
    )
    p.add_argument(
        "--policies",
        type=Path,
        metavar="DIR",
        help=f"policy directory (default {paths.DEFAULT_POLICIES_DIR})",
    )
    p.add_argument(
        "--journal",
        type=Path,
        metavar="DIR",
        help=f"journal directory (default {paths.DEFAULT_JOURNAL_DIR})",
    )
    p.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help=f"signing keys directory (default {paths.DEFAULT_KEYS_DIR})",
    )
    p.add_argument(
        "--record",
        type=_kinds,
        metavar="KINDS",
        help="event kinds recorded besides what policies target "
        f"(default {','.join(sorted(DEFAULT_RECORD_KINDS))})",
    )
    add_ringbuf_size(p, default=None)
    p.add_argument(
        "--epoch-seconds",
        type=float,
        metavar="S",
        help="signing key lifetime before forward-secure rotation (default 3600)",
    )
    p.add_argument(
        "--cgroup",
        type=Path,
        metavar="DIR",
        help="cgroup v2 directory the network guard attaches to (default: the root)",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help=f"pid and status files (default {paths.DEFAULT_RUN_DIR})",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        metavar="S",
        help="seal the journal at least this often, even when idle: a collector flags a host "
        f"silent after 3 heartbeats without a seal (default {DEFAULT_HEARTBEAT:g})",
    )
    p.add_argument(
        "--pin-dir",
        type=Path,
        metavar="DIR",
        help="pin the in-kernel guard and the ring buffer there, so enforcement outlives the "
        f"agent and a restart takes it over (default {DEFAULT_PIN_DIR}; on the BPF filesystem)",
    )
    p.add_argument(
        "--no-pin",
        dest="pin",
        action="store_const",
        const=False,
        help="pin nothing: the in-kernel guard ends with the agent (pin = false)",
    )
    p.add_argument(
        "--unpin",
        action="store_true",
        help="detach and remove what agents pinned in --pin-dir, then exit (no agent may run)",
    )
    met = p.add_argument_group("Prometheus metrics (docs/metrics.md)")
    met.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464; a "
        "PORT alone: 127.0.0.1); default: off",
    )
    met.add_argument(
        "--metrics-remote",
        action="store_const",
        const=True,
        help="allow a non-loopback --metrics address (the endpoint has no authentication)",
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
        metavar="S",
        help="on a clean stop, forward up to the final seal for at most S seconds; the rest "
        f"goes with the next start (default {DEFAULT_STOP_WAIT:g})",
    )
    fwd.add_argument(
        "--forward-rate",
        type=int,
        metavar="N",
        help=f"catch-up limit in records/s, 0: none (default {DEFAULT_RATE})",
    )
    p.set_defaults(func=run)


def _kinds(text: str) -> frozenset[str]:
    """``--record exec,connect``; checked with the rest (``AgentSettings``)."""
    return frozenset(kind.strip() for kind in text.split(",") if kind.strip())


#: options whose argparse name is not their flag's (``--no-pin`` sets ``pin``)
_DEST = {"pin": "pin"}


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, by their agent.toml key (the others are None)."""
    values = {key: getattr(args, _DEST.get(key, flag[2:].replace("-", "_")))
              for key, flag in FLAGS.items()}  # fmt: skip
    return {key: value for key, value in values.items() if value is not None}


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config).override(_given(args))
    if args.unpin:
        if unpin(settings.pin_dir):
            print(f"unpinned {settings.pin_dir}: its programs are detached")
        else:
            print(f"{settings.pin_dir}: nothing pinned")
        return 0
    if args.print_config:
        print(settings.to_toml(), end="")
        return 0
    config = AgentConfig(
        journal_dir=settings.journal,
        keys_dir=settings.keys,
        policies_dir=settings.policies,
        record_kinds=settings.record,
        ringbuf_bytes=settings.ringbuf_size,
        epoch_seconds=settings.epoch_seconds,
        cgroup=settings.cgroup,
        run_dir=settings.run_dir,
        heartbeat=settings.heartbeat_seconds,
        forward=settings.forward.config(),
        pin_dir=settings.pin_dir if settings.pin else None,
        metrics=settings.metrics_address(),
    )
    return Agent(config).run()
