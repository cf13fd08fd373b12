"""Pure parts of agent.kernel.host: parsers, log-line choice, plan, JSON shape."""

from __future__ import annotations

import pytest

from agent.kernel import host
from agent.kernel.host import Check, Mount

HYBRID = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0
tracefs /sys/kernel/debug/tracing tracefs rw,relatime 0 0
tracefs /sys/kernel/tracing tracefs rw,relatime 0 0
"""


def test_parse_mounts_fields_and_escapes() -> None:
    mounts = host.parse_mounts("/dev/sda1 /mnt/my\\040disk ext4 rw,relatime 0 0\nbroken\n")
    assert mounts == [Mount("/dev/sda1", "/mnt/my disk", "ext4", ("rw", "relatime"))]


def test_cgroup2_found_where_proc_mounts_says() -> None:
    assert host.find_mount(host.parse_mounts(HYBRID), "cgroup2") == "/sys/fs/cgroup/unified"
    unified = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"
    assert host.find_mount(host.parse_mounts(unified), "cgroup2") == "/sys/fs/cgroup"
    assert host.find_mount(host.parse_mounts("proc /proc proc rw 0 0\n"), "cgroup2") is None


def test_tracefs_prefers_the_canonical_mount() -> None:
    mounts = host.parse_mounts(HYBRID)
    assert host.find_mount(mounts, "tracefs", prefer="/sys/kernel/tracing") == "/sys/kernel/tracing"
    assert host.find_mount(mounts, "tracefs", prefer="/elsewhere") == "/sys/kernel/debug/tracing"


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("none [integrity] confidentiality\n", "integrity"),
        ("[none] integrity confidentiality\n", "none"),
        ("none integrity [confidentiality]", "confidentiality"),
        ("", "unknown"),
    ],
)
def test_parse_lockdown(text: str, mode: str) -> None:
    assert host.parse_lockdown(text) == mode


def test_parse_lsm_list() -> None:
    assert host.parse_lsm_list("lockdown,capability,landlock,yama,bpf") == (
        "lockdown",
        "capability",
        "landlock",
        "yama",
        "bpf",
    )
    assert host.parse_lsm_list("") == ()


def test_load_failure_picks_libbpf_line_about_the_program() -> None:
    # what libbpf 1.1.2 logs when the kernel refuses a trampoline program (measured)
    log = [
        "libbpf: loading kernel BTF '/sys/kernel/btf/vmlinux': 0",
        "libbpf: map '.rodata.doctor': created successfully, fd=4",
        "libbpf: prog 'doctor_tp': skipped loading",
        "libbpf: prog 'doctor_lsm': BPF program load failed: Operation not permitted",
        "libbpf: permission error while running as root; try raising 'ulimit -l'? "
        "current value: 8.0 MiB",
        "libbpf: prog 'doctor_lsm': failed to load: -1",
        "libbpf: failed to load object 'doctor.bpf.o'",
    ]
    assert (
        host.load_failure(log, "doctor_lsm")
        == "libbpf: prog 'doctor_lsm': BPF program load failed: Operation not permitted"
    )


def test_load_failure_prefers_the_verifier_complaint() -> None:
    # libbpf 1.1.2 + 6.18 on an out-of-bounds context read (measured)
    log = [
        "libbpf: prog 'bad': BPF program load failed: Permission denied",
        "libbpf: prog 'bad': -- BEGIN PROG LOAD LOG --\n"
        "0: R1=ctx() R10=fp0\n"
        "; int bad(struct __sk_buff *skb) { return ((volatile __u32 *)skb)[1000]; } @ bad.bpf.c:5\n"
        "0: (61) r0 = *(u32 *)(r1 +4000)\n"
        "invalid bpf_context access off=4000 size=4\n"
        "processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0\n"
        "-- END PROG LOAD LOG --",
        "libbpf: prog 'bad': failed to load: -13",
        "libbpf: failed to load object '/tmp/bad.bpf.o'",
    ]
    assert host.load_failure(log, "bad") == "invalid bpf_context access off=4000 size=4"
    assert host.load_failure([], "bad") is None


def _checks(**failed: bool) -> dict[str, Check]:
    return {name: Check(not failed.get(name, False), "") for name in host.CHECKS}


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
        "network": "cgroup-bpf",
        "kill": "bpf_send_signal",
    }
    assert not plan.survives_agent
    assert any("does not survive the agent" in note for note in plan.notes)


def test_plan_with_lsm() -> None:
    plan = host.derive_plan(_checks())
    assert plan.enforcement == dict.fromkeys(host.OPERATIONS, "lsm") | {
        "network": "cgroup-bpf",
        "kill": "bpf_send_signal",
    }
    assert not plan.survives_agent  # nothing is pinned: LSM and cgroup programs go too
    assert len(plan.notes) == 1 and "does not survive the agent" in plan.notes[0]


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


@pytest.mark.parametrize("required", host.REQUIRED)
def test_can_run_needs_each_required_check(required: str) -> None:
    assert _report().can_run
    assert not _report(**{required: True}).can_run


def test_can_run_without_optional_capabilities() -> None:
    optional = {name: True for name in host.CHECKS if name not in host.REQUIRED}
    assert _report(**optional).can_run


def test_isolated_check_reports_a_crash_instead_of_raising() -> None:
    def crash() -> Check:
        raise RuntimeError("boom")

    assert host._isolated(crash) == Check(False, "check crashed: RuntimeError: boom")
