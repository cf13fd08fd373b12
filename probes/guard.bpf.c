// SPDX-License-Identifier: GPL-2.0-only
/*
 * sealtrail in-kernel guard: compiled policy tables (see sealtrail.h, "the in-kernel guard")
 * enforced at cgroup sock_addr hooks (connect4/6, bind4/6), which return EPERM to the caller
 * on every kernel that has cgroup v2, and a process lineage map that lets a rule follow the
 * descendants of a binary.
 *
 * Matching cost does not depend on the number of rules: a handful of map lookups (one LPM per
 * dimension) and an AND over ST_MASK_WORDS words, then the lowest set bit wins (the compiler
 * orders rules by precedence).
 */
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

#define SIGKILL 9

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct st_guard_cfg);
} st_guard_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * ST_OP_MAX * ST_RULES_MAX);
	__type(key, struct st_rule_key);
	__type(value, struct st_rule);
} st_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__type(key, struct st_addr_key);
	__type(value, struct st_mask);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} st_net_addr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct st_port_key);
	__type(value, struct st_mask);
} st_net_port SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__type(key, struct st_exe_key);
	__type(value, struct st_subject);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} st_exe SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct st_id_key);
	__type(value, struct st_mask);
} st_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct st_mask);
} st_lineage SEC(".maps");

/* per-CPU work area: masks are too big for the 512-byte stack */
struct guard_work {
	struct st_mask acc;
	struct st_exe_key exe_key;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct guard_work);
} st_guard_work SEC(".maps");

static __always_inline bool mask_empty(const struct st_mask *m)
{
	__u64 any = 0;
#pragma unroll
	for (int i = 0; i < ST_MASK_WORDS; i++)
		any |= m->w[i];
	return any == 0;
}

/* acc &= (a | b), where a missing table entry is an empty mask */
static __always_inline void mask_and_or(struct st_mask *acc, const struct st_mask *a,
					const struct st_mask *b)
{
#pragma unroll
	for (int i = 0; i < ST_MASK_WORDS; i++)
		acc->w[i] &= (a ? a->w[i] : 0) | (b ? b->w[i] : 0);
}

static __always_inline int lowest_bit(const struct st_mask *m)
{
#pragma unroll
	for (int i = 0; i < ST_MASK_WORDS; i++) {
		__u64 w = m->w[i];
		if (w) {
			/* index of the lowest set bit: binary search (BPF has no ctz) */
			int n = 0;
			if (!(w & 0xffffffffULL)) { n += 32; w >>= 32; }
			if (!(w & 0xffffULL)) { n += 16; w >>= 16; }
			if (!(w & 0xffULL)) { n += 8; w >>= 8; }
			if (!(w & 0xfULL)) { n += 4; w >>= 4; }
			if (!(w & 0x3ULL)) { n += 2; w >>= 2; }
			if (!(w & 0x1ULL)) { n += 1; }
			return i * 64 + n;
		}
	}
	return -1;
}

static __always_inline struct guard_work *get_work(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&st_guard_work, &zero);
}

static __always_inline void and_ids(struct st_mask *acc, __u8 slot, __u8 kind, __u64 id)
{
	struct st_id_key k = {.slot = slot, .kind = kind, .id = id};
	struct st_mask *exact = bpf_map_lookup_elem(&st_ids, &k);
	k.id = ST_ID_ANY;
	struct st_mask *any = bpf_map_lookup_elem(&st_ids, &k);
	mask_and_or(acc, exact, any);
}

/*
 * acc &= rules whose subject conditions (binary, lineage, exceptions, uid, gid, cgroup) the
 * current task satisfies. Writes the exe path into the record at @exe_dst.
 */
static __always_inline __u32 and_subject(struct guard_work *w, struct pathbuf *pb, __u8 slot,
					 void *exe_dst)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	struct path exe_path = BPF_CORE_READ(task, mm, exe_file, f_path);
	bool truncated = false;
	__u32 n = put_walked(exe_dst, pb, &exe_path, &truncated);

	__u32 len = n;
	if (len > ST_EXE_PATH_MAX)
		len = ST_EXE_PATH_MAX;
	/* constant-size copy; prefixlen limits what counts (the NUL makes exact paths exact) */
	bpf_probe_read_kernel(w->exe_key.path, ST_EXE_PATH_MAX, exe_dst);
	w->exe_key.prefixlen = 32 + len * 8;
	w->exe_key.slot = slot;
	struct st_subject *subj = bpf_map_lookup_elem(&st_exe, &w->exe_key);
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct st_mask *lin = bpf_map_lookup_elem(&st_lineage, &tgid);
#pragma unroll
	for (int i = 0; i < ST_MASK_WORDS; i++) {
		__u64 inc = (subj ? subj->include.w[i] : 0) | (lin ? lin->w[i] : 0);
		__u64 exc = subj ? subj->exclude.w[i] : 0;
		w->acc.w[i] &= inc & ~exc;
	}
	__u64 uid_gid = bpf_get_current_uid_gid();
	and_ids(&w->acc, slot, ST_ID_UID, (__u32)uid_gid);
	and_ids(&w->acc, slot, ST_ID_GID, uid_gid >> 32);
	and_ids(&w->acc, slot, ST_ID_CGROUP, bpf_get_current_cgroup_id());
	return n;
}

/* Returns 1 to allow, 0 to deny (the caller gets EPERM). */
static __always_inline int judge_sock(struct bpf_sock_addr *ctx, __u8 op, bool v6)
{
	__u32 zero = 0;
	struct st_guard_cfg *cfg = bpf_map_lookup_elem(&st_guard_cfg, &zero);
	if (!cfg)
		return 1;
	__u8 slot = cfg->slot & 1;
	__u32 generation = cfg->generation[slot];

	struct st_addr_key ak = {.slot = slot, .op = op};
	ak.prefixlen = 32 + 128;
	if (v6) {
		ak.addr[0] = 0; /* copy through u32 loads: the ctx only allows 4-byte reads */
		__u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1];
		__u32 a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
		__builtin_memcpy(&ak.addr[0], &a0, 4);
		__builtin_memcpy(&ak.addr[4], &a1, 4);
		__builtin_memcpy(&ak.addr[8], &a2, 4);
		__builtin_memcpy(&ak.addr[12], &a3, 4);
	} else {
		__u32 a = ctx->user_ip4;
		ak.addr[10] = 0xff;
		ak.addr[11] = 0xff;
		__builtin_memcpy(&ak.addr[12], &a, 4);
	}
	struct st_mask *addr_mask = bpf_map_lookup_elem(&st_net_addr, &ak);
	if (!addr_mask)
		return 1; /* no rule for this op and address: the common, cheap path */

	struct guard_work *w = get_work();
	struct pathbuf *pb = get_pathbuf();
	struct st_verdict *v = get_scratch();
	if (!w || !pb || !v)
		return 1;
	__builtin_memcpy(&w->acc, addr_mask, sizeof(w->acc));

	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u8 proto = ctx->protocol;
	struct st_port_key pk = {.slot = slot, .op = op, .protocol = proto, .any = 0, .port = port};
	struct st_mask *pm = bpf_map_lookup_elem(&st_net_port, &pk);
	pk.any = 1;
	pk.port = 0;
	struct st_mask *pany = bpf_map_lookup_elem(&st_net_port, &pk);
	mask_and_or(&w->acc, pm, pany);
	if (mask_empty(&w->acc))
		return 1;

	__u32 exe_len = and_subject(w, pb, slot, (__u8 *)(v + 1));
	int idx = lowest_bit(&w->acc);
	if (idx < 0)
		return 1;
	struct st_rule_key rk = {.slot = slot, .op = op, .index = idx};
	struct st_rule *rule = bpf_map_lookup_elem(&st_rules, &rk);
	if (!rule || rule->action == ST_ACT_ALLOW)
		return 1;

	__u8 action = rule->monitor ? ST_ACT_AUDIT : rule->action;
	v->generation = generation;
	v->rule_index = idx;
	v->guarded_op = op;
	v->action = action;
	v->rule_action = rule->action;
	v->mechanism = ST_MECH_CGROUP_SOCK;
	v->family = v6 ? AF_INET6 : AF_INET;
	v->protocol = proto;
	v->port = port;
	v->exe_len = exe_len;
	__builtin_memcpy(v->addr, ak.addr, 16);
	fill_hdr(&v->hdr, ST_OP_VERDICT, sizeof(*v) + exe_len);
	v->hdr.flags = ST_F_PATH_RESOLVED;
	submit(v, sizeof(*v) + (exe_len & (ST_PATH_MAX * 2 - 1)), ST_OP_VERDICT);

	if (action == ST_ACT_KILL) {
		bpf_send_signal(SIGKILL); /* and deny: the side effect never happens */
		return 0;
	}
	return action == ST_ACT_DENY ? 0 : 1;
}

SEC("cgroup/connect4")
int st_guard_connect4(struct bpf_sock_addr *ctx) { return judge_sock(ctx, ST_OP_CONNECT, false); }

SEC("cgroup/connect6")
int st_guard_connect6(struct bpf_sock_addr *ctx) { return judge_sock(ctx, ST_OP_CONNECT, true); }

SEC("cgroup/bind4")
int st_guard_bind4(struct bpf_sock_addr *ctx) { return judge_sock(ctx, ST_OP_BIND, false); }

SEC("cgroup/bind6")
int st_guard_bind6(struct bpf_sock_addr *ctx) { return judge_sock(ctx, ST_OP_BIND, true); }

/* ---- lineage: rules that follow a binary's descendants ---- */

SEC("tp_btf/sched_process_fork")
int BPF_PROG(st_guard_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	if (BPF_CORE_READ(child, pid) != ctgid)
		return 0;
	struct st_mask *pl = bpf_map_lookup_elem(&st_lineage, &ptgid);
	if (pl)
		bpf_map_update_elem(&st_lineage, &ctgid, pl, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(st_guard_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 zero = 0;
	struct st_guard_cfg *cfg = bpf_map_lookup_elem(&st_guard_cfg, &zero);
	struct guard_work *w = get_work();
	struct pathbuf *pb = get_pathbuf();
	void *rec = get_scratch();
	if (!cfg || !w || !pb || !rec)
		return 0;
	__u8 slot = cfg->slot & 1;
	struct path exe_path = BPF_CORE_READ(bprm, file, f_path);
	bool truncated = false;
	__u32 n = put_walked(rec, pb, &exe_path, &truncated);
	if (n > ST_EXE_PATH_MAX)
		n = ST_EXE_PATH_MAX;
	bpf_probe_read_kernel(w->exe_key.path, ST_EXE_PATH_MAX, rec);
	w->exe_key.prefixlen = 32 + n * 8;
	w->exe_key.slot = slot;
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct st_mask *cur = bpf_map_lookup_elem(&st_lineage, &tgid);
	if (cur)
		__builtin_memcpy(&w->acc, cur, sizeof(w->acc));
	else
		__builtin_memset(&w->acc, 0, sizeof(w->acc));
	struct st_subject *subj = bpf_map_lookup_elem(&st_exe, &w->exe_key);
	if (!subj)
		return 0;
	bool changed = false;
#pragma unroll
	for (int i = 0; i < ST_MASK_WORDS; i++) {
		if (subj->lineage.w[i] & ~w->acc.w[i])
			changed = true;
		w->acc.w[i] |= subj->lineage.w[i];
	}
	if (changed)
		bpf_map_update_elem(&st_lineage, &tgid, &w->acc, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(st_guard_exit, struct task_struct *task)
{
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	__u32 tgid = BPF_CORE_READ(task, tgid);
	bpf_map_delete_elem(&st_lineage, &tgid);
	return 0;
}
