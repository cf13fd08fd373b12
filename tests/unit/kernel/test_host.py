"""Pure parts of agent.kernel.host: the plan from the checks, JSON shape, can_run."""

from __future__ import annotations

import pytest

from agent.kernel import host, probe
from agent.kernel.mechanism import HostCapabilities
from agent.kernel.probe import Check


def _checks(**failed: bool) -> dict[str, Check]:
    return {name: Check(not failed.get(name, False), "") for name in probe.CHECKS}


def test_plan_without_lsm_is_the_fallback_table() -> None:
    plan = host.derive_plan(_checks(bpf_lsm=True, fentry=True))
    assert plan.events == ("tracepoints", "tp_btf")
    assert plan.enforcement == {
        "exec": "fanotify",
        "open": "fanotify",
        "unlink": "none",
        "rename": "none",
        "chmod": "none",
        "chown": "none",
        "network": "cgroup-sock",
        "kill": "bpf_send_signal",
    }
    assert plan.survives_agent  # the cgroup hooks and the kills are pinned
    assert any(n.startswith("in-kernel enforcement (kill, network) is pinned") for n in plan.notes)
    assert any(n.startswith("fanotify enforcement (exec, open) outlives the agent only under "
                            "systemd") for n in plan.notes)  # fmt: skip


def test_plan_with_lsm() -> None:
    plan = host.derive_plan(_checks())
    assert plan.enforcement == dict.fromkeys(host.OPERATIONS, "lsm") | {
        "network": "cgroup-sock",
        "kill": "bpf_send_signal",
    }
    assert plan.survives_agent  # every hook is in the kernel, and pinned
    assert len(plan.notes) == 1 and "is pinned under /sys/fs/bpf/sealtrail" in plan.notes[0]


def test_plan_says_none_when_nothing_denies() -> None:
    plan = host.derive_plan(
        _checks(bpf_lsm=True, fanotify_perm=True, cgroup2=True, send_signal=True, tp_btf=True)
    )
    assert set(plan.enforcement.values()) == {"none"}
    assert not any("survive" in note for note in plan.notes)  # nothing to survive
    assert plan.events == ("tracepoints",)
    assert any("tp_btf" in note for note in plan.notes)


def _report(**failed: bool) -> host.HostReport:
    checks = _checks(**failed)
    return host.HostReport(
        kernel_release="6.1.0",
        kernel_version="#1 SMP",
        machine="x86_64",
        libbpf_version="1.1",
        btf_path="/sys/kernel/btf/vmlinux",
        cgroup2_path="/sys/fs/cgroup",
        tracefs_path="/sys/kernel/tracing",
        securityfs=True,
        lockdown="none",
        lsm_list=("bpf",),
        checks=checks,
        plan=host.derive_plan(checks),
        elapsed_ms=1.0,
    )


@pytest.mark.parametrize("required", probe.REQUIRED)
def test_can_run_needs_each_required_check(required: str) -> None:
    assert _report().can_run
    assert not _report(**{required: True}).can_run


def test_can_run_without_optional_capabilities() -> None:
    optional = {name: True for name in probe.CHECKS if name not in probe.REQUIRED}
    assert _report(**optional).can_run


def test_a_container_pid_namespace_is_a_plan_note_and_no_userspace_kills() -> None:
    checks = _checks(host_pid_namespace=True)
    plan = host.derive_plan(checks)
    assert any("judge every process on the host" in note for note in plan.notes), plan.notes
    assert not HostCapabilities.from_checks(checks).host_pids
    on_host = host.derive_plan(_checks())
    assert not any("container" in note for note in on_host.notes)
    assert HostCapabilities.from_checks(_checks()).host_pids
