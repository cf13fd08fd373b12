// SPDX-License-Identifier: GPL-2.0-only
/*
 * sealtrail doctor probes: trivial programs whose only job is to be LOADED (one per object
 * open, the others' autoload disabled) so that `sealtrail doctor` reports what the kernel
 * accepts, not what a sysfs list claims. agent/kernel/host.py drives them.
 *
 * doctor_lsm and doctor_fentry are never attached: loading is the test. doctor_tp is attached
 * (with the send_signal flag off) to prove tracepoints fire; with the flag on it is only
 * loaded, and even then it sends signal 0, which delivers nothing. Nothing here is pinned.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

/*
 * Load-time flag, the whole of section .rodata.doctor (host.py writes one native __u32):
 * nonzero = doctor_tp calls bpf_send_signal. When zero the verifier prunes the call, so the
 * same program tests plain tracepoints on kernels that lack the helper.
 */
const volatile __u32 doctor_send_signal SEC(".rodata.doctor") = 0;

/* getpid calls seen by doctor_tp while attached (read back through the .bss map) */
__u64 doctor_hits = 0;

SEC("tp/syscalls/sys_enter_getpid")
int doctor_tp(void *ctx)
{
	__sync_fetch_and_add(&doctor_hits, 1);
	if (doctor_send_signal)
		bpf_send_signal(0);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int doctor_tp_btf(void *ctx)
{
	return 0;
}

SEC("lsm/file_open")
int BPF_PROG(doctor_lsm, struct file *file)
{
	return 0;
}

SEC("fentry/do_unlinkat")
int BPF_PROG(doctor_fentry)
{
	return 0;
}

/* cgroup sock_addr hook used for network enforcement without BPF-LSM; 1 = allow */
SEC("cgroup/connect4")
int doctor_cgroup(struct bpf_sock_addr *ctx)
{
	return 1;
}

/*
 * The guard's egress judge (st_guard_egress) names the sending task as the sock_addr hooks do:
 * the helpers it needs are offered to cgroup_skb programs only on newer kernels (6.1 refuses
 * bpf_get_current_pid_tgid there). Volatile results: the verifier must see each call.
 */
__u64 doctor_sink = 0;

SEC("cgroup_skb/egress")
int doctor_egress(struct __sk_buff *skb)
{
	struct task_struct *task = bpf_get_current_task_btf();
	char comm[16];
	bpf_get_current_comm(comm, sizeof(comm));
	doctor_sink += bpf_get_current_pid_tgid() + bpf_get_current_uid_gid() +
		       bpf_get_current_cgroup_id() + comm[0] + (task ? 1 : 0);
	return 1;
}
