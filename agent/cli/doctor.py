"""``sealtrail doctor``: what this host supports and what the agent will use.

Exit status 0 if the agent can run here (BTF, tracepoints, ring buffer), 1 otherwise.
``--json`` prints the report in the schema documented in docs/doctor.md.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from agent.kernel.host import SECURITYFS, HostReport, probe_host
from agent.kernel.probe import CHECKS, REQUIRED

_LABELS = {
    "btf": "BTF",
    "tracefs": "tracefs",
    "tracepoints": "tracepoints",
    "tp_btf": "tp_btf",
    "ringbuf": "ring buffer",
    "bpf_lsm": "BPF-LSM",
    "fentry": "fentry",
    "send_signal": "bpf_send_signal",
    "cgroup2": "cgroup v2",
    "cgroup_bpf": "cgroup BPF",
    "cgroup_egress": "cgroup egress judge",
    "fanotify_perm": "fanotify perm",
    "privileges": "privileges",
    "host_pid_namespace": "PID namespace",
}
_WIDTH = 17


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="report what this host supports and what the agent will use",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = probe_host()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(render(report))
    return 0 if report.can_run else 1


def _row(label: str, text: str, mark: str = " ") -> str:
    return f"  {mark} {label:<{_WIDTH}} {text}"


def render(report: HostReport) -> str:
    """The report as an aligned table, ✓/✗ per check with the reason."""
    if report.securityfs:
        lockdown = report.lockdown if report.lockdown != "unknown" else "unknown (no lockdown LSM)"
        lsm = ",".join(report.lsm_list or ()) or "unknown"
    else:
        lockdown = f"unknown: securityfs not mounted at {SECURITYFS} (doctor does not mount it)"
        lsm = "unknown: securityfs not mounted"
    lines = [
        "sealtrail doctor",
        _row("kernel", f"{report.kernel_release} {report.machine} ({report.kernel_version})"),
        _row("libbpf", report.libbpf_version or "not found (install libbpf1)"),
        _row("lockdown", lockdown),
        _row("LSM list", f"{lsm} (for information: loading decides)"),
        "",
        "checks (by loading trivial programs; nothing attached to LSM/fentry, nothing pinned)",
    ]
    for name in CHECKS:
        check = report.checks[name]
        errno = f" [errno {check.errno}]" if check.errno and "errno" not in check.detail else ""
        lines.append(_row(_LABELS[name], check.detail + errno, "✓" if check.ok else "✗"))
        if check.log:
            lines.append(_row("", check.log))
    lines += ["", "plan"]
    lines.append(_row("events", " + ".join(report.plan.events) or "none"))
    for op, mechanism in report.plan.enforcement.items():
        lines.append(_row(f"enforce {op}", mechanism))
    for note in report.plan.notes:
        lines.append(f"  note: {note}")
    verdict = "yes" if report.can_run else "NO"
    lines += [
        "",
        f"agent can run: {verdict} (needs {', '.join(REQUIRED)}); "
        f"probed in {report.elapsed_ms:.0f} ms",
    ]
    return "\n".join(lines)
