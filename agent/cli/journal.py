"""``sealtrail journal``: read, verify and prove the tamper-evident journal.

tail          the latest records, aligned (colour on a TTY); --json prints them as stored
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
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from agent import paths
from agent.errors import FormatError, JournalError, KeyStoreError, UsageError
from agent.journal.checkpoint import (
    CONSISTENCY_FORMAT,
    ConsistencyProof,
    InclusionProof,
    SignedCheckpoint,
)
from agent.journal.keys import PublicKey
from agent.journal.reader import latest_checkpoint, prove, prove_consistency
from agent.journal.record import Record, parse_line
from agent.journal.segments import (
    Line,
    SegmentNumbering,
    journal_chunks,
    list_segments,
    read_segment,
    split_lines,
)
from agent.journal.verify import Finding, Verifier

_DEFAULT_KEY = paths.DEFAULT_KEYS_DIR / paths.PUBLIC_KEY_NAME
_FOLLOW_POLL_S = 0.25
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

    tail = add("tail", "print the latest records")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    tail.add_argument(
        "-n",
        "--lines",
        type=int,
        metavar="N",
        help="how many records (default 10; all with --since)",
    )
    tail.add_argument("--json", action="store_true", help="records exactly as stored")
    tail.add_argument("--type", metavar="T,...", help="only these record types")
    tail.add_argument("--verdict", metavar="A,...", help="only verdicts with these actions")
    tail.add_argument("--since", metavar="TIME", help="ISO time, @epoch, or age like 10m, 2h, 1d")
    tail.add_argument("--rule", metavar="ID", help="only records of this rule")
    tail.set_defaults(func=run_tail)

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


# --------------------------------------------------------------------------------- tail
def parse_since(text: str, now: float | None = None) -> int:
    """``--since`` as nanoseconds since the epoch."""
    now = time.time() if now is None else now
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if match:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return int((now - float(match.group(1)) * scale) * 1e9)
    if text.startswith("@") and text[1:].replace(".", "", 1).isdigit():
        return int(float(text[1:]) * 1e9)
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1e9)
    except ValueError:
        raise UsageError(f"--since {text!r}: use an ISO time, @EPOCH, or an age like 10m") from None


def _csv(text: str | None) -> frozenset[str] | None:
    return frozenset(t.strip() for t in text.split(",") if t.strip()) if text else None


class _Filter:
    def __init__(self, args: argparse.Namespace) -> None:
        self.types = _csv(args.type)
        self.actions = _csv(args.verdict)
        self.rule = args.rule
        self.since = parse_since(args.since) if args.since else None

    def __call__(self, record: Record) -> bool:
        if self.types is not None and record.type not in self.types:
            return False
        if self.actions is not None and (
            record.type != "verdict" or record.fields.get("action") not in self.actions
        ):
            return False
        if self.rule is not None and record.fields.get("rule") != self.rule:
            return False
        return self.since is None or record.ts >= self.since


def _paint(text: str, code: str | None, colour: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def _value(value: object) -> str:
    if isinstance(value, str):
        return value if value and " " not in value and "=" not in value else json.dumps(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def format_record(record: Record, colour: bool) -> str:
    """One aligned, human-readable line: time, seq, type, then the interesting fields."""
    stamp = datetime.fromtimestamp(record.ts / 1e9).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    fields = dict(record.fields)
    head = ""
    if record.type == "verdict":
        action = str(fields.pop("action"))
        head = _paint(f"{action:<10}", _COLOURS.get(action), colour) + " "
    elif record.type == "event":
        head = f"{fields.pop('kind')!s:<10} "
    elif record.type == "seal":
        fields = {"size": fields["size"], "key": fields["key_id"]}
    rest = " ".join(f"{k}={_value(v)}" for k, v in fields.items() if k not in _HIDDEN)
    kind = _paint(f"{record.type:<15}", _TYPE_COLOURS.get(record.type), colour)
    return f"{stamp} {record.seq:>9} {kind} {head}{rest}".rstrip()


def _records(lines: Iterable[Line]) -> Iterator[tuple[Line, Record]]:
    for line in lines:
        if not line.complete:
            continue
        try:
            yield line, parse_line(line.data)
        except FormatError:
            continue  # `journal verify` reports it; tail shows what it can read


def run_tail(args: argparse.Namespace) -> int:
    if not args.journal.is_dir():
        raise JournalError(f"journal directory {args.journal} does not exist")
    keep = _Filter(args)
    limit = args.lines if args.lines is not None else (None if args.since else 10)
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    out = sys.stdout

    def emit(line: Line, record: Record) -> None:
        if args.json:
            out.write(line.data.decode("utf-8") + "\n")
        else:
            out.write(format_record(record, colour) + "\n")

    segments = list_segments(args.journal)
    picked: list[tuple[Line, Record]] = []
    for _, path in reversed(segments):  # newest first, stop once enough records are found
        found = [lr for lr in _records(split_lines(path.name, read_segment(path))) if keep(lr[1])]
        picked[:0] = found
        if limit is not None and len(picked) >= limit:
            break
    if limit is not None:
        picked = picked[-limit:] if limit > 0 else []
    for line, record in picked:
        emit(line, record)
    out.flush()
    if args.follow:
        _follow(args.journal, segments, keep, emit, out)
    return 0


def _follow(
    directory: Path, segments: list[tuple[int, Path]], keep: _Filter, emit: Any, out: TextIO
) -> None:
    """Print records as they are appended, moving on to the next segment when one appears."""
    number, path = segments[-1] if segments else (1, directory / "seg-000001.jsonl")
    offset = path.stat().st_size if path.exists() else 0
    partial = b""
    while True:
        data = b""
        if path.exists():
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
        if data:
            offset += len(data)
            content = partial + data
            cut = content.rfind(b"\n") + 1
            partial = content[cut:]
            for line, record in _records(split_lines(path.name, content[:cut])):
                if keep(record):
                    emit(line, record)
            out.flush()
            continue
        newer = [(n, p) for n, p in list_segments(directory) if n > number]
        if newer:
            number, path = newer[0]
            offset, partial = 0, b""
            continue
        time.sleep(_FOLLOW_POLL_S)


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
        return json.loads(text)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise FormatError(f"{what} {path} is not JSON: {exc}") from None


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
