"""Pure parts of agent.kernel.probe: the libbpf log line that says why, isolated checks."""

from __future__ import annotations

from agent.kernel import probe
from agent.kernel.probe import Check


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
        probe.load_failure(log, "doctor_lsm")
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
    assert probe.load_failure(log, "bad") == "invalid bpf_context access off=4000 size=4"
    assert probe.load_failure([], "bad") is None


def test_isolated_check_reports_a_crash_instead_of_raising() -> None:
    def crash() -> Check:
        raise RuntimeError("boom")

    assert probe._isolated(crash) == Check(False, "check crashed: RuntimeError: boom")
