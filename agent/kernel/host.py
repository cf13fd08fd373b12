"""What this host supports and the mechanisms the agent will use: the doctor's report.

``probe_host()`` is what ``sealtrail doctor`` prints and what the daemon calls at start: the
mount table and securityfs as ``agent.kernel.procfs`` reads them, the capability checks of
``agent.kernel.probe``, and the plan ``derive_plan`` makes from them with the deny hooks of
``agent.kernel.mechanism`` (the table ``policy check --host`` uses too). ``derive_plan`` is
pure, for unit tests. JSON schema: docs/doctor.md.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.errors import SealtrailError
from agent.kernel import procfs
from agent.kernel.mechanism import HostCapabilities, deny_hook
from agent.kernel.probe import (
    BTF_PATH,
    PREPARE_EXEC_HOOK,
    REQUIRED,
    Check,
    btf_has_name,
    run_checks,
)

SCHEMA_VERSION = 1

SECURITYFS = Path("/sys/kernel/security")
#: Operations in the enforcement plan (DESIGN.md section 3); network is connect and bind.
OPERATIONS = ("exec", "open", "unlink", "rename", "chmod", "chown", "network", "kill")
#: The plan's word for an operation nothing on this host enforces.
NO_MECHANISM = "none"
#: The plan's kill row: the helper that kills from a hook (verdicts then say ``<hook>+sigkill``).
SEND_SIGNAL = "bpf_send_signal"


@dataclass(frozen=True)
class Plan:
    """The mechanism per operation: a ``Mechanism`` value (``lsm``, ``cgroup-sock``,
    ``fanotify``), ``bpf_send_signal`` for kill, or ``none``."""

    events: tuple[str, ...]
    enforcement: dict[str, str]
    #: Does some enforcement go on while no agent runs? The in-kernel mechanisms (LSM,
    #: cgroup-sock, bpf_send_signal) are pinned by the agent (agent.kernel.pins); fanotify
    #: only under systemd (its fd store, agent.enforce.handover): ``notes`` says which.
    survives_agent: bool
    notes: tuple[str, ...]


@dataclass(frozen=True)
class HostReport:
    kernel_release: str
    kernel_version: str
    machine: str
    libbpf_version: str | None
    btf_path: str | None
    cgroup2_path: str | None
    tracefs_path: str | None
    securityfs: bool
    lockdown: str
    lsm_list: tuple[str, ...] | None
    checks: dict[str, Check]
    plan: Plan
    elapsed_ms: float

    @property
    def can_run(self) -> bool:
        """The agent needs BTF (CO-RE), tracepoints and a ring buffer; everything else is extra."""
        return all(self.checks[name].ok for name in REQUIRED)

    @property
    def capabilities(self) -> HostCapabilities:
        """What the enforcer can use here (the fileless-exec hook read from the kernel's BTF)."""
        return HostCapabilities.from_checks(self.checks, btf_has_name(PREPARE_EXEC_HOOK))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "can_run": self.can_run,
            "host": {
                "kernel_release": self.kernel_release,
                "kernel_version": self.kernel_version,
                "machine": self.machine,
                "libbpf_version": self.libbpf_version,
                "btf_path": self.btf_path,
                "cgroup2_path": self.cgroup2_path,
                "tracefs_path": self.tracefs_path,
                "securityfs": self.securityfs,
                "lockdown": self.lockdown,
                "lsm_list": list(self.lsm_list) if self.lsm_list is not None else None,
            },
            "checks": {name: asdict(check) for name, check in self.checks.items()},
            "plan": {
                "events": list(self.plan.events),
                "enforcement": dict(self.plan.enforcement),
                "survives_agent": self.plan.survives_agent,
                "notes": list(self.plan.notes),
            },
            "elapsed_ms": round(self.elapsed_ms, 1),
        }


def derive_plan(checks: dict[str, Check]) -> Plan:
    """The mechanism the agent will use per operation: the best deny hook of
    ``mechanism.DENY_HOOKS`` the checks found (DESIGN.md section 3)."""
    caps = HostCapabilities.from_checks(checks)
    events = tuple(name for name in ("tracepoints", "tp_btf") if name in checks and checks[name].ok)
    enforcement: dict[str, str] = {
        op: deny_hook("connect" if op == "network" else op, caps) or NO_MECHANISM
        for op in OPERATIONS
        if op != "kill"
    }
    enforcement["kill"] = SEND_SIGNAL if caps.send_signal else NO_MECHANISM
    notes = []
    if not caps.lsm:
        notes.append(
            "unlink/rename/chmod/chown cannot be denied without BPF-LSM: "
            "only SIGKILL after the fact, flagged as such"
        )
    in_kernel = sorted(op for op, m in enforcement.items() if m not in (NO_MECHANISM, "fanotify"))
    if in_kernel:
        notes.append(
            f"in-kernel enforcement ({', '.join(in_kernel)}) is pinned under "
            "/sys/fs/bpf/sealtrail: it goes on while no agent runs and a restarted agent takes "
            "it over; "
            "`sealtrail agent --unpin` (package removal) detaches it"
        )
    fanotify_ops = sorted(op for op, m in enforcement.items() if m == "fanotify")
    if fanotify_ops:
        notes.append(
            f"fanotify enforcement ({', '.join(fanotify_ops)}) outlives the agent only under "
            "systemd, whose fd store keeps the group through a restart (operations wait for the "
            "next agent, bounded by the unit's start limits); run by hand, the kernel allows "
            "them while no agent runs"
        )
    if not caps.host_pids:
        notes.append(
            "the agent is in a PID namespace of its own (a container): its probes and hooks "
            "are the kernel's, so its rules judge every process on the host, not only the "
            "container's; rules needing a kill by pid from userspace are refused in enforce mode"
        )
    if "tp_btf" not in events and events:
        notes.append("no tp_btf: process lifecycle events (exec/fork/exit) unavailable")
    return Plan(events, enforcement, bool(in_kernel), tuple(notes))


def _libbpf_version() -> str | None:
    try:
        from agent.kernel import libbpf
    except SealtrailError:
        return None
    return libbpf.version()


def probe_host() -> HostReport:
    """Probe this host; never raises for a missing capability.

    About 0.1 s as root, most of it the kernel detaching the syscall tracepoint (RCU grace
    period).
    """
    start = time.perf_counter()
    uname = os.uname()
    mounts = procfs.read_mounts()
    cgroup2 = procfs.find_mount(mounts, "cgroup2", prefer="/sys/fs/cgroup")
    tracefs = procfs.find_mount(mounts, "tracefs", prefer="/sys/kernel/tracing")
    securityfs = procfs.find_mount(mounts, "securityfs") is not None
    lockdown_text = procfs.read_text(SECURITYFS / "lockdown")
    lsm_text = procfs.read_text(SECURITYFS / "lsm")
    lsm_list = procfs.parse_lsm_list(lsm_text) if lsm_text is not None else None
    checks = run_checks(cgroup2, tracefs, lsm_list)
    return HostReport(
        kernel_release=uname.release,
        kernel_version=uname.version,
        machine=uname.machine,
        libbpf_version=_libbpf_version(),
        btf_path=str(BTF_PATH) if checks["btf"].ok else None,
        cgroup2_path=cgroup2,
        tracefs_path=tracefs,
        securityfs=securityfs,
        lockdown=procfs.parse_lockdown(lockdown_text) if lockdown_text is not None else "unknown",
        lsm_list=lsm_list,
        checks=checks,
        plan=derive_plan(checks),
        elapsed_ms=(time.perf_counter() - start) * 1000,
    )
