"""``sealtrail verify-bundle BUNDLE --host-key PUB --policy FILE``: check an evidence bundle
offline (agent.witness.evidence; docs/witness.md, "Evidence bundles")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify-bundle",
        help="check a record's evidence bundle offline",
        description="Check that the record in BUNDLE is in its host's signed journal, that the "
        "host checkpoint is in the collector's fleet log, and that a quorum of the policy's "
        "witnesses cosigned that fleet checkpoint. Needs no collector.",
    )
    parser.add_argument("bundle", type=Path, help="the bundle (- for standard input)")
    parser.add_argument(
        "--host-key", required=True, type=Path, help="the host's enrolled journal.pub"
    )
    parser.add_argument(
        "--policy",
        required=True,
        type=Path,
        help="C2SP tlog-policy file: the collector's log key, its witnesses and the quorum",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.c2sp.keys import NoteError
    from agent.c2sp.policy import Policy
    from agent.errors import SealtrailError
    from agent.journal.keys import PublicKey
    from agent.witness.evidence import verify_bundle

    try:
        data = sys.stdin.buffer.read() if str(args.bundle) == "-" else args.bundle.read_bytes()
        policy_text = args.policy.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SealtrailError(f"cannot read {exc}") from None
    try:
        policy = Policy.parse(policy_text, str(args.policy))
    except NoteError as exc:
        raise SealtrailError(str(exc)) from None
    evidence = verify_bundle(data, PublicKey.load(args.host_key), policy)
    r = evidence.record
    print(
        f"verified: record {r.seq} ({r.type}) of host {r.host} is in its journal's checkpoint "
        f"of size {evidence.host_size}, entry {evidence.index} of fleet checkpoint "
        f"{evidence.fleet.origin} size {evidence.fleet.size}, cosigned by "
        f"{', '.join(evidence.cosigners) or 'no witness (quorum none)'}"
    )
    return 0
