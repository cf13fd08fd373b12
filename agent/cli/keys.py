"""``sealtrail keys init``: create the host's genesis Ed25519 key pair for the journal.

The private key is written with mode 0600; the public key goes to ``DIR/journal.pub`` as one line
``sealtrail-ed25519 <base64 raw key> <key id>`` (docs/journal-format.md) and is printed for
enrollment with the collector. The agent does the same on its first start if no key exists.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent import paths
from agent.journal.keys import KeyStore


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="manage the journal signing keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    init = sub.add_parser("init", help="create the genesis key pair and print the public key")
    init.add_argument(
        "--keys",
        type=Path,
        default=paths.DEFAULT_KEYS_DIR,
        metavar="DIR",
        help=f"keys directory (default {paths.DEFAULT_KEYS_DIR})",
    )
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    store = KeyStore(args.keys)
    public = store.init()
    print(public.to_line(), end="")
    print(
        f"# genesis key {public.key_id} written to {store.public_path};"
        " enroll this line with the collector",
        file=sys.stderr,
    )
    return 0
