"""``sealtrail policy check|test|reload``: validate host policies, test them like code, and
make the running agent re-read them.

check: parse and validate the policy set (default /etc/sealtrail/policies), print every finding
as file:line:column, the rule and field, and the set's digest; ``--host`` adds the mechanism that
enforces each rule on this host. Exit 0 valid (warnings allowed), 1 invalid, 2 usage.

test: run fixture cases through the compiled policy (the tables the kernel gets) and report each
verdict that differs from the expected one. Exit 0 all pass, 1 any mismatch or invalid input.

reload: signal the running agent (SIGHUP) and report whether it took the new policy set or kept
the old one. Exit 0 loaded (and the kernel holds all of it), 1 rejected (the old policy stays
in force, whole) or installed with a mismatch (what the kernel holds differs from the plan:
each difference printed), 2 no agent answered.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from agent import paths
from agent.errors import PolicyInvalid, UsageError
from agent.policy.check import Report, check
from agent.policy.evaluate import Evaluator
from agent.policy.fixtures import load_fixtures, run_fixtures
from agent.policy.mechanisms import host_capabilities
from agent.status import read_status

DEFAULT_POLICIES = paths.DEFAULT_POLICIES_DIR


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "policy",
        help="check and test host policies",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)
    check_parser = sub.add_parser("check", help="validate a policy set")
    check_parser.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help=f"files or directories ({DEFAULT_POLICIES})",
    )
    check_parser.add_argument(
        "--host", action="store_true", help="print the mechanism enforcing each rule on this host"
    )
    check_parser.add_argument("--json", action="store_true", help="machine-readable output")
    check_parser.set_defaults(func=run_check)
    test_parser = sub.add_parser("test", help="run fixture cases through the compiled policy")
    test_parser.add_argument("fixtures", nargs="+", type=Path, metavar="FIXTURES.toml")
    test_parser.add_argument(
        "--policies",
        action="append",
        type=Path,
        metavar="PATH",
        help="policy files or directories (default: the fixture file's `policies`, else "
        f"{DEFAULT_POLICIES})",
    )
    test_parser.set_defaults(func=run_test)
    reload_parser = sub.add_parser("reload", help="make the running agent re-read its policies")
    reload_parser.add_argument(
        "--run-dir",
        type=Path,
        default=paths.DEFAULT_RUN_DIR,
        metavar="DIR",
        help=f"the agent's --run-dir ({paths.DEFAULT_RUN_DIR})",
    )
    reload_parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="how long to wait for the agent's answer (default 10)",
    )
    reload_parser.set_defaults(func=run_reload)


def run_reload(args: argparse.Namespace) -> int:
    before = read_status(args.run_dir)
    if before is None or not isinstance(before.get("pid"), int):
        raise UsageError(f"{args.run_dir}/status.json: no running agent found")
    try:
        os.kill(before["pid"], signal.SIGHUP)
    except ProcessLookupError:
        raise UsageError(f"agent pid {before['pid']} is not running") from None
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        now = read_status(args.run_dir)
        if now and now.get("loads", 0) > before.get("loads", 0):
            if now.get("result") == "loaded":
                print(f"policy {now.get('digest')} loaded ({len(now.get('files', []))} files)")
                return 0
            if now.get("result") == "mismatch":
                print(f"policy {now.get('digest')} installed, but the kernel does not hold all "
                      "of it (journaled as policy_mismatch):")  # fmt: skip
            else:
                kept = now.get("kept") or "no policy (observing only)"
                print(f"policy rejected; still enforcing {kept}")
            for line in now.get("errors", []):
                print(f"  {line}")
            return 1
        time.sleep(0.05)
    print(f"the agent (pid {before['pid']}) did not answer within {args.timeout:g} s")
    return 2


def run_check(args: argparse.Namespace) -> int:
    report = check(args.paths or [DEFAULT_POLICIES], host_capabilities() if args.host else None)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(render(report))
    return 0 if report.ok else 1


def render(report: Report) -> str:
    lines = [str(f) for f in report.findings]
    rules = sum(len(p.rules) for p in report.policy_set.policies)
    files = len(report.policy_set.sources)
    errors = sum(f.severity == "error" for f in report.findings)
    warnings = len(report.findings) - errors
    if report.enforcement is not None:
        lines.append("mechanisms on this host:")
        for item in report.enforcement:
            rule = item.rule
            what = item.mechanism or f"NONE: {item.error}"
            flag = " (after the fact)" if item.after_the_fact else ""
            note = f"  [{item.note}]" if item.note else ""
            lines.append(
                f"  {rule.rule_id:<28} {rule.operation:<8} {rule.action:<6} {what}{flag}{note}"
            )
    status = "ok" if report.ok else "INVALID"
    summary = f"{status}: {files} files, {rules} rules, {errors} errors, {warnings} warnings"
    lines.append(summary + (f", digest {report.compiled.digest}" if report.compiled else ""))
    return "\n".join(lines)


def run_test(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.fixtures:
        try:
            fixtures = load_fixtures(path)
        except PolicyInvalid as exc:
            print(exc)
            failed += 1
            continue
        policies = args.policies or list(fixtures.policies) or [DEFAULT_POLICIES]
        report = check(policies)
        if report.compiled is None:
            print("\n".join(str(f) for f in report.findings if f.severity == "error"))
            print(f"{path}: the policy set is invalid: no case was run")
            failed += 1
            continue
        outcomes = run_fixtures(fixtures, Evaluator(report.compiled))
        bad = [o for o in outcomes if not o.passed]
        for outcome in bad:
            print(outcome.finding)
        failed += len(bad)
        print(
            f"{path}: {len(outcomes) - len(bad)}/{len(outcomes)} cases pass "
            f"(policy set {report.compiled.digest})"
        )
    return 1 if failed else 0
