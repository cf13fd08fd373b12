"""``sealtrail watch``: stream the host's activity live, one line per event, until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any, TextIO

from agent.errors import UsageError
from agent.events import model
from agent.events.stream import DEFAULT_RINGBUF_BYTES, EventStream, StreamConfig, StreamItem

EXE_WIDTH = 24


def register(sub: Any) -> None:
    p = sub.add_parser(
        "watch",
        help="stream live process, file and network events",
        description="Stream what happens on this host, one line per event, until Ctrl-C.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line (for jq)")
    p.add_argument(
        "--only",
        metavar="KINDS",
        help=f"comma-separated event kinds to stream (default: all of {','.join(model.KINDS)})",
    )
    p.add_argument(
        "--path-prefix",
        metavar="PATH",
        action="append",
        default=[],
        help="report opens only at or below PATH (filtered in the kernel); repeatable",
    )
    add_ringbuf_size(p)
    p.set_defaults(func=run)


def add_ringbuf_size(
    p: argparse.ArgumentParser, default: int | None = DEFAULT_RINGBUF_BYTES
) -> None:
    """--ringbuf-size, shared by every command that streams events (watch, agent; the agent's
    default is None, so that a value in its configuration file is not masked)."""
    p.add_argument(
        "--ringbuf-size",
        type=int,
        default=default,
        metavar="BYTES",
        help=f"kernel ring buffer size, a power of two (default {DEFAULT_RINGBUF_BYTES})",
    )


def parse_kinds(text: str | None) -> frozenset[str]:
    if not text:
        return frozenset(model.KINDS)
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    unknown = kinds - set(model.KINDS)
    if unknown:
        raise UsageError(
            f"--only: unknown kind(s) {', '.join(sorted(unknown))}; known: {', '.join(model.KINDS)}"
        )
    return kinds


def _clock(ts_ns: int) -> str:
    t = time.localtime(ts_ns // 1_000_000_000)
    return time.strftime("%H:%M:%S", t) + f".{(ts_ns // 1_000_000) % 1000:03d}"


_CONTROL = {c: f"\\x{c:02x}" for c in range(32)} | {0x7F: "\\x7f", ord("\\"): "\\\\"}


def printable(text: str) -> str:
    """One event is one line: escape newlines and other control characters."""
    return text.translate(_CONTROL)


def format_human(item: StreamItem) -> str:
    if isinstance(item, model.LossEvent):
        parts = ", ".join(f"{k} {n}" for k, n in sorted(item.by_kind.items()))
        return (
            f"{_clock(item.ts_ns)}  !! LOST {item.count} events ({parts}) "
            f"since {_clock(item.since_ns)}: kernel ring buffer was full"
        )
    exe = printable(item.exe or f"[{item.comm}]")
    if len(exe) > EXE_WIDTH:
        exe = "…" + exe[-(EXE_WIDTH - 1) :]
    return (
        f"{_clock(item.ts_ns)} {item.pid:>7} {item.uid:>5}  {exe:<{EXE_WIDTH}}  "
        f"{item.kind:<7}  {printable(item.object_text())}"
    )


def format_json(item: StreamItem) -> str:
    fields = item.to_dict()
    model.escape_undecodable(fields)  # bytes that are not UTF-8 as \xNN, as in the journal
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


def run(args: argparse.Namespace) -> int:
    config = StreamConfig(
        kinds=parse_kinds(args.only),
        path_prefixes=tuple(args.path_prefix),
        ringbuf_bytes=args.ringbuf_size,
    )
    fmt = format_json if args.json else format_human
    out: TextIO = sys.stdout
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    with EventStream(config) as stream:
        if not args.json:
            print(
                f"{'TIME':<12} {'PID':>7} {'UID':>5}  {'EXE':<{EXE_WIDTH}}  {'WHAT':<7}  OBJECT",
                file=out,
                flush=True,
            )
        try:
            while not stopping:
                items = stream.poll(100)
                for item in items:
                    out.write(fmt(item) + "\n")
                if items:
                    out.flush()
        except KeyboardInterrupt:
            pass
        # what was already in the ring buffer, and any last loss, is still reported
        for item in stream.drain():
            out.write(fmt(item) + "\n")
        out.flush()
    return 0
