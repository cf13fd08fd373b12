// SPDX-License-Identifier: GPL-2.0-only
/*
 * sealtrail in-kernel guard: the compiled policy tables (sealtrail.h, "the in-kernel guard";
 * agent/policy/compile.py) enforced at cgroup sock_addr hooks (connect4/6, bind4/6, and
 * sendmsg4/6, where connect rules judge datagrams sent without connect), which return EPERM to
 * the caller, plus the lineage map that lets a rule follow the descendants of a binary.
 *
 * Matching cost does not depend on the number of rules: a fixed set of map lookups and an AND
 * over ST_MASK_WORDS words, then the lowest set bit wins.
 */
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

#define SIGKILL 9
#define GUARDED_OPS 2 /* ops whose tables the lineage follows: connect, bind */

const volatile struct st_guard_rodata st_guard_rodata SEC(".rodata.guard") = {
	.cgroup_signal = 1,
	.lsm_signal = 1,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct st_guard_cfg);
} st_guard_cfg SEC(".maps");

/*
 * Inner map templates: the agent creates maps of exactly these shapes on every (re)load.
 * Sizes, not BTF types: clang emits only forward declarations for types reached through the
 * template's pointers, and libbpf cannot size those.
 */
struct pol_rules {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ST_OP_MAX * ST_RULES_PER_OP);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct st_pol_rule));
};
struct pol_masks {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ST_OP_MAX);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct st_pol_masks));
};
struct pol_addrs {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, ST_POL_TABLE_MAX);
	__uint(key_size, sizeof(struct st_lpm_addr_key));
	__uint(value_size, sizeof(struct st_mask));
	__uint(map_flags, BPF_F_NO_PREALLOC);
};
struct pol_paths {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, ST_POL_PATHS_MAX);
	__uint(key_size, sizeof(struct st_lpm_path_key));
	__uint(value_size, sizeof(struct st_mask));
	__uint(map_flags, BPF_F_NO_PREALLOC);
};
struct pol_inodes {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ST_POL_TABLE_MAX);
	__uint(key_size, sizeof(struct st_inode_key));
	__uint(value_size, sizeof(struct st_mask));
};
struct pol_ports {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, ST_POL_TABLE_MAX);
	__uint(key_size, sizeof(struct st_lpm_port_key));
	__uint(value_size, sizeof(struct st_mask));
	__uint(map_flags, BPF_F_NO_PREALLOC);
};
struct pol_exe {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, ST_POL_TABLE_MAX);
	__uint(key_size, sizeof(struct st_lpm_path_key));
	__uint(value_size, sizeof(struct st_pol_exe));
	__uint(map_flags, BPF_F_NO_PREALLOC);
};
struct pol_ids {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ST_POL_TABLE_MAX);
	__uint(key_size, sizeof(struct st_pol_id_key));
	__uint(value_size, sizeof(struct st_pol_id));
};
struct pol_cgroup {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ST_POL_CGROUPS_MAX);
	__uint(key_size, sizeof(struct st_pol_cgroup_key));
	__uint(value_size, sizeof(struct st_pol_id));
};

#define OUTER(name, inner)                                  \
	struct {                                            \
		__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);   \
		__uint(max_entries, 2);                     \
		__type(key, __u32);                         \
		__array(values, struct inner);              \
	} name SEC(".maps")

OUTER(st_pol_rules, pol_rules);
OUTER(st_pol_masks, pol_masks);
OUTER(st_pol_addrs, pol_addrs);
OUTER(st_pol_paths, pol_paths);
OUTER(st_pol_inodes, pol_inodes);
OUTER(st_pol_ports, pol_ports);
OUTER(st_pol_exe, pol_exe);
OUTER(st_pol_uid, pol_ids);
OUTER(st_pol_gid, pol_ids);
OUTER(st_pol_cgroup, pol_cgroup);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ST_LINEAGE_MAX);
	__type(key, struct st_lineage_key);
	__type(value, struct st_lineage);
} st_lineage SEC(".maps");

/* per-CPU work area: keys and masks are too big for the 512-byte stack */
struct guard_work {
	struct st_lpm_path_key exe_key;
	struct st_lpm_path_key path_key;
	struct st_lpm_addr_key addr_key;
	struct st_lpm_addr_key alias_key; /* connect to "::": the other loopback it may mean */
	struct st_pol_id_key id_key;
	struct st_pol_cgroup_key cg_key;
	struct st_lineage_key lin_key;
	struct st_mask t;    /* T: what the object matches */
	struct st_mask s;    /* S: who the subject conditions select */
	struct st_mask x;    /* X: who the exceptions select */
	struct st_mask tmp;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct guard_work);
} st_guard_work SEC(".maps");

static __always_inline struct guard_work *get_work(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&st_guard_work, &zero);
}

static __always_inline void *inner(void *outer, __u32 slot)
{
	return bpf_map_lookup_elem(outer, &slot);
}

static __always_inline int lowest_bit(const struct st_mask *m)
{
	for (int i = 0; i < ST_MASK_WORDS; i++) {
		__u64 w = m->w[i];
		if (!w)
			continue;
		int n = 0; /* BPF has no ctz: binary search */
		if (!(w & 0xffffffffULL)) { n += 32; w >>= 32; }
		if (!(w & 0xffffULL)) { n += 16; w >>= 16; }
		if (!(w & 0xffULL)) { n += 8; w >>= 8; }
		if (!(w & 0xfULL)) { n += 4; w >>= 4; }
		if (!(w & 0x3ULL)) { n += 2; w >>= 2; }
		if (!(w & 0x1ULL)) { n += 1; }
		return i * 64 + n;
	}
	return -1;
}

/*
 * The verdict is folded one table at a time (dst &= a | b ...), each lookup used only inside
 * its own branch: holding several maybe-missing map values at once makes the verifier walk
 * every combination of them.
 */
static __always_inline void m_copy(struct st_mask *dst, const struct st_mask *a)
{
	for (int i = 0; i < ST_MASK_WORDS; i++)
		dst->w[i] = a->w[i];
}

static __always_inline void m_or(struct st_mask *dst, const struct st_mask *a)
{
	for (int i = 0; i < ST_MASK_WORDS; i++)
		dst->w[i] |= a->w[i];
}

static __always_inline void m_and(struct st_mask *dst, const struct st_mask *a)
{
	for (int i = 0; i < ST_MASK_WORDS; i++)
		dst->w[i] &= a->w[i];
}

static __always_inline bool m_empty(const struct st_mask *a)
{
	__u64 any = 0;
	for (int i = 0; i < ST_MASK_WORDS; i++)
		any |= a->w[i];
	return any == 0;
}

/* dst &= (self-of-entry | any) for S, and x &= (xself-of-entry | xany) for X */
static __always_inline void fold_id(struct guard_work *w, struct st_pol_masks *m, void *map,
				    void *key, int any_slot, int xany_slot)
{
	struct st_pol_id *id = map ? bpf_map_lookup_elem(map, key) : NULL;
	m_copy(&w->tmp, &m->slot[any_slot]);
	if (id)
		m_or(&w->tmp, &id->self);
	m_and(&w->s, &w->tmp);
	m_copy(&w->tmp, &m->slot[xany_slot]);
	if (id)
		m_or(&w->tmp, &id->xself);
	m_and(&w->x, &w->tmp);
}

/* Fold the subject tables into w->s and w->x; the exe path goes into @exe_dst. */
static __always_inline __u32 fold_subject(struct guard_work *w, struct pathbuf *pb, __u32 slot,
					  __u8 op, struct st_pol_masks *m, void *exe_dst)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	struct file *exe_file = BPF_CORE_READ(task, mm, exe_file);
	bool truncated = false;
	__u32 n = put_walked(exe_dst, pb, __builtin_preserve_access_index(&exe_file->f_path),
			     &truncated);

	/* key data: op, path, NUL (so exact entries, which end in NUL, can match) */
	__u32 len = n + 1;
	if (len > sizeof(w->exe_key.data))
		len = sizeof(w->exe_key.data);
	w->exe_key.data[0] = op;
	bpf_probe_read_kernel(&w->exe_key.data[1], sizeof(w->exe_key.data) - 1, exe_dst);
	w->exe_key.prefixlen = len * 8;

	void *exe_map = inner(&st_pol_exe, slot);
	struct st_pol_exe *exe = exe_map ? bpf_map_lookup_elem(exe_map, &w->exe_key) : NULL;
	m_copy(&w->s, &m->slot[ST_SLOT_EXE_ANY]);
	m_copy(&w->x, &m->slot[ST_SLOT_X_EXE_ANY]);
	if (exe) {
		m_or(&w->s, &exe->self);
		m_or(&w->x, &exe->xself);
	}
	w->lin_key.tgid = bpf_get_current_pid_tgid() >> 32;
	w->lin_key.op = op;
	struct st_lineage *lin = bpf_map_lookup_elem(&st_lineage, &w->lin_key);
	if (lin) {
		m_or(&w->s, &lin->inherit);
		m_or(&w->x, &lin->xinherit);
	}
	m_and(&w->x, &m->slot[ST_SLOT_HAS_EXCEPT]);

	/* keys in w, not on the stack: this runs next to the dentry walk's frame */
	__u64 uid_gid = bpf_get_current_uid_gid();
	w->id_key.op = op;
	w->id_key.id = (__u32)uid_gid;
	fold_id(w, m, inner(&st_pol_uid, slot), &w->id_key, ST_SLOT_UID_ANY, ST_SLOT_X_UID_ANY);
	w->id_key.id = uid_gid >> 32;
	fold_id(w, m, inner(&st_pol_gid, slot), &w->id_key, ST_SLOT_GID_ANY, ST_SLOT_X_GID_ANY);
	w->cg_key.op = op;
	w->cg_key._pad0 = 0;
	w->cg_key.cgroup_id = bpf_get_current_cgroup_id();
	fold_id(w, m, inner(&st_pol_cgroup, slot), &w->cg_key, ST_SLOT_CGROUP_ANY,
		ST_SLOT_X_CGROUP_ANY);
	return n;
}

/* Lowest set bit of T & S & ~X (compile.py's verdict function); -1 if none. */
static __always_inline int verdict_index(struct guard_work *w)
{
	for (int i = 0; i < ST_MASK_WORDS; i++)
		w->tmp.w[i] = w->t.w[i] & w->s.w[i] & ~w->x.w[i];
	return lowest_bit(&w->tmp);
}

/*
 * With w->t folded: fold the subject, pick the rule, report it and (kill) signal the caller.
 * The record's object fields and v->path_len (path first in the data, the exe after it) are
 * set by the caller, and so are v->hdr.flags: ST_F_SENDMSG or ST_F_TRUNCATE name the call
 * judged when it is not the rule's operation itself (in the record, not a parameter: the stack
 * next to the dentry walk's frame has no room left). Returns the action taken (ST_ACT_*);
 * ST_ACT_NONE if no rule matched.
 */
static __always_inline __u8 decide_report_as(struct guard_work *w, struct pathbuf *pb,
					     struct st_verdict *v, struct st_pol_masks *m,
					     struct st_guard_cfg *cfg, __u8 op, __u8 mechanism)
{
	__u32 slot = cfg->slot & 1;
	__u32 path_len = v->path_len & (ST_PATH_MAX * 2 - 1);
	if (path_len > ST_PATH_MAX)
		return ST_ACT_NONE;
	__u32 exe_len = fold_subject(w, pb, slot, op, m, (__u8 *)(v + 1) + path_len);
	int idx = verdict_index(w);
	if (idx < 0)
		return ST_ACT_NONE;
	void *rules = inner(&st_pol_rules, slot);
	__u32 rk = op * ST_RULES_PER_OP + idx;
	struct st_pol_rule *rule = rules ? bpf_map_lookup_elem(rules, &rk) : NULL;
	if (!rule || rule->action == ST_POL_ALLOW)
		return ST_ACT_ALLOW;

	__u8 asked = rule->action + 1; /* enum st_pol_action -> enum st_action */
	__u8 action = (rule->flags & ST_RULE_MONITOR) ? ST_ACT_AUDIT : asked;
	/* this hook cannot deny: a deny rule is enforced by its fallback (kill, else audit) */
	if (mechanism == ST_MECH_EXEC_TRACEPOINT && action == ST_ACT_DENY)
		action = (rule->flags & ST_RULE_FALLBACK_KILL) ? ST_ACT_KILL : ST_ACT_AUDIT;
	v->generation = cfg->generation[slot];
	v->rule_index = idx;
	v->guarded_op = op;
	v->action = action;
	v->rule_action = asked;
	v->mechanism = mechanism;
	v->exe_len = exe_len;
	__u32 size = sizeof(*v) + path_len + (exe_len & (ST_PATH_MAX * 2 - 1));
	fill_hdr(&v->hdr, ST_OP_VERDICT, size);
	v->hdr.flags =
		ST_F_PATH_RESOLVED | (v->hdr.flags & (ST_F_SENDMSG | ST_F_TRUNCATE | ST_F_AUTOBIND));
	submit(v, size, ST_OP_VERDICT);
	/* and deny: the operation never happens. Without the helper (cgroup programs on older
	 * kernels) the agent kills on this record; the verifier drops the dead branch. */
	bool can_signal = mechanism == ST_MECH_CGROUP_SOCK ? st_guard_rodata.cgroup_signal
							   : st_guard_rodata.lsm_signal;
	if (action == ST_ACT_KILL && can_signal)
		bpf_send_signal(SIGKILL);
	return action;
}

static __always_inline __u8 decide_and_report(struct guard_work *w, struct pathbuf *pb,
					      struct st_verdict *v, struct st_pol_masks *m,
					      struct st_guard_cfg *cfg, __u8 op, __u8 mechanism)
{
	v->hdr.flags = 0;
	return decide_report_as(w, pb, v, m, cfg, op, mechanism);
}

/*
 * The protocol a rule's "tcp" or "udp" names: TCP and MPTCP (which falls back to TCP with any
 * TCP peer), UDP and UDP-Lite (the same port numbers; a peer's UDP-Lite socket receives it).
 * The evaluator maps them the same way (policy/compile.py PROTO_FAMILY).
 */
static __always_inline __u8 proto_family(__u32 proto)
{
	if (proto == IPPROTO_MPTCP)
		return IPPROTO_TCP;
	if (proto == IPPROTO_UDPLITE)
		return IPPROTO_UDP;
	return proto > 255 ? 255 : proto;
}

/* w->t = rules whose address (@ak, or @alias if not NULL), port and protocol (proto_family)
 * match; false if none */
static __always_inline bool fold_net_target(struct guard_work *w, struct st_pol_masks *m,
					    __u32 slot, __u8 op, struct st_lpm_addr_key *ak,
					    struct st_lpm_addr_key *alias, __u16 port, __u8 proto)
{
	void *addrs = inner(&st_pol_addrs, slot);
	struct st_mask *am = addrs ? bpf_map_lookup_elem(addrs, ak) : NULL;
	m_copy(&w->t, &m->slot[ST_SLOT_ADDR_ANY]);
	if (am)
		m_or(&w->t, am);
	if (alias) {
		am = addrs ? bpf_map_lookup_elem(addrs, alias) : NULL;
		if (am)
			m_or(&w->t, am);
	}

	struct st_lpm_port_key pk = {.prefixlen = 32};
	pk.data[0] = op;
	pk.data[2] = port >> 8;
	pk.data[3] = port & 0xff;
	void *ports = inner(&st_pol_ports, slot);
	struct st_mask *pm = ports ? bpf_map_lookup_elem(ports, &pk) : NULL;
	m_copy(&w->tmp, &m->slot[ST_SLOT_PORT_ANY]);
	if (pm)
		m_or(&w->tmp, pm);
	m_and(&w->t, &w->tmp);

	m_copy(&w->tmp, &m->slot[ST_SLOT_PROTO_ANY]);
	if (proto == IPPROTO_TCP)
		m_or(&w->tmp, &m->slot[ST_SLOT_PROTO_TCP]);
	else if (proto == IPPROTO_UDP)
		m_or(&w->tmp, &m->slot[ST_SLOT_PROTO_UDP]);
	m_and(&w->t, &w->tmp);
	return !m_empty(&w->t);
}

/*
 * A connect (or datagram) to the unspecified address goes to the local host: the kernel routes
 * 0.0.0.0 to 127.0.0.1 and "::" to ::1, or to ::ffff:127.0.0.1 on a socket bound to a v4-mapped
 * address. Judge the address it reaches (both loopbacks for "::"), as agent/policy/compile.py's
 * peer_addresses does, so 0.0.0.0 is no way around a rule naming 127.0.0.1.
 */
static __always_inline bool unspecified_peer(struct guard_work *w)
{
	__u8 *a = &w->addr_key.data[4];
	__u32 w0 = *(__u32 *)&a[0], w1 = *(__u32 *)&a[4], w2 = *(__u32 *)&a[8];
	__u32 w3 = *(__u32 *)&a[12];
	if (w0 || w1 || w3 || (w2 && w2 != bpf_htonl(0xffff)))
		return false;
	if (w2) { /* ::ffff:0.0.0.0 */
		*(__u32 *)&a[12] = bpf_htonl(0x7f000001);
		return false;
	}
	a[15] = 1; /* ::1, and the mapped loopback ::ffff:127.0.0.1 as the alias */
	__builtin_memcpy(&w->alias_key, &w->addr_key, sizeof(w->alias_key));
	__u8 *b = &w->alias_key.data[4];
	b[10] = 0xff;
	b[11] = 0xff;
	*(__u32 *)&b[12] = bpf_htonl(0x7f000001);
	return true;
}

/* Sockets whose bind(2) asked for port 0 (set at bind4/6, read once at post_bind4/6). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u8);
} st_autobind SEC(".maps");

static __always_inline struct st_pol_masks *begin(struct st_guard_cfg **cfg, __u8 op)
{
	__u32 zero = 0;
	*cfg = bpf_map_lookup_elem(&st_guard_cfg, &zero);
	if (!*cfg)
		return NULL;
	void *masks = inner(&st_pol_masks, (*cfg)->slot & 1);
	__u32 opk = op;
	return masks ? bpf_map_lookup_elem(masks, &opk) : NULL;
}

/* The address key of @op for an IPv6 address (four words as the ctx gives them) or an IPv4
 * one (@v6 false: @a3 only, mapped as ::ffff:a.b.c.d); kept in w (the stack is nearly full). */
static __always_inline struct st_lpm_addr_key *net_key(struct guard_work *w, __u8 op, bool v6,
						       __u32 a0, __u32 a1, __u32 a2, __u32 a3)
{
	struct st_lpm_addr_key *ak = &w->addr_key;
	__builtin_memset(ak, 0, sizeof(*ak));
	ak->prefixlen = 32 + 128;
	ak->data[0] = op;
	if (v6) {
		__builtin_memcpy(&ak->data[4], &a0, 4);
		__builtin_memcpy(&ak->data[8], &a1, 4);
		__builtin_memcpy(&ak->data[12], &a2, 4);
	} else {
		ak->data[14] = 0xff;
		ak->data[15] = 0xff;
	}
	__builtin_memcpy(&ak->data[16], &a3, 4);
	return ak;
}

/* The record of a network decision about the address in w's key; returns the action taken
 * (decide_report_as), 0 if the caller must deny. */
static __always_inline int report_net(struct guard_work *w, struct pathbuf *pb,
				      struct st_verdict *v, struct st_pol_masks *m,
				      struct st_guard_cfg *cfg, __u8 op, bool v6, __u32 proto,
				      __u16 port, __u16 flags)
{
	v->family = v6 ? AF_INET6 : AF_INET;
	v->protocol = proto;
	v->port = port;
	__builtin_memcpy(v->addr, &w->addr_key.data[4], 16);
	v->path_len = 0;
	v->hdr.flags = flags;
	__u8 action = decide_report_as(w, pb, v, m, cfg, op, ST_MECH_CGROUP_SOCK);
	return action == ST_ACT_DENY || action == ST_ACT_KILL ? 0 : 1;
}

/* Returns 1 to allow, 0 to deny (the caller gets EPERM); @flags go to the verdict record. */
static __always_inline int judge_sock(struct bpf_sock_addr *ctx, __u8 op, bool v6, __u16 flags)
{
	struct st_guard_cfg *cfg;
	struct st_pol_masks *m = begin(&cfg, op);
	if (!m)
		return 1; /* no rule guards this op: the common, cheap path */
	__u32 slot = cfg->slot & 1;
	struct guard_work *w = get_work();
	struct pathbuf *pb = get_pathbuf();
	struct st_verdict *v = get_scratch();
	if (!w || !pb || !v)
		return 1;
	struct st_lpm_addr_key *ak;
	if (v6) /* the ctx allows 4-byte loads only */
		ak = net_key(w, op, true, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2],
			     ctx->user_ip6[3]);
	else
		ak = net_key(w, op, false, 0, 0, 0, ctx->user_ip4);
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u32 proto = ctx->protocol;
	if (op == ST_OP_BIND && port == 0) {
		/* the kernel picks the port after this hook: post_bind4/6 judge that one */
		__u8 *asked = bpf_sk_storage_get(&st_autobind, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (asked) {
			*asked = 1;
			return 1;
		} /* no storage: judged here as port 0 (address rules still apply) */
	} else if (op == ST_OP_BIND) {
		/* a bind(0) that failed before post_bind left its mark: not this bind's */
		__u8 *asked = bpf_sk_storage_get(&st_autobind, ctx->sk, 0, 0);
		if (asked)
			*asked = 0;
	}
	bool alias = op == ST_OP_CONNECT && unspecified_peer(w);
	if (!fold_net_target(w, m, slot, op, ak, alias ? &w->alias_key : NULL, port,
			     proto_family(proto)))
		return 1; /* no rule targets this address/port: skip the subject work */
	return report_net(w, pb, v, m, cfg, op, v6, proto, port, flags);
}

SEC("cgroup/connect4")
int st_guard_connect4(struct bpf_sock_addr *ctx) { return judge_sock(ctx, ST_OP_CONNECT, false, 0); }

SEC("cgroup/connect6")
int st_guard_connect6(struct bpf_sock_addr *ctx) { return judge_sock(ctx, ST_OP_CONNECT, true, 0); }

/*
 * A datagram sent with an address (sendto, sendmsg/sendmmsg with msg_name, also on a connected
 * UDP socket) reaches its peer without connect(2): connect rules judge it here, through the
 * same tables. The kernel runs these for UDP only (v4-mapped v6 destinations come to sendmsg4).
 */
SEC("cgroup/sendmsg4")
int st_guard_sendmsg4(struct bpf_sock_addr *ctx)
{
	return judge_sock(ctx, ST_OP_CONNECT, false, ST_F_SENDMSG);
}

SEC("cgroup/sendmsg6")
int st_guard_sendmsg6(struct bpf_sock_addr *ctx)
{
	return judge_sock(ctx, ST_OP_CONNECT, true, ST_F_SENDMSG);
}

SEC("cgroup/bind4")
int st_guard_bind4(struct bpf_sock_addr *ctx) { return judge_sock(ctx, ST_OP_BIND, false, 0); }

SEC("cgroup/bind6")
int st_guard_bind6(struct bpf_sock_addr *ctx) { return judge_sock(ctx, ST_OP_BIND, true, 0); }

/*
 * bind(2) to port 0: the kernel picks a port of ip_local_port_range (which IP_LOCAL_PORT_RANGE,
 * any user's, narrows to one) after bind4/6 ran. post_bind4/6 run once it is picked, for binds
 * that bind4/6 marked as asking for port 0, and judge that port by the same tables; returning 0
 * releases it and the caller gets EPERM. A port picked by listen, connect or sendto on an
 * unbound socket (inet_autobind, inet_csk_listen_start) runs no hook: policy check --host says
 * so for the rule.
 */
static __always_inline int judge_post_bind(struct bpf_sock *sk, bool v6)
{
	__u8 *asked = bpf_sk_storage_get(&st_autobind, sk, 0, 0);
	if (!asked || !*asked)
		return 1;
	*asked = 0;
	struct st_guard_cfg *cfg;
	struct st_pol_masks *m = begin(&cfg, ST_OP_BIND);
	if (!m)
		return 1;
	__u32 slot = cfg->slot & 1;
	struct guard_work *w = get_work();
	struct pathbuf *pb = get_pathbuf();
	struct st_verdict *v = get_scratch();
	if (!w || !pb || !v)
		return 1;
	struct st_lpm_addr_key *ak;
	if (v6)
		ak = net_key(w, ST_OP_BIND, true, sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2],
			     sk->src_ip6[3]);
	else
		ak = net_key(w, ST_OP_BIND, false, 0, 0, 0, sk->src_ip4);
	__u16 port = (__u16)sk->src_port; /* host order */
	__u32 proto = sk->protocol;
	if (!fold_net_target(w, m, slot, ST_OP_BIND, ak, NULL, port, proto_family(proto)))
		return 1;
	return report_net(w, pb, v, m, cfg, ST_OP_BIND, v6, proto, port, ST_F_AUTOBIND);
}

SEC("cgroup/post_bind4")
int st_guard_post_bind4(struct bpf_sock *sk) { return judge_post_bind(sk, false); }

SEC("cgroup/post_bind6")
int st_guard_post_bind6(struct bpf_sock *sk) { return judge_post_bind(sk, true); }

/*
 * Datagrams no sock_addr hook sees, judged as they leave by connect rules (the same tables):
 * - UDP-Lite on a connected socket: its connect(2) runs no hook (udplite_prot has no
 *   pre_connect), and sendmsg4/6 run only for a datagram with an address. Judged by the peer
 *   it is connected to, not the packet's destination: a sticky IPv6 routing header (any
 *   user may set a segment routing one) puts its first segment there (red team 2026-12-08);
 *   one sent elsewhere with an address was judged by sendmsg too;
 * - ICMP echo from a ping socket (socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP), open to the groups
 *   in net.ipv4.ping_group_range) sent with an address: its connect(2) is judged, sendto is not.
 * Both are sent in the sending task's context (udp_sendmsg, ping_v4/v6_sendmsg), so the
 * subject is the caller; returning 0 drops the packet and the call fails with EPERM. Every
 * other packet (TCP, UDP, a ping to the peer connect judged) costs two loads and compares.
 */
static __always_inline int judge_egress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 1;
	__u32 proto = sk->protocol;
	bool lite = proto == IPPROTO_UDPLITE;
	if (!lite && proto != IPPROTO_ICMP && proto != IPPROTO_ICMPV6)
		return 1;
	if (lite && sk->state != BPF_TCP_ESTABLISHED)
		return 1; /* an unconnected datagram has an address: sendmsg4/6 judged it */
	__u16 dst_port = bpf_ntohs((__u16)sk->dst_port);
	struct st_guard_cfg *cfg;
	struct st_pol_masks *m = begin(&cfg, ST_OP_CONNECT);
	if (!m)
		return 1;
	__u32 slot = cfg->slot & 1;
	struct guard_work *w = get_work();
	struct pathbuf *pb = get_pathbuf();
	struct st_verdict *v = get_scratch();
	if (!w || !pb || !v)
		return 1;

	bool v6 = skb->protocol == bpf_htons(ETH_P_IPV6);
	bool connected = sk->state == BPF_TCP_ESTABLISHED;
	bool to_peer; /* to the address the socket is connected to */
	/* the packet's destination goes straight into the key: no stack left for a copy */
	struct st_lpm_addr_key *ak = net_key(w, ST_OP_CONNECT, v6, 0, 0, 0, 0);
	if (v6) {
		/* the ctx allows constant-offset loads only: one at a time, before comparing */
		__u32 d0 = sk->dst_ip6[0], d1 = sk->dst_ip6[1];
		__u32 d2 = sk->dst_ip6[2], d3 = sk->dst_ip6[3];
		__u32 *a = (__u32 *)&ak->data[4];
		if (bpf_skb_load_bytes(skb, 24, a, 16))
			return 0; /* no destination to judge: refuse */
		to_peer = connected && a[0] == d0 && a[1] == d1 && a[2] == d2 && a[3] == d3;
	} else if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u32 d = sk->dst_ip4;
		if (bpf_skb_load_bytes(skb, 16, &ak->data[16], 4))
			return 0;
		to_peer = connected && *(__u32 *)&ak->data[16] == d;
	} else {
		return 1;
	}
	if (!lite && to_peer)
		return 1; /* ping to its peer: connect judged it */
	if (lite) { /* the peer connect(2) named, whatever the header says */
		if (v6) {
			__u32 *a = (__u32 *)&ak->data[4];
			a[0] = sk->dst_ip6[0];
			a[1] = sk->dst_ip6[1];
			a[2] = sk->dst_ip6[2];
			a[3] = sk->dst_ip6[3];
		} else {
			*(__u32 *)&ak->data[16] = sk->dst_ip4;
		}
	}
	__u16 port = lite ? dst_port : 0;
	if (!fold_net_target(w, m, slot, ST_OP_CONNECT, ak, NULL, port, proto_family(proto)))
		return 1;
	return report_net(w, pb, v, m, cfg, ST_OP_CONNECT, v6, proto, port, ST_F_SENDMSG);
}

SEC("cgroup_skb/egress")
int st_guard_egress(struct __sk_buff *skb) { return judge_egress(skb); }

/* ---- lineage: rules that follow a binary's descendants ---- */

static __always_inline bool lineage_on(void)
{
	__u32 zero = 0;
	struct st_guard_cfg *cfg = bpf_map_lookup_elem(&st_guard_cfg, &zero);
	return cfg && (cfg->flags & ST_GUARD_LINEAGE);
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(st_guard_fork, struct task_struct *parent, struct task_struct *child)
{
	if (!lineage_on())
		return 0;
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	if (BPF_CORE_READ(child, pid) != ctgid)
		return 0;
	__u8 ops[GUARDED_OPS] = {ST_OP_CONNECT, ST_OP_BIND};
	for (int i = 0; i < GUARDED_OPS; i++) {
		struct st_lineage_key pk = {.tgid = BPF_CORE_READ(parent, tgid), .op = ops[i]};
		struct st_lineage *pl = bpf_map_lookup_elem(&st_lineage, &pk);
		if (!pl)
			continue;
		struct st_lineage_key ck = {.tgid = ctgid, .op = ops[i]};
		bpf_map_update_elem(&st_lineage, &ck, pl, BPF_ANY);
	}
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(st_guard_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	if (!lineage_on())
		return 0;
	__u32 zero = 0;
	struct st_guard_cfg *cfg = bpf_map_lookup_elem(&st_guard_cfg, &zero);
	struct guard_work *w = get_work();
	struct pathbuf *pb = get_pathbuf();
	__u8 *rec = get_scratch();
	if (!cfg || !w || !pb || !rec)
		return 0;
	void *exe_map = inner(&st_pol_exe, cfg->slot & 1);
	if (!exe_map)
		return 0;
	struct path exe_path = BPF_CORE_READ(bprm, file, f_path);
	bool truncated = false;
	__u32 n = put_walked(rec, pb, &exe_path, &truncated);
	__u32 len = n + 1;
	if (len > sizeof(w->exe_key.data))
		len = sizeof(w->exe_key.data);
	bpf_probe_read_kernel(&w->exe_key.data[1], sizeof(w->exe_key.data) - 1, rec);
	w->exe_key.prefixlen = len * 8;
	__u32 tgid = BPF_CORE_READ(task, tgid);
	__u8 ops[GUARDED_OPS] = {ST_OP_CONNECT, ST_OP_BIND};
	for (int i = 0; i < GUARDED_OPS; i++) {
		w->exe_key.data[0] = ops[i];
		struct st_pol_exe *exe = bpf_map_lookup_elem(exe_map, &w->exe_key);
		if (!exe)
			continue;
		struct st_lineage_key lk = {.tgid = tgid, .op = ops[i]};
		struct st_lineage *cur = bpf_map_lookup_elem(&st_lineage, &lk);
		if (cur) {
			for (int j = 0; j < ST_MASK_WORDS; j++) {
				cur->inherit.w[j] |= exe->inherit.w[j];
				cur->xinherit.w[j] |= exe->xinherit.w[j];
			}
		} else {
			struct st_lineage *fresh = (struct st_lineage *)rec; /* scratch: 256 bytes */
			__builtin_memcpy(&fresh->inherit, &exe->inherit, sizeof(fresh->inherit));
			__builtin_memcpy(&fresh->xinherit, &exe->xinherit, sizeof(fresh->xinherit));
			bpf_map_update_elem(&st_lineage, &lk, fresh, BPF_ANY);
		}
	}
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(st_guard_exit, struct task_struct *task)
{
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	__u32 tgid = BPF_CORE_READ(task, tgid);
	for (__u32 op = ST_OP_CONNECT; op <= ST_OP_BIND; op++) {
		struct st_lineage_key lk = {.tgid = tgid, .op = op};
		bpf_map_delete_elem(&st_lineage, &lk);
	}
	return 0;
}

/* ---- BPF-LSM (hosts where `sealtrail doctor` says it loads): deny before the effect ----
 *
 * Every file operation and exec, judged on the path the kernel resolved (a dentry walk of the
 * object, so symlinks, relative paths and ".." are already gone), through the same tables
 * and verdict tail as the cgroup hooks. Returning -EPERM denies; kill = deny + SIGKILL.
 */

#define EPERM 1

/* Start a decision for a file op: the op's masks and the work areas; NULL = no rule. */
/*
 * w->t |= the paths-table mask of @path (walked into the record's data at @dst, which then
 * holds it for the report); returns the path's length (NUL included).
 */
static __always_inline __u32 or_path_target(struct guard_work *w, struct pathbuf *pb, __u32 slot,
					    __u8 op, const struct path *path, __u8 *dst)
{
	bool truncated = false;
	__u32 n = put_walked(dst, pb, path, &truncated);
	__u32 len = n + 1;
	if (len > sizeof(w->path_key.data))
		len = sizeof(w->path_key.data);
	w->path_key.data[0] = op;
	bpf_probe_read_kernel(&w->path_key.data[1], sizeof(w->path_key.data) - 1, dst);
	w->path_key.prefixlen = len * 8;
	void *paths = inner(&st_pol_paths, slot);
	struct st_mask *pm = paths ? bpf_map_lookup_elem(paths, &w->path_key) : NULL;
	if (pm)
		m_or(&w->t, pm);
	/* the same file under another name (a hard link) is judged by the name the rule uses */
	struct inode *inode = BPF_CORE_READ(path, dentry, d_inode);
	if (inode) {
		struct st_inode_key ik = {.op = op};
		ik.dev = BPF_CORE_READ(inode, i_sb, s_dev);
		ik.ino = BPF_CORE_READ(inode, i_ino);
		void *inodes = inner(&st_pol_inodes, slot);
		struct st_mask *im = inodes ? bpf_map_lookup_elem(inodes, &ik) : NULL;
		if (im)
			m_or(&w->t, im);
	}
	return n;
}

/* not an access: the object has no name (file_fileless), so exec rules' fileless slot matches */
#define OBJ_FILELESS 0x10

/* Judge a file op on one or two objects (rename: old and new); returns 0 or -EPERM. @flags
 * as for decide_report_as; @access_slots may carry OBJ_FILELESS. */
static __always_inline int judge_file_as(__u8 op, const struct path *p1, const struct path *p2,
					 __u32 access_slots, __u16 flags)
{
	struct st_guard_cfg *cfg;
	struct st_pol_masks *m = begin(&cfg, op);
	if (!m)
		return 0;
	struct guard_work *w = get_work();
	struct pathbuf *pb = get_pathbuf();
	struct st_verdict *v = get_scratch();
	if (!w || !pb || !v)
		return 0;
	__u32 slot = cfg->slot & 1;
	__builtin_memset(&w->t, 0, sizeof(w->t));
	__u8 *data = (__u8 *)(v + 1);
	__u32 n = or_path_target(w, pb, slot, op, p1, data);
	if (p2) {
		/* the report names the first path; the second only adds rules */
		or_path_target(w, pb, slot, op, p2, data + ST_PATH_MAX);
	}
	if (access_slots & OBJ_FILELESS)
		m_or(&w->t, &m->slot[ST_SLOT_EXEC_FILELESS]);
	if (access_slots & 0xf) {
		__builtin_memset(&w->tmp, 0, sizeof(w->tmp));
		for (int a = 0; a < 4; a++)
			if (access_slots & (1u << a))
				m_or(&w->tmp, &m->slot[ST_SLOT_ACCESS_READ + a]);
		m_and(&w->t, &w->tmp);
	}
	if (m_empty(&w->t))
		return 0;
	v->family = 0;
	v->protocol = 0;
	v->port = 0;
	__builtin_memset(v->addr, 0, sizeof(v->addr));
	v->path_len = n;
	v->hdr.flags = flags;
	__u8 action = decide_report_as(w, pb, v, m, cfg, op, ST_MECH_LSM);
	return action == ST_ACT_DENY || action == ST_ACT_KILL ? -EPERM : 0;
}

static __always_inline int judge_file(__u8 op, const struct path *p1, const struct path *p2,
				      __u32 access_slots)
{
	return judge_file_as(op, p1, p2, access_slots, 0);
}

/* access kinds of an open, as bits of ST_SLOT_ACCESS_{READ,WRITE,CREATE,TRUNCATE} */
static __always_inline __u32 open_access(__u32 flags)
{
	__u32 acc = flags & 3, bits = 0;
	if (acc == 0 || acc == 2)
		bits |= 1;
	if (acc == 1 || acc == 2)
		bits |= 2;
	if (flags & 01000) /* O_TRUNC */
		bits |= 8;
	return bits;
}

/* a child dentry of a directory path, as a struct path (for the dentry walk) */
static __always_inline struct path child_path(const struct path *dir, struct dentry *dentry)
{
	struct path p = {};
	p.mnt = BPF_CORE_READ(dir, mnt);
	p.dentry = dentry;
	return p;
}

SEC("lsm/bprm_check_security")
int BPF_PROG(st_lsm_exec, struct linux_binprm *bprm, int ret)
{
	if (ret)
		return ret;
	struct file *f = BPF_CORE_READ(bprm, file);
	struct path p = BPF_CORE_READ(f, f_path);
	return judge_file(ST_OP_EXEC, &p, NULL, file_fileless(f) ? OBJ_FILELESS : 0);
}

#define PROT_EXEC 0x4
#define VM_EXEC 0x4

/*
 * Code mapped from a file is judged like an exec of that file (exec rules, the mapping process
 * as subject): `ld.so /denied/bin` execs only the loader, which then maps the binary with
 * PROT_EXEC; a memfd mapped executable is fileless code too. The process's own binary is
 * skipped: the kernel maps it during the exec that bprm_check_security already judged.
 */
static __always_inline int judge_exec_mapping(struct file *f)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	struct inode *inode = BPF_CORE_READ(f, f_inode);
	if (!inode || inode == BPF_CORE_READ(task, mm, exe_file, f_inode))
		return 0;
	struct path p = BPF_CORE_READ(f, f_path);
	return judge_file(ST_OP_EXEC, &p, NULL, file_fileless(f) ? OBJ_FILELESS : 0);
}

SEC("lsm/mmap_file")
int BPF_PROG(st_lsm_mmap_file, struct file *file, unsigned long reqprot, unsigned long prot,
	     unsigned long flags, int ret)
{
	if (ret)
		return ret;
	if (!file || !(prot & PROT_EXEC))
		return 0;
	return judge_exec_mapping(file);
}

SEC("lsm/file_mprotect")
int BPF_PROG(st_lsm_file_mprotect, struct vm_area_struct *vma, unsigned long reqprot,
	     unsigned long prot, int ret)
{
	if (ret)
		return ret;
	if (!(prot & PROT_EXEC) || (BPF_CORE_READ(vma, vm_flags) & VM_EXEC))
		return 0; /* not becoming executable */
	struct file *f = BPF_CORE_READ(vma, vm_file);
	return f ? judge_exec_mapping(f) : 0;
}

SEC("lsm/file_open")
int BPF_PROG(st_lsm_file_open, struct file *file, int ret)
{
	if (ret)
		return ret;
	struct path p = BPF_CORE_READ(file, f_path);
	return judge_file(ST_OP_OPEN, &p, NULL, open_access(BPF_CORE_READ(file, f_flags)));
}

/* open(O_CREAT) of a new file: may_o_create() asks security_path_mknod before creating it */
SEC("lsm/path_mknod")
int BPF_PROG(st_lsm_create, const struct path *dir, struct dentry *dentry, umode_t mode,
	     unsigned int dev, int ret)
{
	if (ret)
		return ret;
	struct path p = child_path(dir, dentry);
	return judge_file(ST_OP_OPEN, &p, NULL, 4 /* create */);
}

/*
 * truncate(2) and ftruncate(2) change a file without opening it: open rules guarding truncate
 * judge them here. Kernels before 6.2 call path_truncate for both (and for O_TRUNC opens);
 * later ones call file_truncate for ftruncate and O_TRUNC opens (the agent loads that program
 * only where the kernel has the hook).
 */
SEC("lsm/path_truncate")
int BPF_PROG(st_lsm_truncate, const struct path *path, int ret)
{
	if (ret)
		return ret;
	return judge_file_as(ST_OP_OPEN, path, NULL, 8 /* truncate */, ST_F_TRUNCATE);
}

SEC("lsm/file_truncate")
int BPF_PROG(st_lsm_ftruncate, struct file *file, int ret)
{
	if (ret)
		return ret;
	struct path p = BPF_CORE_READ(file, f_path);
	return judge_file_as(ST_OP_OPEN, &p, NULL, 8 /* truncate */, ST_F_TRUNCATE);
}

SEC("lsm/path_unlink")
int BPF_PROG(st_lsm_unlink, const struct path *dir, struct dentry *dentry, int ret)
{
	if (ret)
		return ret;
	struct path p = child_path(dir, dentry);
	return judge_file(ST_OP_UNLINK, &p, NULL, 0);
}

SEC("lsm/path_rename")
int BPF_PROG(st_lsm_rename, const struct path *old_dir, struct dentry *old_dentry,
	     const struct path *new_dir, struct dentry *new_dentry, unsigned int flags, int ret)
{
	if (ret)
		return ret;
	struct path from = child_path(old_dir, old_dentry);
	struct path to = child_path(new_dir, new_dentry);
	return judge_file(ST_OP_RENAME, &from, &to, 0);
}

SEC("lsm/path_chmod")
int BPF_PROG(st_lsm_chmod, const struct path *path, umode_t mode, int ret)
{
	if (ret)
		return ret;
	return judge_file(ST_OP_CHMOD, path, NULL, 0);
}

SEC("lsm/path_chown")
int BPF_PROG(st_lsm_chown, const struct path *path, __u32 uid, __u32 gid, int ret)
{
	if (ret)
		return ret;
	return judge_file(ST_OP_CHOWN, path, NULL, 0);
}

/* listen(2): the local address and port of the socket (there is no cgroup hook for it) */
SEC("lsm/socket_listen")
int BPF_PROG(st_lsm_listen, struct socket *sock, int backlog, int ret)
{
	if (ret)
		return ret;
	struct st_guard_cfg *cfg;
	struct st_pol_masks *m = begin(&cfg, ST_OP_LISTEN);
	if (!m)
		return 0;
	struct guard_work *w = get_work();
	struct pathbuf *pb = get_pathbuf();
	struct st_verdict *v = get_scratch();
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!w || !pb || !v || !sk)
		return 0;
	__u32 slot = cfg->slot & 1;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	struct st_lpm_addr_key *ak = &w->addr_key; /* the stack is full: keep the key in w */
	__builtin_memset(ak, 0, sizeof(*ak));
	ak->prefixlen = 32 + 128;
	ak->data[0] = ST_OP_LISTEN;
	if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&ak->data[4], sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
	} else if (family == AF_INET) {
		__u32 a = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		ak->data[14] = 0xff;
		ak->data[15] = 0xff;
		__builtin_memcpy(&ak->data[16], &a, 4);
	} else {
		return 0;
	}
	__u16 port = BPF_CORE_READ(sk, __sk_common.skc_num);
	__u32 proto = BPF_CORE_READ(sk, sk_protocol);
	if (!fold_net_target(w, m, slot, ST_OP_LISTEN, ak, NULL, port, proto_family(proto)))
		return 0;
	v->family = family;
	v->protocol = proto;
	v->port = port;
	__builtin_memcpy(v->addr, &ak->data[4], 16);
	v->path_len = 0;
	__u8 action = decide_and_report(w, pb, v, m, cfg, ST_OP_LISTEN, ST_MECH_LSM);
	return action == ST_ACT_DENY || action == ST_ACT_KILL ? -EPERM : 0;
}

/* ---- hosts without BPF-LSM: fileless exec (exec rules with targets.fileless) ----
 *
 * sched_prepare_exec (Linux 6.10+) runs inside execve before the new image is set up, with the
 * caller still current (its exe, uid, cgroup are the subject, as in bprm_check_security) and
 * bprm->file the binary. No hook here can deny, but a SIGKILL sent now ends the process before
 * one instruction of the new image runs. Only the fileless slot is judged: path exec rules
 * are fanotify's on these hosts. Loaded only where BPF-LSM is not (agent/enforce/guard.py).
 */
SEC("tp_btf/sched_prepare_exec")
int BPF_PROG(st_fileless_exec, struct task_struct *task, struct linux_binprm *bprm)
{
	struct st_guard_cfg *cfg;
	struct st_pol_masks *m = begin(&cfg, ST_OP_EXEC);
	if (!m || m_empty(&m->slot[ST_SLOT_EXEC_FILELESS]))
		return 0;
	struct file *f = BPF_CORE_READ(bprm, file);
	if (!file_fileless(f))
		return 0;
	struct guard_work *w = get_work();
	struct pathbuf *pb = get_pathbuf();
	struct st_verdict *v = get_scratch();
	if (!w || !pb || !v)
		return 0;
	m_copy(&w->t, &m->slot[ST_SLOT_EXEC_FILELESS]);
	struct path p = BPF_CORE_READ(f, f_path);
	bool truncated = false;
	v->path_len = put_walked((__u8 *)(v + 1), pb, &p, &truncated);
	v->family = 0;
	v->protocol = 0;
	v->port = 0;
	__builtin_memset(v->addr, 0, sizeof(v->addr));
	decide_and_report(w, pb, v, m, cfg, ST_OP_EXEC, ST_MECH_EXEC_TRACEPOINT);
	return 0;
}
