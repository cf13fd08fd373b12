// SPDX-License-Identifier: GPL-2.0-only
/*
 * BPF-LSM smoke probe (tests/vm/test_lsm_smoke.py, run in the stock-kernel VM: the development
 * kernel refuses every lsm/ program). It proves the pipeline the LSM mechanism will use: a CO-RE
 * object built against the host's vmlinux.h, loaded by agent.kernel.loader on another kernel,
 * attached to lsm/file_open, configured through a map, denying with EPERM.
 *
 * Denies file_open of exactly one inode: lsm_smoke_target[0] = { ino, dev } where dev is the
 * KERNEL encoding of the superblock's s_dev (MAJOR << 20 | MINOR). ino 0 = deny nothing.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define EPERM 1

struct lsm_smoke_target {
	__u64 ino;
	__u32 dev;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lsm_smoke_target);
} lsm_smoke_target SEC(".maps");

/* [0] = opens denied, [1] = opens seen (any file) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} lsm_smoke_counts SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&lsm_smoke_counts, &slot);

	if (n)
		__sync_fetch_and_add(n, 1);
}

SEC("lsm/file_open")
int BPF_PROG(lsm_smoke_file_open, struct file *file, int ret)
{
	struct lsm_smoke_target *target;
	struct inode *inode;
	__u32 zero = 0;

	if (ret)
		return ret; /* an earlier LSM already denied */
	count(1);
	target = bpf_map_lookup_elem(&lsm_smoke_target, &zero);
	if (!target || !target->ino)
		return 0;
	inode = file->f_inode; /* BTF pointer: direct, CO-RE-relocated reads */
	if (inode->i_ino != target->ino || inode->i_sb->s_dev != target->dev)
		return 0;
	count(0);
	return -EPERM;
}
