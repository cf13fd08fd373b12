"""``sealtrail journal``: read, verify and prove the tamper-evident journal.

tail          the latest records, aligned (colour on a TTY); -f follows across segments
query         every record the filters keep, oldest first (docs/query.md)
export        the same as a file of records: --format ocsf (OCSF 1.5 events) or json
verify        hash, chain, seals, key rotations, Merkle roots, gaplessness, the agent's stop at
              the end (--strict: required); exit 0 only if all hold
checkpoint    print the latest signed checkpoint (keep it: `verify --against` it later)
prove SEQ     inclusion proof of one record against the latest checkpoint
prove --consistency-from CHECKPOINT
              consistency proof: the latest checkpoint extends one exported earlier
verify-proof  check either proof with the public key alone
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from agent import paths
from agent.errors import FormatError, JournalError, KeyStoreError, UsageError
from agent.journal import ocsf
from agent.journal.canonical import load_json
from agent.journal.checkpoint import (
    CONSISTENCY_FORMAT,
    ConsistencyProof,
    InclusionProof,
    SignedCheckpoint,
)
from agent.journal.keys import PublicKey
from agent.journal.query import (
    RELATIVE_TIME,
    Filter,
    Match,
    Scan,
    end_position,
    follow,
    last,
    query,
    stored_lines,
    user_name,
)
from agent.journal.reader import latest_checkpoint, prove, prove_consistency
from agent.journal.record import Record
from agent.journal.segments import SegmentNumbering, journal_chunks, list_segments
from agent.journal.verify import Finding, Verifier

_DEFAULT_KEY = paths.DEFAULT_KEYS_DIR / paths.PUBLIC_KEY_NAME
_PROGRESS_MIN_BYTES = 8 << 20  # below this a verify run takes well under a second
_HIDDEN = frozenset({"seq", "ts", "host", "boot_id", "type", "prev", "sig", "new_key"})
_COLOURS = {
    "deny": "31",
    "kill": "1;31",
    "would_deny": "33",
    "would_kill": "33",
    "audit": "36",
    "allow": "32",
}
_USER_FIELDS = frozenset({"uid", "auid"})
_TYPE_COLOURS = {"loss": "1;33", "recovery": "1;33", "policy_rejected": "31", "seal": "2"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "journal",
        help="read, verify and prove the tamper-evident journal",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="journal_command", metavar="COMMAND", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "--journal",
            type=Path,
            default=paths.DEFAULT_JOURNAL_DIR,
            metavar="DIR",
            help=f"journal directory (default {paths.DEFAULT_JOURNAL_DIR})",
        )
        return p

    def add_key(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--key",
            type=Path,
            default=_DEFAULT_KEY,
            metavar="PUB",
            help=f"the host's genesis public key (default {_DEFAULT_KEY})",
        )

    tail = add("tail", "print the latest records (with -f: and then new ones)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    tail.add_argument(
        "-n",
        "--lines",
        type=int,
        metavar="N",
        help="how many records (default 10; all with --since)",
    )
    add_filters(tail)
    add_output(tail)
    tail.set_defaults(func=run_tail)

    query = add("query", "print every record the filters keep, oldest first")
    query.add_argument("-n", "--lines", type=int, metavar="N", help="at most N records")
    add_filters(query)
    add_output(query)
    query.set_defaults(func=run_query)

    export = add("export", "write the records the filters keep as OCSF events or JSON lines")
    export.add_argument(
        "--format",
        choices=("ocsf", "json"),
        default="ocsf",
        help="ocsf: one OCSF 1.5 event per line (records with no OCSF class are left out); "
        "json: the records as stored (default ocsf)",
    )
    add_filters(export)
    export.set_defaults(func=run_export)

    verify = add("verify", "verify the whole journal; exit 0 only if everything holds")
    add_key(verify)
    verify.add_argument(
        "--against",
        type=Path,
        metavar="CHECKPOINT",
        help="a checkpoint exported earlier: the journal must still extend it",
    )
    verify.add_argument(
        "--strict",
        action="store_true",
        help="an unsealed tail, a torn last line, or a journal that does not end with the "
        "agent's stop record and final seal (cut, crash, or the agent still running) is an error",
    )
    verify.add_argument("--json", action="store_true", help="machine-readable report")
    verify.set_defaults(func=run_verify)

    checkpoint = add("checkpoint", "print the latest signed checkpoint")
    checkpoint.set_defaults(func=run_checkpoint)

    proof = add(
        "prove",
        "print an inclusion proof of record SEQ, or with --consistency-from a proof that the "
        "latest checkpoint extends an older one",
    )
    proof.add_argument("seq", type=int, metavar="SEQ", nargs="?")
    proof.add_argument(
        "--consistency-from",
        type=Path,
        metavar="CHECKPOINT",
        help="a checkpoint exported earlier (`journal checkpoint`): print the RFC 9162 "
        "consistency proof from it to the latest checkpoint",
    )
    proof.set_defaults(func=run_prove)

    check = sub.add_parser(
        "verify-proof", help="check an inclusion or consistency proof with the public key"
    )
    check.add_argument(
        "proof",
        nargs="?",
        default="-",
        metavar="FILE",
        help="proof from `journal prove` (default: stdin)",
    )
    add_key(check)
    check.set_defaults(func=run_verify_proof)


# --------------------------------------------------------------------------------- query
_FILTERS = (
    ("--since", "TIME", "records at or after TIME: '2026-12-02 18:00', 18:00, -1h, yesterday, "
     "@EPOCH (docs/query.md)"),
    ("--until", "TIME", "records at or before TIME (same forms)"),
    ("--type", "T,...", "record types (event, verdict, seal, policy_loaded, ...)"),
    ("--kind", "K,...", "event kinds (exec, open, connect, ...); a verdict's operation"),
    ("--action", "A,...", "verdict actions (deny, kill, would_deny, audit, allow, would_kill)"),
    ("--rule", "ID,...", "verdicts of these rule ids"),
    ("--policy", "DIGEST,...", "verdicts and policy records of this policy digest (a prefix "
     "of at least 4 hex digits will do)"),
    ("--pid", "PID,...", "events and verdicts of these process ids"),
    ("--exe", "GLOB,...", "acting binary matches GLOB (fnmatch: * crosses /)"),
    ("--path", "GLOB,...", "a path the record is about matches GLOB (an event's path or "
     "new_path, an exec's binary, a verdict's object)"),
    ("--host", "NAME,...", "records of these hosts"),
    ("--auid", "USER,...", "the login uid (auditd's auid) of the acting task: a user name, "
     "a uid, or unset: what a person did after sudo or su"),
    ("--session", "ID,...", "the audit session id (auditd's ses) of the acting task"),
)  # fmt: skip


def add_filters(p: argparse.ArgumentParser) -> None:
    """The filters ``tail``, ``query`` and ``export`` share: each combines with the others
    (AND); a comma-separated list matches any of its values (OR)."""
    # ``--since -1h`` as journalctl takes it: argparse reads "-1h" as an option unless it
    # looks like a negative number, and this parser has no option that does
    p._negative_number_matcher = RELATIVE_TIME
    group = p.add_argument_group("filters (combined: every one given must hold)")
    for flag, metavar, help in _FILTERS:
        group.add_argument(flag, metavar=metavar, help=help)
    group.add_argument("--verdict", metavar="A,...", dest="action", help=argparse.SUPPRESS)


def add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        choices=("text", "json", "ocsf"),
        default="text",
        help="text: aligned rows, user names resolved as ausearch -i does; json: one record "
        "per line exactly as stored (like journalctl -o json); ocsf: one OCSF 1.5 event per "
        "line (records with no OCSF class are left out)",
    )
    p.add_argument("--json", action="store_const", const="json", dest="output",
                   help="the same as -o json")  # fmt: skip


def _filter(args: argparse.Namespace) -> Filter:
    names = ("since", "until", "type", "kind", "action", "rule", "policy", "pid", "exe", "path",
             "host", "auid", "session")  # fmt: skip
    return Filter.from_text(**{name: getattr(args, name) for name in names})


def _journal_dir(args: argparse.Namespace) -> Path:
    directory: Path = args.journal
    if not directory.is_dir():
        raise JournalError(f"journal directory {directory} does not exist")
    return directory


class _Printer:
    """Writes matches in the chosen output form, flushing after each batch (``live``: after
    each match, for a follow that never ends); ``last_seq`` is the last record printed."""

    def __init__(self, output: str, out: TextIO) -> None:
        self.output = output
        self.out = out
        self.colour = output == "text" and out.isatty() and "NO_COLOR" not in os.environ
        self.last_seq = -1

    def __call__(self, matches: Iterable[Match], *, live: bool = False) -> None:
        write = self.out.write
        for match in matches:
            self.last_seq = match.record.seq
            if self.output == "json":
                write(match.line.data.decode("utf-8") + "\n")
            elif self.output == "ocsf":
                event = ocsf.to_ocsf(match.record, match.line.data)
                if event is not None:
                    write(ocsf.dumps(event) + "\n")
            else:
                write(format_record(match.record, self.colour) + "\n")
            if live:
                self.out.flush()
        self.out.flush()


def _report_skipped(scan: Scan) -> None:
    if scan.skipped:
        print(
            f"sealtrail: {scan.skipped} lines are not records and were passed over "
            "(journal verify says why)",
            file=sys.stderr,
        )


def run_tail(args: argparse.Namespace) -> int:
    directory = _journal_dir(args)
    flt = _filter(args)
    limit = args.lines if args.lines is not None else (None if args.since else 10)
    printer = _Printer(args.output, sys.stdout)
    scan = Scan()
    start = end_position(directory)
    if limit is None:
        printer(query(directory, flt, scan=scan))
    else:
        printer(last(directory, flt, limit, scan=scan))
    _report_skipped(scan)
    if args.follow:  # from where the journal ended before the first read: none missed,
        done = printer.last_seq  # and none printed twice
        printer((m for m in follow(directory, flt, start) if m.record.seq > done), live=True)
    return 0


def _print_query(directory: Path, flt: Filter, output: str, limit: int | None) -> None:
    if output == "json" and flt.only_time:  # records as stored: no need to parse each
        out = sys.stdout
        for line in itertools.islice(stored_lines(directory, flt.since, flt.until), limit):
            out.write(line.data.decode("utf-8", "backslashreplace") + "\n")
        out.flush()
        return
    scan = Scan()
    _Printer(output, sys.stdout)(itertools.islice(query(directory, flt, scan=scan), limit))
    _report_skipped(scan)


def run_query(args: argparse.Namespace) -> int:
    _print_query(_journal_dir(args), _filter(args), args.output, args.lines)
    return 0


def run_export(args: argparse.Namespace) -> int:
    _print_query(_journal_dir(args), _filter(args), args.format, None)
    return 0


def _paint(text: str, code: str | None, colour: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def _value(name: str, value: object) -> str:
    """A field's value for a text line. Journal strings are the observed world's (paths, argv,
    comm): anything but plain printable text (spaces, "=", quotes, control characters such as
    a newline or a terminal escape, bidi overrides) is shown JSON-quoted with escapes, so no
    value can forge a line or drive the terminal."""
    if isinstance(value, str):
        if value and value.isprintable() and not _QUOTED(value):
            return value
        return json.dumps(value)
    if type(value) is int:
        if name in _USER_FIELDS:  # ausearch -i: a uid with its user name
            user = user_name(value)
            return f"{value}({user})" if user else str(value)
        return str(value)
    dumped = orjson.dumps(value).decode("utf-8")  # compact, non-ASCII as it is, if printable
    return dumped if dumped.isprintable() else json.dumps(value)


_QUOTED = re.compile(r'[\s="\\]').search


@functools.lru_cache(maxsize=4096)
def _second(sec: int) -> str:
    return datetime.fromtimestamp(sec).strftime("%Y-%m-%d %H:%M:%S")


def format_record(record: Record, colour: bool) -> str:
    """One aligned, human-readable line: time, seq, type, then the interesting fields."""
    sec, ns = divmod(record.ts, 1_000_000_000)
    stamp = f"{_second(sec)}.{ns // 1_000_000:03d}"
    fields = record.fields
    head = ""
    skip: frozenset[str] | tuple[str, ...] = ()
    if record.type == "verdict":
        action = str(fields["action"])
        head = _paint(f"{action:<10}", _COLOURS.get(action), colour) + " "
        skip = ("action",)
    elif record.type == "event":
        head = f"{fields['kind']!s:<10} "
        skip = ("kind",)
    elif record.type == "seal":
        fields = {"size": fields["size"], "key": fields["key_id"]}
    rest = " ".join([f"{k}={_value(k, v)}" for k, v in fields.items()
                     if k not in _HIDDEN and k not in skip])  # fmt: skip
    kind = _paint(f"{record.type:<15}", _TYPE_COLOURS.get(record.type), colour)
    return f"{stamp} {record.seq:>9} {kind} {head}{rest}".rstrip()


# --------------------------------------------------------------------------------- verify
class _Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal and the run is long."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.enabled = sys.stderr.isatty() and total > _PROGRESS_MIN_BYTES
        self.last = 0.0

    def update(self, done: int, records: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.1:
            return
        self.last = now
        frac = min(done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\rverifying [{bar:<30}] {frac:4.0%} {records} records")
        sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _load_json(path: str | Path, what: str) -> Any:
    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    except ValueError as exc:  # not UTF-8
        raise FormatError(f"{what} {path} is not JSON: {exc}") from None
    try:
        return load_json(text)
    except FormatError as exc:
        raise FormatError(f"{what} {path}: {exc}") from None


def _genesis(path: Path) -> PublicKey:
    """The public key ``--key`` names; failing on the default path says how to name another."""
    try:
        return PublicKey.load(path)
    except KeyStoreError as exc:
        if path != _DEFAULT_KEY:
            raise
        raise KeyStoreError(
            f"{exc} (the default key path; --key PUB names the host's genesis public key)"
        ) from None


def run_verify(args: argparse.Namespace) -> int:
    genesis = _genesis(args.key)
    against = (
        SignedCheckpoint.from_dict(_load_json(args.against, "checkpoint"))
        if (args.against)
        else None
    )
    segments = list_segments(args.journal)
    verifier = Verifier(genesis, against=against, strict=args.strict, numbering=SegmentNumbering())
    progress = _Progress(sum(p.stat().st_size for _, p in segments))
    done = 0

    def show(findings: Iterable[Finding]) -> None:
        for finding in findings:
            if not args.json and finding.severity != "info":
                progress.clear()
                print(f"{finding.severity}: {finding}")

    for chunk in journal_chunks(segments):

        def reached(offset: int, base: int = done) -> None:
            progress.update(base + offset, verifier.summary.records)

        show(verifier.feed_chunk(chunk, progress=reached))
        done += len(chunk.data)
    show(verifier.finish())
    progress.clear()
    s = verifier.summary
    if args.json:
        print(json.dumps(s.to_dict(), indent=2, ensure_ascii=False))
        return 0 if s.ok else 1
    tail = f"; unsealed tail, {s.unsealed} records" if s.unsealed > 0 else ""
    end = "ends with the agent's stop and final seal" if s.clean_end else "no stop at the end"
    recoveries = f", {s.recoveries} unclean stops recovered" if s.recoveries else ""
    body = (
        f"{s.records} records in {s.segments} segments, {s.seals} seals, "
        f"{s.rotations} key rotations{recoveries}, host {s.host}, last seal at seq "
        f"{s.last_seal_seq}{tail}; {end}"
    )
    if s.ok:
        print(f"journal OK: {body}")
        return 0
    print(f"journal FAILED: {s.errors} errors; {body}")
    return 1


# --------------------------------------------------------------------------------- proofs
def run_checkpoint(args: argparse.Namespace) -> int:
    signed = latest_checkpoint(args.journal)
    sys.stdout.buffer.write(signed.to_bytes())
    return 0


def run_prove(args: argparse.Namespace) -> int:
    if (args.seq is None) == (args.consistency_from is None):
        raise UsageError("journal prove takes either SEQ or --consistency-from CHECKPOINT")
    if args.consistency_from is not None:
        old = SignedCheckpoint.from_dict(_load_json(args.consistency_from, "checkpoint"))
        sys.stdout.buffer.write(prove_consistency(args.journal, old).to_bytes())
        return 0
    sys.stdout.buffer.write(prove(args.journal, args.seq).to_bytes())
    return 0


def run_verify_proof(args: argparse.Namespace) -> int:
    genesis = _genesis(args.key)
    document = _load_json(args.proof, "proof")
    if isinstance(document, dict) and document.get("format") == CONSISTENCY_FORMAT:
        consistency = ConsistencyProof.from_dict(document)
        consistency.verify(genesis)
        old, new = consistency.old.checkpoint, consistency.new.checkpoint
        print(
            f"OK: the checkpoint of size {new.size} (key {new.key_id}) extends the checkpoint "
            f"of size {old.size} (key {old.key_id}) of host {new.host}, from genesis key "
            f"{genesis.key_id}"
        )
        return 0
    proof = InclusionProof.from_dict(document)
    record = proof.verify(genesis)
    cp = proof.checkpoint.checkpoint
    print(
        f"OK: record {record.seq} ({record.type}, host {record.host}) is included in the "
        f"checkpoint of size {cp.size} signed by key {cp.key_id}, "
        f"{len(proof.checkpoint.rotations)} rotations from genesis key {genesis.key_id}"
    )
    return 0
