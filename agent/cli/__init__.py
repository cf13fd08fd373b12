"""``sealtrail`` command line: a thin argparse layer over the library.

Each subcommand lives in its own module exposing ``register(subparsers)``; the module sets
``func`` on its parser. This function is the only place that turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from agent import __version__
from agent.errors import SealtrailError
from agent.logsetup import setup_logging

# Modules under agent.cli that provide subcommands, in --help order.
_COMMANDS = (
    "agent",
    "status",
    "watch",
    "doctor",
    "keys",
    "journal",
    "policy",
    "collector",
    "report",
    "witness",
    "verify_bundle",
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``only``: register just that command (its module alone is imported: a
    query must not pay for importing the agent, the report's plotting library, ...)."""
    parser = argparse.ArgumentParser(
        prog="sealtrail",
        description="Linux host agent: eBPF observation, enforcement and a tamper-evident journal.",
    )
    parser.add_argument("--version", action="version", version=f"sealtrail {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (only,) if only in _COMMANDS else _COMMANDS:
        try:
            module = importlib.import_module(f"agent.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"agent.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(words)
    # the agent is a daemon: what it does (policy loaded, key created) is INFO and shown; a
    # one-shot command shows warnings and errors unless asked (-v)
    base = logging.INFO if args.command == "agent" else logging.WARNING
    level = max(logging.DEBUG, base - 10 * min(args.verbose, 2))
    setup_logging(level)  # the journal under systemd, stderr otherwise
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        rc: int = args.func(args)
    except SealtrailError as exc:
        print(f"sealtrail: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `sealtrail watch | head` is normal use; do not print a traceback.
        sys.stderr.close()
        return 0
    return rc


if __name__ == "__main__":
    sys.exit(main())
