"""``sealtrail report``: a forensic and compliance report (HTML) of a journal or of hosts in a
collector's store, built only from records that verified (docs/report.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from agent.errors import UsageError
from agent.journal.keys import PublicKey
from agent.journal.query import RELATIVE_TIME, parse_time
from agent.report import collector_report, journal_report


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="forensic and compliance report (HTML) built only from verified records",
        description="Verify a journal (or hosts in a collector's store) and write one "
        "self-contained HTML page from the records that verified: what verified and what did "
        "not, timelines, denials by rule, policy changes, loss, gaps and restarts, and what "
        "the journal proves by audit-log control (docs/report.md).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--journal", type=Path, metavar="DIR", help="a journal directory")
    src.add_argument("--collector", type=Path, metavar="DIR", help="a collector directory")
    p.add_argument(
        "--key",
        type=Path,
        metavar="PUB",
        help="the host's genesis public key (journal.pub), with --journal",
    )
    p.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="with --collector: this host (repeat for more; default: every enrolled host)",
    )
    p._negative_number_matcher = RELATIVE_TIME  # --since -1h, as journal query takes it
    p.add_argument("--since", metavar="TIME", help="records at or after TIME (e.g. -1h)")
    p.add_argument("--until", metavar="TIME", help="records at or before TIME")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                   help="the HTML file to write")  # fmt: skip
    p.set_defaults(func=run)


def _time(flag: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise UsageError(f"{flag} {text!r}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    since, until = _time("--since", args.since), _time("--until", args.until)
    if args.journal is not None:
        if args.key is None:
            raise UsageError("--journal needs --key PUB, the host's genesis public key")
        if args.host:
            raise UsageError("--host goes with --collector")
        genesis = PublicKey.load(args.key)
        page, errors = journal_report(args.journal, genesis, since=since, until=until)
    else:
        if args.key is not None:
            raise UsageError("--key goes with --journal (the collector holds enrolled keys)")
        page, errors = collector_report(args.collector, args.host, since=since, until=until)
    tmp = args.output.with_name(args.output.name + ".tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, args.output)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    if errors:
        print(f"report written to {args.output}; verification found {errors} errors: the "
              "records they touch are listed there and left out")  # fmt: skip
        return 1
    print(f"report written to {args.output}")
    return 0
