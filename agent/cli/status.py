"""``sealtrail status``: the host agent at a glance, from its status files and its journal.

Whether the agent runs (the pid in ``RUN_DIR/status.json``), the policy in force, events/s, the
journal's last record and last seal (read from the journal's end), and what the forwarder wrote
to ``RUN_DIR/forward.json``: the collector's head, the lag in records and seconds, the last
receipt and the last error. Exit status 0 if the agent runs, 3 if not (as ``systemctl status``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from agent import paths
from agent.errors import JournalError
from agent.forward.forwarder import STATUS_NAME as FORWARD_STATUS
from agent.journal.reader import journal_end
from agent.journal.record import Record
from agent.status import read_status

NOT_RUNNING = 3


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="is the agent running, what it enforces, records and has forwarded",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--run-dir",
        type=Path,
        default=paths.DEFAULT_RUN_DIR,
        metavar="DIR",
        help=f"the agent's --run-dir (default {paths.DEFAULT_RUN_DIR})",
    )
    p.add_argument(
        "--journal",
        type=Path,
        default=paths.DEFAULT_JOURNAL_DIR,
        metavar="DIR",
        help=f"the agent's --journal (default {paths.DEFAULT_JOURNAL_DIR})",
    )
    p.set_defaults(func=run)


def _alive(pid: object) -> bool:
    if type(pid) is not int or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _record(record: Record | None) -> dict[str, Any] | None:
    return None if record is None else {"seq": record.seq, "ts": str(record.ts)}


def gather(run_dir: Path, journal_dir: Path) -> dict[str, Any]:
    """Everything ``status`` shows, as the ``--json`` document."""
    agent = read_status(run_dir) or {}
    running = _alive(agent.get("pid"))
    forward = read_status(run_dir, FORWARD_STATUS)
    try:
        end = journal_end(journal_dir)
        journal: dict[str, Any] = {"last": _record(end.last), "last_seal": _record(end.seal)}
    except JournalError as exc:
        journal = {"error": str(exc)}
    if forward is not None:
        forward["current"] = running and forward.get("pid") == agent.get("pid")
    last_error = forward.get("last_error") if forward else None
    return {
        "agent": {k: agent.get(k) for k in ("pid", "updated_ns")} | {"running": running},
        "policy": {k: agent.get(k) for k in ("result", "digest", "files", "kept", "errors")},
        "events_per_s": agent.get("events_per_s"),
        "recorded": agent.get("recorded"),
        "journal": journal,
        "forwarding": forward,
        "last_error": last_error,
    }


def _ago(ts: object, now_ns: int) -> str:
    if not isinstance(ts, str) or not ts.isdigit():
        return "?"
    seconds = (now_ns - int(ts)) / 1e9
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(ts) / 1e9))
    return f"{when} ({seconds:.1f} s ago)"


def render(doc: dict[str, Any], now_ns: int) -> str:
    agent, policy, journal, fwd = doc["agent"], doc["policy"], doc["journal"], doc["forwarding"]
    rows: list[tuple[str, str]] = []
    if agent["running"]:
        rows.append(("agent", f"running, pid {agent['pid']}"))
    elif agent["pid"] is not None:
        rows.append(("agent", f"not running (last pid {agent['pid']})"))
    else:
        rows.append(("agent", "not running (no status file)"))
    if policy["result"] == "rejected":
        rows.append(("policy", f"last load rejected; in force: {policy['kept'] or 'none'}"))
    elif policy["digest"]:
        files = len(policy["files"] or [])
        rows.append(("policy", f"{policy['digest']} ({policy['result']}, {files} files)"))
    elif policy["result"]:
        rows.append(("policy", "none (observing only)"))
    if doc["events_per_s"] is not None:
        rows.append(("events/s", f"{doc['events_per_s']} ({doc['recorded']} recorded)"))
    if "error" in journal:
        rows.append(("journal", journal["error"]))
    elif journal["last"] is None:
        rows.append(("journal", "empty"))
    else:
        rows.append(("journal", f"seq {journal['last']['seq']}"))
        seal = journal["last_seal"]
        sealed = f"seq {seal['seq']} at {_ago(seal['ts'], now_ns)}" if seal else "none"
        rows.append(("last seal", sealed))
    if fwd is None:
        rows.append(("forwarding", "off"))
    else:
        state = fwd.get("state") if fwd.get("current") else "not running (last run's status)"
        rows.append(("forwarding", f"{fwd.get('collector')}: {state}"))
        rows.append(("  head", f"{fwd.get('head')} (acknowledged {fwd.get('acknowledged')})"))
        rows.append(("  lag", f"{fwd.get('lag_records')} records, {fwd.get('lag_seconds')} s"))
        receipt = fwd.get("last_receipt")
        if receipt:
            rows.append(("  receipt", f"size {receipt['size']} at {_ago(receipt['ts'], now_ns)}"))
        if fwd.get("rejected"):
            r = fwd["rejected"]
            rows.append(("  rejected", f"from seq {r['seq']}: {r['error']}: {r['detail']}"))
    error = doc["last_error"]
    if error:
        rows.append(("last error", f"{error['error']}: {error['detail']}"))
        rows.append(("", f"at {_ago(error.get('at_ns'), now_ns)}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run(args: argparse.Namespace) -> int:
    doc = gather(args.run_dir, args.journal)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(render(doc, time.time_ns()))
    return 0 if doc["agent"]["running"] else NOT_RUNNING
