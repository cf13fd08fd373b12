"""``sealtrail witness init|serve|status``: a C2SP tlog-witness of its own (docs/witness.md)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "witness",
        help="cosign a log's checkpoints (C2SP tlog-witness)",
        description="A witness cosigns a log's checkpoints once it has checked each one "
        "consistent with the last it cosigned (docs/witness.md).",
    )
    sub = parser.add_subparsers(dest="witness_command", metavar="COMMAND", required=True)
    init = sub.add_parser("init", help="create a witness directory: key, vkey, witness.toml")
    _dir(init)
    init.add_argument("--name", required=True, help="the witness's key name, e.g. w1.example")
    init.add_argument(
        "--listen", default="127.0.0.1:7380", help="HOST:PORT to serve on (default %(default)s)"
    )
    init.add_argument(
        "--log",
        action="append",
        default=[],
        metavar="VKEY",
        help="a log to witness, by its note verifier key (its name is the origin); repeatable",
    )
    init.set_defaults(func=run_init)
    serve = sub.add_parser("serve", help="serve add-checkpoint and the monitoring GET")
    _dir(serve)
    serve.add_argument("--listen", help="HOST:PORT instead of witness.toml's (port 0: any)")
    serve.set_defaults(func=run_serve)
    status = sub.add_parser("status", help="what this witness cosigned, and conflicts kept")
    _dir(status)
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.set_defaults(func=run_status)


def _dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", required=True, type=Path, help="the witness directory")


def run_init(args: argparse.Namespace) -> int:
    from agent.c2sp.keys import NoteError
    from agent.witness import config
    from agent.witness.errors import WitnessError

    try:
        cfg = config.init(args.dir, args.name, args.listen, args.log)
    except NoteError as exc:
        raise WitnessError(f"witness init: {exc}") from None
    print((args.dir / config.VKEY).read_text().strip())
    print(f"witness {cfg.name} created in {args.dir}; logs: {', '.join(cfg.logs) or 'none'}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from agent.witness import config
    from agent.witness.server import serve

    cfg = config.load(args.dir)
    if args.listen:
        cfg = dataclasses.replace(cfg, listen=args.listen)

    def ready(address: tuple[str, int]) -> None:
        print(f"witness {cfg.name} serving on {address[0]}:{address[1]}", flush=True)

    asyncio.run(serve(cfg, ready=ready))
    return 0


def run_status(args: argparse.Namespace) -> int:
    from agent.witness import config
    from agent.witness.state import WitnessState

    cfg = config.load(args.dir)
    state = WitnessState(cfg.path(cfg.state), cfg.path(cfg.highwater))
    try:
        logs = {c.origin: c for c in state.logs()}
        conflicts = state.conflicts()
    finally:
        state.close()
    rows: list[dict[str, Any]] = []
    for origin in sorted(set(cfg.logs) | set(logs)):
        c = logs.get(origin)
        rows.append(
            {
                "origin": origin,
                "configured": origin in cfg.logs,
                "size": None if c is None else c.size,
                "cosigned_at": None if c is None else c.updated_ns // 1_000_000_000,
                "conflicts": sum(1 for k in conflicts if k.origin == origin),
            }
        )
    if args.json:
        print(json.dumps({"name": cfg.name, "logs": rows}, indent=2))
        return 1 if conflicts else 0
    print(f"witness {cfg.name}")
    for r in rows:
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r["cosigned_at"]))
            if r["cosigned_at"]
            else "never"
        )
        size = "-" if r["size"] is None else r["size"]
        print(f"  {r['origin']}: size {size}, cosigned {when}, conflicts {r['conflicts']}")
    return 1 if conflicts else 0
