"""``sealtrail collector``: the collector that receives and verifies every host's journal.

init     a collector directory: CA (or --ca-cert/--ca-key), server certificate, receipt key,
         store and collector.toml
enroll   bind a host name, a client certificate and the host's genesis journal key, and write
         the bundle the host's agent forwards with (--forward-tls DIR)

Options, defaults and the directory layouts: docs/collector.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.collector import layout, pki
from agent.collector.config import DEFAULT_LISTEN
from agent.collector.provision import enroll_host, init_collector


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
