// SPDX-License-Identifier: GPL-2.0-only
/*
 * sealtrail observation probes: process lifecycle (tp_btf sched_*), file and network
 * syscalls (tracepoints syscalls/sys_{enter,exit}_*). Everything attaches on stock kernels
 * (Debian 12's 6.1 and later) and on the development kernel, which refuses trampolines.
 *
 * Work on a miss is one array lookup: ops nobody asked for return before touching anything
 * (an open's sys_exit also removes what its sys_enter saved).
 * File records are built at sys_exit, where the result is known and, for a successful open,
 * the kernel's own view of the file can be read from the new fd; the arguments are read there
 * from the task's saved user registers (bpf_task_pt_regs). Only the open family also has a
 * sys_enter program: it saves the arguments in st_pending while the open runs, because the
 * fanotify mechanism asks there which flags the open it is judging has, and must get no
 * answer for an open the kernel makes outside an open syscall (io_uring task work, a core
 * dump, an io-wq worker: the saved registers then show an older syscall). Network syscalls
 * save their arguments at sys_enter (pointers only) in st_pending too.
 */
/* make probes also builds this file with -DST_COMPAT: events-compat.bpf.o (common.h) */
#ifndef ST_COMPAT
#define ST_BTF_CAST 1
#endif
#include "common.h"

char LICENSE[] SEC("license") = "GPL";


const volatile struct st_rodata st_rodata SEC(".rodata.st") = {};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct st_config);
} st_config SEC(".maps");


struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__type(key, struct st_prefix_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} st_path_prefixes SEC(".maps");

/*
 * The first components st_path_prefixes can match (userspace derives them from its keys):
 * a resolved file whose path starts with none of them is dropped before its path is built.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__type(key, struct st_prefix_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} st_top_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct st_pending);
} st_pending SEC(".maps");


static __always_inline struct st_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&st_config, &zero);
}

static __always_inline bool wanted(__u32 op)
{
	struct st_config *cfg = get_config();
	if (!cfg || !(cfg->op_mask & (1u << op)))
		return false;
	return (bpf_get_current_pid_tgid() >> 32) != st_rodata.self_tgid;
}

/* Kernel-resolved directory for a relative path: the cwd, or the dirfd's file. */
static __always_inline __u32 put_base(void *dst, struct pathbuf *pb, long dirfd, bool *truncated)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	if (dirfd == AT_FDCWD) {
		struct path pwd = BPF_CORE_READ(task, fs, pwd);
		return put_walked(dst, pb, &pwd, truncated);
	}
	struct file *f = fd_file(task, dirfd);
	if (!f)
		return 0;
	struct path fpath = BPF_CORE_READ(f, f_path);
	return put_walked(dst, pb, &fpath, truncated);
}

/* ---------------- process lifecycle ---------------- */

SEC("tp_btf/sched_process_exec")
int BPF_PROG(st_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	if (!wanted(ST_OP_EXEC))
		return 0;
	struct st_exec *e = get_scratch();
	struct pathbuf *pb = get_pathbuf();
	if (!e || !pb)
		return 0;
	bool truncated = false;
	__u8 *data = (__u8 *)(e + 1);
	__u32 off = 0;

	struct path exe_path = BPF_CORE_READ(bprm, file, f_path);
	__u32 n = put_walked(data, pb, &exe_path, &truncated);
	e->exe_len = n;
	off = n;

	long r = bpf_probe_read_kernel_str(data + off, ST_PATH_MAX, BPF_CORE_READ(bprm, filename));
	n = r > 0 ? r : 0;
	if (n >= ST_PATH_MAX)
		truncated = true;
	e->filename_len = n;
	off += n & (ST_PATH_MAX * 2 - 1);
	if (off > 2 * ST_PATH_MAX)
		return 0;

	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	unsigned long arg_start = BPF_CORE_READ(mm, arg_start);
	unsigned long arg_end = BPF_CORE_READ(mm, arg_end);
	__u64 alen = arg_end - arg_start;
	if (alen > ST_ARGS_MAX) {
		alen = ST_ARGS_MAX;
		truncated = true;
	}
	if (bpf_probe_read_user(data + off, alen, (void *)arg_start))
		alen = 0;
	e->args_len = alen;
	off += alen;
	if (off > 2 * ST_PATH_MAX + ST_ARGS_MAX)
		return 0;
	e->argc = BPF_CORE_READ(bprm, argc);

	struct path pwd = BPF_CORE_READ(task, fs, pwd);
	n = put_walked(data + off, pb, &pwd, &truncated);
	e->cwd_len = n;
	off += n;
	e->exec_flags = file_fileless(BPF_CORE_READ(bprm, file)) ? ST_EXEC_FILELESS : 0;

	fill_hdr(&e->hdr, ST_OP_EXEC, sizeof(*e) + off);
	e->hdr.flags = ST_F_PATH_RESOLVED | (truncated ? ST_F_TRUNCATED : 0);
	submit(e, sizeof(*e) + off, ST_OP_EXEC);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(st_fork, struct task_struct *parent, struct task_struct *child)
{
	if (!wanted(ST_OP_FORK))
		return 0;
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0; /* a new thread, not a new process */
	struct st_proc *e = get_scratch();
	if (!e)
		return 0;
	fill_hdr(&e->hdr, ST_OP_FORK, sizeof(*e));
	e->hdr.flags = 0;
	e->child_pid = BPF_CORE_READ(child, tgid);
	e->exit_code = 0;
	e->start_ns = 0;
	submit(e, sizeof(*e), ST_OP_FORK);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(st_exit, struct task_struct *task)
{
	if (!wanted(ST_OP_EXIT))
		return 0;
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0; /* other threads of the process still run */
	struct st_proc *e = get_scratch();
	if (!e)
		return 0;
	fill_hdr(&e->hdr, ST_OP_EXIT, sizeof(*e));
	e->hdr.flags = 0;
	e->child_pid = 0;
	e->exit_code = BPF_CORE_READ(task, exit_code);
	e->start_ns = BPF_CORE_READ(task, start_boottime);
	submit(e, sizeof(*e), ST_OP_EXIT);
	return 0;
}

/* ---------------- syscalls: save at enter, build at exit ---------------- */

static __always_inline int save_args(struct trace_event_raw_sys_enter *ctx, __u32 op, __u32 variant,
				     const int nargs)
{
	if (!wanted(op))
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct st_pending p = {};
	p.op = op;
	p.variant = variant;
	/*
	 * One load per arg, and only the syscall's own args: the kernel refuses to attach a
	 * program that reads past the tracepoint's record (EACCES), and the verifier refuses
	 * loads through a modified ctx pointer.
	 */
	p.args[0] = ctx->args[0];
	if (nargs > 1)
		p.args[1] = ctx->args[1];
	if (nargs > 2)
		p.args[2] = ctx->args[2];
	if (nargs > 3)
		p.args[3] = ctx->args[3];
	if (nargs > 4)
		p.args[4] = ctx->args[4];
	bpf_map_update_elem(&st_pending, &tid, &p, BPF_ANY);
	return 0;
}

/* Put a user string (as passed) at dst; sets relative/truncated. */
static __always_inline __u32 put_user_path(void *dst, __u64 uptr, bool *relative, bool *truncated)
{
	long r = bpf_probe_read_user_str(dst, ST_PATH_MAX, (const void *)uptr);
	if (r <= 0) {
		*(__u8 *)dst = 0;
		return 1;
	}
	if (r >= ST_PATH_MAX)
		*truncated = true;
	if (*(__u8 *)dst != '/')
		*relative = true;
	return r;
}

/* Is this path outside every st_path_prefixes entry? */
static __always_inline bool path_filtered(struct pathbuf *pb, const __u8 *path, __u32 len)
{
	if (len > ST_FILTER_PREFIX_MAX)
		len = ST_FILTER_PREFIX_MAX;
	/*
	 * Constant-size copy (bytes past the string are ignored through prefixlen). The key
	 * includes the NUL, so "/etc\0" matches exactly /etc and "/etc/" everything below.
	 */
	bpf_probe_read_kernel(pb->key.data, ST_FILTER_PREFIX_MAX, path);
	pb->key.prefixlen = len * 8;
	return bpf_map_lookup_elem(&st_path_prefixes, &pb->key) == NULL;
}

/* The args this thread saved at sys_enter for @op, removed from the map; false if none. */
static __always_inline bool take_pending(struct st_pending *a, __u32 op)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct st_pending *p = bpf_map_lookup_elem(&st_pending, &tid);
	if (!p)
		return false;
	*a = *p;
	bpf_map_delete_elem(&st_pending, &tid);
	return a->op == op;
}

/* Does the path filter drop @f, told by its path's first component alone (st_top_names)? */
static __always_inline bool first_component_drops(struct pathbuf *pb, struct file *f)
{
	return top_name_file(pb, f) && !bpf_map_lookup_elem(&st_top_names, &pb->key);
}

/*
 * The arguments of the syscall this task is leaving, from its saved user registers: the
 * kernel does not write them back during a syscall (x86-64 returns in ax; arm64's x0 is
 * read as orig_x0 by the _SYSCALL macros), so they are the values the syscall used.
 */
static __always_inline void syscall_args(struct st_pending *a, __u32 op, __u32 variant,
					 const int nargs)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	a->op = op;
	a->variant = variant;
	/* regs is a BTF pointer: plain loads (CO-RE relocated), no helper call per register */
	a->args[0] = PT_REGS_PARM1_SYSCALL(regs);
	if (nargs > 1)
		a->args[1] = PT_REGS_PARM2_SYSCALL(regs);
	if (nargs > 2)
		a->args[2] = PT_REGS_PARM3_SYSCALL(regs);
	if (nargs > 3)
		a->args[3] = PT_REGS_PARM4_SYSCALL(regs);
	if (nargs > 4)
		a->args[4] = PT_REGS_PARM5_SYSCALL(regs);
}

static __always_inline int finish_file(struct trace_event_raw_sys_exit *ctx, __u32 op,
				       __u32 variant, const int nargs)
{
	if (op == ST_OP_OPEN) {
		/* always, wanted or not: the open is over, its flags must not outlive it */
		__u32 tid = (__u32)bpf_get_current_pid_tgid();
		bpf_map_delete_elem(&st_pending, &tid);
	}
	if (!wanted(op))
		return 0;
	struct pathbuf *pb = get_pathbuf();
	if (!pb)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	long ret = ctx->ret;
	struct st_config *cfg = get_config();
	bool filtered = cfg && (cfg->filter_ops & (1u << op));
	/*
	 * The common miss, first and cheap: a file opened whose path the filter below would
	 * drop, told by its first component (st_top_names) with pointer reads only, before
	 * anything else is read or built.
	 */
	bool opened = op == ST_OP_OPEN && ret >= 0;
	if (filtered && opened) {
		struct file *f = fd_file(task, ret);
		if (f && first_component_drops(pb, f))
			return 0;
	}
	struct st_pending a = {};
	syscall_args(&a, op, variant, nargs);

	struct st_file *e = get_scratch();
	if (!e)
		return 0;
	__u8 *data = (__u8 *)(e + 1);
	bool truncated = false, relative = false, relative2 = false, resolved = false;
	long dirfd = AT_FDCWD, dirfd2 = AT_FDCWD;
	__u64 upath = 0, upath2 = 0;
	long fd = -1;

	e->flags = 0;
	e->mode = 0;
	e->owner_uid = (__u32)-1;
	e->owner_gid = (__u32)-1;
	e->length = 0;
	switch (a.variant) {
	case ST_V_OPEN:
		upath = a.args[0]; e->flags = a.args[1]; e->mode = a.args[2];
		break;
	case ST_V_OPENAT:
		dirfd = (int)a.args[0]; upath = a.args[1]; e->flags = a.args[2]; e->mode = a.args[3];
		break;
	case ST_V_OPENAT2: {
		struct open_how how = {};
		bpf_probe_read_user(&how, sizeof(how), (void *)a.args[2]);
		dirfd = (int)a.args[0]; upath = a.args[1]; e->flags = how.flags; e->mode = how.mode;
		break;
	}
	case ST_V_OPEN_BY_HANDLE: /* no path argument: known only from the fd on success */
		e->flags = a.args[2];
		break;
	case ST_V_CREAT:
		upath = a.args[0]; e->flags = O_CREAT | O_WRONLY | O_TRUNC; e->mode = a.args[1];
		break;
	case ST_V_UNLINK:
		upath = a.args[0];
		break;
	case ST_V_UNLINKAT:
		dirfd = (int)a.args[0]; upath = a.args[1]; e->flags = a.args[2];
		break;
	case ST_V_RENAME:
		upath = a.args[0]; upath2 = a.args[1];
		break;
	case ST_V_RENAMEAT:
	case ST_V_RENAMEAT2:
		dirfd = (int)a.args[0]; upath = a.args[1]; dirfd2 = (int)a.args[2]; upath2 = a.args[3];
		e->flags = a.variant == ST_V_RENAMEAT2 ? a.args[4] : 0;
		break;
	case ST_V_CHMOD:
		upath = a.args[0]; e->mode = a.args[1];
		break;
	case ST_V_FCHMOD:
		fd = a.args[0]; e->mode = a.args[1];
		break;
	case ST_V_FCHMODAT:
	case ST_V_FCHMODAT2:
		dirfd = (int)a.args[0]; upath = a.args[1]; e->mode = a.args[2];
		break;
	case ST_V_CHOWN:
	case ST_V_LCHOWN:
		upath = a.args[0]; e->owner_uid = a.args[1]; e->owner_gid = a.args[2];
		break;
	case ST_V_FCHOWN:
		fd = a.args[0]; e->owner_uid = a.args[1]; e->owner_gid = a.args[2];
		break;
	case ST_V_FCHOWNAT:
		dirfd = (int)a.args[0]; upath = a.args[1]; e->owner_uid = a.args[2]; e->owner_gid = a.args[3];
		e->flags = a.args[4];
		break;
	case ST_V_TRUNCATE:
		upath = a.args[0]; e->length = a.args[1];
		break;
	case ST_V_FTRUNCATE: /* like fchmod: the path is the fd's file, as the kernel resolved it */
		fd = a.args[0]; e->length = a.args[1];
		break;
	default:
		return 0;
	}
	if (op == ST_OP_OPEN && ret >= 0)
		fd = ret;

	__u32 off = 0, n = 0;
	struct file *f = fd >= 0 ? fd_file(task, fd) : NULL;
	if (f) {
		/* the same first-component test for the fd of fchmod, fchown, ftruncate */
		if (filtered && !opened && first_component_drops(pb, f))
			return 0;
		struct path fpath = BPF_CORE_READ(f, f_path);
		n = put_walked(data, pb, &fpath, &truncated);
		resolved = n > 0;
	}
	if (!resolved)
		n = upath ? put_user_path(data, upath, &relative, &truncated) : 0;
	e->path_len = n;
	off = n & (ST_PATH_MAX * 2 - 1);
	if (off > ST_PATH_MAX)
		return 0;

	n = upath2 ? put_user_path(data + off, upath2, &relative2, &truncated) : 0;
	e->path2_len = n;
	off += n & (ST_PATH_MAX * 2 - 1);
	if (off > 2 * ST_PATH_MAX)
		return 0;

	n = relative ? put_base(data + off, pb, dirfd, &truncated) : 0;
	e->base_len = n;
	off += n & (ST_PATH_MAX * 2 - 1);
	if (off > 3 * ST_PATH_MAX)
		return 0;

	n = relative2 ? put_base(data + off, pb, dirfd2, &truncated) : 0;
	e->base2_len = n;
	off += n & (ST_PATH_MAX * 2 - 1);
	if (off > 4 * ST_PATH_MAX)
		return 0;

	/*
	 * The path filter, on absolute paths only: "a/b" relative to /x may lie under a prefix
	 * /x/a/ that its base /x is not under, so relative paths go to userspace, which joins
	 * and filters them. A rename is kept if either of its paths is wanted.
	 */
	if (filtered) {
		bool drop = !relative && path_filtered(pb, data, e->path_len);
		if (drop && op == ST_OP_RENAME)
			drop = !relative2 && path_filtered(pb, data + (e->path_len & (ST_PATH_MAX * 2 - 1)),
							   e->path2_len);
		if (drop)
			return 0;
	}

	e->ret = ret;
	fill_hdr(&e->hdr, op, sizeof(*e) + off);
	e->hdr.flags = (truncated ? ST_F_TRUNCATED : 0) | (resolved ? ST_F_PATH_RESOLVED : 0) |
		       (relative || relative2 ? ST_F_PATH_RELATIVE : 0);
	submit(e, sizeof(*e) + off, op);
	return 0;
}

/* Socket behind an fd, or NULL if the fd is not a socket. */
static __always_inline struct socket *fd_socket(struct task_struct *task, long fd)
{
	struct file *f = fd_file(task, fd);
	if (!f)
		return NULL;
	umode_t mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	return (struct socket *)BPF_CORE_READ(f, private_data);
}

static __always_inline void sock_local_remote(struct st_net *e, struct socket *sock)
{
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return;
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->protocol = BPF_CORE_READ(sk, sk_protocol);
	e->sock_type = BPF_CORE_READ(sk, sk_type);
	e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (e->family == AF_INET) {
		__u32 s = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__u32 d = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(e->saddr, &s, 4);
		__builtin_memcpy(e->daddr, &d, 4);
	} else if (e->family == AF_INET6) {
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
}

/* Read a user sockaddr_in/in6 into addr/port; returns its family, 0 if not INET. */
static __always_inline __u16 read_sockaddr(__u64 uptr, __u8 *addr, __u16 *port)
{
	struct sockaddr_in6 sa = {};
	if (!uptr || bpf_probe_read_user(&sa, sizeof(sa), (void *)uptr))
		return 0;
	*port = bpf_ntohs(sa.sin6_port);
	if (sa.sin6_family == AF_INET) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&sa;
		__builtin_memcpy(addr, &s4->sin_addr.s_addr, 4);
		return AF_INET;
	}
	if (sa.sin6_family == AF_INET6) {
		__builtin_memcpy(addr, sa.sin6_addr.in6_u.u6_addr8, 16);
		return AF_INET6;
	}
	return 0;
}

static __always_inline int finish_net(struct trace_event_raw_sys_exit *ctx, __u32 op)
{
	struct st_pending a;
	if (!take_pending(&a, op))
		return 0;

	struct st_net *e = get_scratch();
	if (!e)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	long ret = ctx->ret;
	__builtin_memset(e, 0, sizeof(*e));

	long fd = op == ST_OP_ACCEPT ? ret : (long)a.args[0];
	struct socket *sock = fd_socket(task, fd);
	if (sock)
		sock_local_remote(e, sock);

	if (op == ST_OP_CONNECT) {
		/* the address asked for, even if the connect failed */
		__u16 port = 0;
		__u16 fam = read_sockaddr(a.args[1], e->daddr, &port);
		if (!fam)
			return 0; /* AF_UNIX and friends: not network */
		e->family = fam;
		e->dport = port;
	} else if (op == ST_OP_BIND) {
		__u16 port = 0;
		__u8 addr[16] = {};
		__u16 fam = read_sockaddr(a.args[1], addr, &port);
		if (!fam)
			return 0;
		e->family = fam;
		__builtin_memcpy(e->saddr, addr, 16);
		if (ret != 0 || e->sport == 0)
			e->sport = port; /* on success the socket holds the real port (port 0 binds) */
		__builtin_memset(e->daddr, 0, 16);
		e->dport = 0;
	} else if (op == ST_OP_LISTEN) {
		e->backlog = a.args[1];
	}
	if (e->family != AF_INET && e->family != AF_INET6)
		return 0;
	e->ret = ret;
	fill_hdr(&e->hdr, op, sizeof(*e));
	e->hdr.flags = 0;
	submit(e, sizeof(*e), op);
	return 0;
}

#define ENTER(name, op, variant, nargs)                                                 \
	SEC("tp/syscalls/sys_enter_" #name)                                             \
	int st_enter_##name(struct trace_event_raw_sys_enter *ctx)                      \
	{                                                                               \
		return save_args(ctx, op, variant, nargs);                              \
	}
#define EXIT_FILE(name, op, variant, nargs)                                              \
	SEC("tp/syscalls/sys_exit_" #name)                                              \
	int st_exit_##name(struct trace_event_raw_sys_exit *ctx)                        \
	{                                                                               \
		return finish_file(ctx, op, variant, nargs);                            \
	}
#define EXIT_NET(name, op)                                                              \
	SEC("tp/syscalls/sys_exit_" #name)                                              \
	int st_exit_##name(struct trace_event_raw_sys_exit *ctx) { return finish_net(ctx, op); }

#define FILE_SYSCALL(name, nargs, op, variant) EXIT_FILE(name, op, variant, nargs)
/* an open: its arguments are in st_pending while it runs (module comment) */
#define OPEN_SYSCALL(name, nargs, variant)                                              \
	ENTER(name, ST_OP_OPEN, variant, nargs) EXIT_FILE(name, ST_OP_OPEN, variant, nargs)
#define NET_SYSCALL(name, nargs, op, variant) ENTER(name, op, variant, nargs) EXIT_NET(name, op)

OPEN_SYSCALL(open, 3, ST_V_OPEN)
OPEN_SYSCALL(openat, 4, ST_V_OPENAT)
OPEN_SYSCALL(openat2, 4, ST_V_OPENAT2)
OPEN_SYSCALL(creat, 2, ST_V_CREAT)
OPEN_SYSCALL(open_by_handle_at, 3, ST_V_OPEN_BY_HANDLE)
FILE_SYSCALL(unlink, 1, ST_OP_UNLINK, ST_V_UNLINK)
FILE_SYSCALL(unlinkat, 3, ST_OP_UNLINK, ST_V_UNLINKAT)
FILE_SYSCALL(rename, 2, ST_OP_RENAME, ST_V_RENAME)
FILE_SYSCALL(renameat, 4, ST_OP_RENAME, ST_V_RENAMEAT)
FILE_SYSCALL(renameat2, 5, ST_OP_RENAME, ST_V_RENAMEAT2)
FILE_SYSCALL(chmod, 2, ST_OP_CHMOD, ST_V_CHMOD)
FILE_SYSCALL(fchmod, 2, ST_OP_CHMOD, ST_V_FCHMOD)
FILE_SYSCALL(fchmodat, 3, ST_OP_CHMOD, ST_V_FCHMODAT)
FILE_SYSCALL(fchmodat2, 4, ST_OP_CHMOD, ST_V_FCHMODAT2) /* 6.6+: not attached on older kernels */
FILE_SYSCALL(chown, 3, ST_OP_CHOWN, ST_V_CHOWN)
FILE_SYSCALL(lchown, 3, ST_OP_CHOWN, ST_V_LCHOWN)
FILE_SYSCALL(fchown, 3, ST_OP_CHOWN, ST_V_FCHOWN)
FILE_SYSCALL(fchownat, 5, ST_OP_CHOWN, ST_V_FCHOWNAT)
FILE_SYSCALL(truncate, 2, ST_OP_TRUNCATE, ST_V_TRUNCATE)
FILE_SYSCALL(ftruncate, 2, ST_OP_TRUNCATE, ST_V_FTRUNCATE)
NET_SYSCALL(connect, 3, ST_OP_CONNECT, ST_V_CONNECT)
NET_SYSCALL(bind, 3, ST_OP_BIND, ST_V_BIND)
NET_SYSCALL(listen, 2, ST_OP_LISTEN, ST_V_LISTEN)
NET_SYSCALL(accept, 3, ST_OP_ACCEPT, ST_V_ACCEPT)
NET_SYSCALL(accept4, 4, ST_OP_ACCEPT, ST_V_ACCEPT)
