"""``sealtrail collector``: the collector that receives and verifies every host's journal.

init     a collector directory: CA (or --ca-cert/--ca-key), server certificate, receipt key,
         store and collector.toml
enroll   bind a host name, a client certificate and the host's genesis journal key, and write
         the bundle the host's agent forwards with (--forward-tls DIR)
hosts    one line per enrolled host: size, last seal, last receive, lag and state (ok,
         lagging, silent, gap, fork, tamper, rollback, unenrolled-key)
verify   verify what the store holds again, end to end, with the journal's own verifier
export   a host's records as a journal directory that `sealtrail journal verify` checks

Options, defaults and the directory layouts: docs/collector.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.collector import layout, pki
from agent.collector.config import DEFAULT_LISTEN, CollectorConfig, load_config
from agent.collector.export import export_host
from agent.collector.hoststate import HostRow, enrolled_host, survey
from agent.collector.provision import enroll_host, init_collector
from agent.collector.reverify import HostReport, verify_host
from agent.collector.store import Store, open_store
from agent.journal.verify import NOT_STOPPED, Finding
from agent.journal.writer import DEFAULT_SEGMENT_BYTES

if TYPE_CHECKING:
    from rich.progress import Progress


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "collector",
        help="receive, verify and keep the journals of many hosts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="collector_command", metavar="COMMAND", required=True)

    init = sub.add_parser(
        "init",
        help="create a collector directory",
        description="Create a collector directory: its CA (or the operator's), a server "
        "certificate, the Ed25519 receipt key, the store and collector.toml (docs/collector.md).",
    )
    _dir(init)
    init.add_argument(
        "--name", help="the collector's name (default: this machine's short host name)"
    )
    init.add_argument(
        "--san",
        action="append",
        metavar="NAME|IP",
        help="a DNS name or IP address of the server certificate; repeat for more (default: "
        "localhost, 127.0.0.1, ::1 and this machine's host name)",
    )
    init.add_argument(
        "--ca-cert",
        type=Path,
        metavar="FILE",
        help="use this CA (PEM) instead of creating one; with --ca-key, or with --server-cert "
        "and --server-key if the CA key stays with you",
    )
    init.add_argument(
        "--ca-key",
        type=Path,
        metavar="FILE",
        help="the CA's private key (PEM, unencrypted, mode 0600); stays where it is",
    )
    init.add_argument(
        "--server-cert",
        type=Path,
        metavar="FILE",
        help="use this server certificate (PEM, issued by --ca-cert) instead of issuing one",
    )
    init.add_argument(
        "--server-key",
        type=Path,
        metavar="FILE",
        help="the server certificate's key (PEM, unencrypted, mode 0600); stays where it is",
    )
    _store(init, f"the store (default {layout.STORE} in DIR); recorded in {layout.CONFIG}")
    init.add_argument(
        "--listen",
        metavar="ADDR:PORT",
        help=f"where `collector serve` listens (default {DEFAULT_LISTEN})",
    )
    _days(init, "the server certificate")
    init.set_defaults(func=run_init)

    enroll = sub.add_parser(
        "enroll",
        help="enroll a host and write its forwarding bundle",
        description="Bind a host name, a client certificate and the host's genesis journal key in "
        "the store, and write the bundle its agent forwards with (docs/collector.md).",
    )
    _dir(enroll)
    enroll.add_argument("--host", required=True, help="the host's name (its journal's host field)")
    enroll.add_argument(
        "--journal-key",
        required=True,
        metavar="PUB",
        help="the host's genesis key: its journal.pub, or the line `sealtrail keys init` printed",
    )
    enroll.add_argument(
        "--out", required=True, type=Path, metavar="OUTDIR", help="where the bundle is written"
    )
    source = enroll.add_mutually_exclusive_group()
    source.add_argument(
        "--csr",
        type=Path,
        metavar="FILE",
        help="sign the host's own certificate request (its key never leaves the host)",
    )
    source.add_argument(
        "--cert",
        type=Path,
        metavar="FILE",
        help="bind a client certificate issued elsewhere by the collector's CA",
    )
    enroll.add_argument(
        "--ca-key",
        type=Path,
        metavar="FILE",
        help="the CA key, if not where collector.toml says (e.g. kept offline)",
    )
    enroll.add_argument(
        "--replace",
        action="store_true",
        help="rebind an enrolled host to a new certificate or a new genesis key",
    )
    _store(enroll, "override the store of collector.toml")
    _days(enroll, "the client certificate")
    enroll.set_defaults(func=run_enroll)
    _register_operator(sub)

    serve = sub.add_parser(
        "serve",
        help="receive and verify the hosts' journals (HTTPS, mutual TLS)",
        description="Serve the forwarding protocol v1 (docs/collector.md) until SIGTERM.",
    )
    _dir(serve)
    serve.add_argument(
        "--listen",
        metavar="ADDR:PORT",
        help="address to listen on (default: collector.toml's listen)",
    )
    _store(serve, "the store (default: collector.toml's store)")
    serve.set_defaults(func=run_serve)


def _register_operator(sub: Any) -> None:
    """The operator's commands: they read the store and judge; none of them changes it."""
    hosts = sub.add_parser(
        "hosts",
        help="list the enrolled hosts and their state",
        description="One line per enrolled host: accepted size, last seal, last receive, lag and "
        "state. lagging: no seal for more than one heartbeat; silent: none for silent_after "
        "heartbeats ([heartbeat] of collector.toml); docs/collector.md.",
    )
    _dir(hosts)
    _store(hosts, "override the store of collector.toml")
    hosts.add_argument("--json", action="store_true", help="machine-readable list")
    hosts.set_defaults(func=run_hosts)

    verify = sub.add_parser(
        "verify",
        help="verify what the store holds, end to end; exit 0 only if everything holds",
        description="Verify every stored record of each host again with the journal's "
        "verifier and the enrolled genesis key, and the store's hashes and heads against them "
        "(docs/collector.md).",
    )
    _dir(verify)
    _store(verify, "override the store of collector.toml")
    verify.add_argument("--host", metavar="NAME", help="only this host (default: every host)")
    verify.add_argument("--json", action="store_true", help="machine-readable report")
    verify.set_defaults(func=run_verify)

    export = sub.add_parser(
        "export",
        help="write a host's records as a journal directory",
        description="Write the stored records of one host, byte for byte, as journal segment "
        "files with its enrolled genesis key as journal.pub, for `sealtrail journal verify "
        "--journal OUT --key OUT/journal.pub` (docs/collector.md).",
    )
    _dir(export)
    _store(export, "override the store of collector.toml")
    export.add_argument("--host", required=True, metavar="NAME", help="the host to export")
    export.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="OUT",
        help="the directory to write; created (mode 0700) or empty",
    )
    export.add_argument(
        "--segment-bytes",
        type=int,
        default=DEFAULT_SEGMENT_BYTES,
        metavar="N",
        help="start a new segment after the first seal at N bytes, as the agent's writer does "
        f"(default {DEFAULT_SEGMENT_BYTES})",
    )
    export.set_defaults(func=run_export)
    prove = sub.add_parser(
        "prove",
        help="print one record's evidence bundle",
        description="Print the evidence bundle of record SEQ of HOST: its inclusion in the "
        "host's journal, the host checkpoint's inclusion in the fleet log, and the latest "
        "witnessed fleet checkpoint; check it with `sealtrail verify-bundle` (docs/witness.md).",
    )
    _dir(prove)
    _store(prove, "override the store of collector.toml")
    prove.add_argument("--host", required=True, metavar="NAME", help="the host")
    prove.add_argument("--seq", required=True, type=int, metavar="N", help="the record's seq")
    prove.set_defaults(func=run_prove)
    vkey = sub.add_parser(
        "fleet-vkey",
        help="print the fleet log's verifier key (the policy's log line)",
        description="Print the C2SP vkey of the collector's fleet checkpoints, for the 'log' "
        "line of a witnesses.policy and for every witness's witness.toml.",
    )
    _dir(vkey)
    vkey.set_defaults(func=run_fleet_vkey)


def _dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", required=True, type=Path, metavar="DIR", help="collector directory"
    )


def _store(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help=f"{help}: postgresql://..., sqlite:///ABS/PATH or a file path",
    )


def _days(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--days",
        type=int,
        default=pki.CERT_DAYS,
        help=f"validity of {what} in days (default {pki.CERT_DAYS})",
    )


def _open_store(args: argparse.Namespace) -> tuple[CollectorConfig, Store]:
    """The collector's configuration and its store, or the one ``--store`` names (a bare path
    relative to the current directory, as for ``init``)."""
    config = load_config(Path(args.dir).absolute())
    if args.store is not None:
        store = args.store
        config = config.override(store=store if "://" in store else str(Path(store).absolute()))
    return config, open_store(config.store_url(), quarantine_limit=config.quarantine_limit)


def run_init(args: argparse.Namespace) -> int:
    done = init_collector(
        args.dir,
        name=args.name,
        sans=args.san,
        ca_cert=args.ca_cert,
        ca_key=args.ca_key,
        server_cert=args.server_cert,
        server_key=args.server_key,
        store=args.store,
        listen=args.listen,
        days=args.days,
    )
    config = done.config
    print(f"collector {config.name} initialised in {config.directory}")
    print(f"  CA               {config.path(config.files.ca_cert)}  sha256 {done.ca_fingerprint}")
    print(f"  server cert      {', '.join(done.server_names)}  sha256 {done.server_fingerprint}")
    print(f"  receipt key      {config.path(config.files.signing_pub)}  id {done.signing_key_id}")
    print(f"  store            {config.store}")
    print(
        f"next: sealtrail collector enroll --dir {config.directory} --host NAME ...",
        file=sys.stderr,
    )
    return 0


def run_enroll(args: argparse.Namespace) -> int:
    done = enroll_host(
        args.dir,
        args.host,
        args.journal_key,
        args.out,
        csr=args.csr,
        cert=args.cert,
        ca_key=args.ca_key,
        store=args.store,
        replace=args.replace,
        days=args.days,
    )
    print(f"host {done.host} enrolled: certificate sha256 {done.fingerprint}")
    print(f"  genesis journal key {done.journal_key_id}")
    for path in done.files:
        print(f"  {path}")
    print(
        f"copy {done.out} to the host and start its agent with --forward-tls DIR",
        file=sys.stderr,
    )
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from agent.collector.config import load_config
    from agent.collector.server import serve

    config = load_config(args.dir)
    changes = {k: v for k, v in (("listen", args.listen), ("store", args.store)) if v}
    if changes:
        config = config.override(**changes)

    def ready(address: tuple[str, int]) -> None:
        print(f"collector {config.name} serving on {address[0]}:{address[1]}", flush=True)

    asyncio.run(serve(config, ready=ready))
    return 0


# ------------------------------------------------------------------------------ operator
def run_hosts(args: argparse.Namespace) -> int:
    config, store = _open_store(args)
    now = time.time_ns()
    with store:
        rows = survey(store, config, now)
    if args.json:
        document = {
            "now_ns": str(now),
            "heartbeat_seconds": config.heartbeat_seconds,
            "silent_after": config.silent_after,
            "hosts": [row.to_dict() for row in rows],
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("no host is enrolled (sealtrail collector enroll)", file=sys.stderr)
        return 0
    table = [("HOST", "SIZE", "LAST SEAL", "LAST RECEIVE", "LAG", "STATE")]
    table += [_host_line(row) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[-1]]).rstrip())
    return 0


def _host_line(row: HostRow) -> tuple[str, str, str, str, str, str]:
    state = str(row.state)
    if row.since_ns is not None:
        state += f" since {_when(row.since_ns)}"
    if row.head.detail:
        state += f": {row.head.detail}"
    return (
        row.host.name,
        str(row.head.size),
        _when(row.head.last_seal_ns),
        _when(row.head.last_receive_ns),
        "-" if row.lag_seconds is None else _age(row.lag_seconds),
        state,
    )


def _when(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def run_verify(args: argparse.Namespace) -> int:
    _, store = _open_store(args)
    reports: list[HostReport] = []
    with store:
        hosts = [enrolled_host(store, args.host)] if args.host else store.hosts()
        total = sum(store.head(host.name).size for host in hosts)
        with _progress() as progress:
            task = progress.add_task("", total=total)
            for host in hosts:
                progress.update(task, description=host.name)

                def show(finding: Finding, name: str = host.name) -> None:
                    # a live host's journal has no stop record yet: the normal case here, said
                    # in the host's line rather than as a warning per host
                    quiet = finding.severity == "info" or finding.message == NOT_STOPPED
                    if not args.json and not quiet:
                        print(f"{finding.severity}: {name}: {finding}")

                def advance(records: int) -> None:
                    progress.advance(task, records)

                report = verify_host(store, host, emit=show, progress=advance)
                reports.append(report)
                if not args.json:
                    print(_report_line(report))
    ok = all(report.ok for report in reports)
    if args.json:
        document = {"ok": ok, "hosts": [report.to_dict() for report in reports]}
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        failed = sum(not report.ok for report in reports)
        records = sum(report.summary.records for report in reports)
        verdict = f"FAILED: {failed} of {len(reports)}" if failed else f"OK: {len(reports)}"
        print(f"store {verdict} hosts, {records} records verified")
    return 0 if ok else 1


def _progress() -> Progress:
    """A progress bar on stderr, only when stderr is a terminal (rich is imported only here:
    every sealtrail command imports this module)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("verifying {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        # findings printed meanwhile go above the bar when both share the terminal
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=False,
        disable=not sys.stderr.isatty(),
    )


def _report_line(report: HostReport) -> str:
    s = report.summary
    name = report.host.name
    if report.head.size == 0 and s.ok:
        return f"{name}: OK: no records yet (status {report.head.status})"
    tail = f"; unsealed tail, {s.unsealed} records" if s.unsealed > 0 else ""
    end = "ends with the agent's stop and final seal" if s.clean_end else "no stop record yet"
    body = (
        f"{s.records} records, {s.seals} seals, {s.rotations} key rotations, last seal at seq "
        f"{s.last_seal_seq}{tail}; {end} (status {report.head.status})"
    )
    return f"{name}: OK: {body}" if s.ok else f"{name}: FAILED: {s.errors} errors; {body}"


def run_export(args: argparse.Namespace) -> int:
    _, store = _open_store(args)
    with store:
        done = export_host(store, args.host, args.out, segment_bytes=args.segment_bytes)
    print(
        f"exported {done.records} records of host {done.host} to {done.out} in "
        f"{len(done.segments)} segments; genesis key {done.key.name} (id {done.key_id})"
    )
    print(
        f"check them: sealtrail journal verify --journal {done.out} --key {done.key}",
        file=sys.stderr,
    )
    return 0


def run_prove(args: argparse.Namespace) -> int:
    from agent.collector.prove import prove

    _, store = _open_store(args)
    with store:
        bundle = prove(store, args.host, args.seq)
    sys.stdout.buffer.write(bundle)
    sys.stdout.buffer.flush()
    return 0


def run_fleet_vkey(args: argparse.Namespace) -> int:
    from agent.collector.fleet import note_signer

    config = load_config(Path(args.dir).absolute())
    print(note_signer(config.path(config.files.signing_key), config.name).verifier.to_text())
    return 0
