/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Shared by the sealtrail BPF objects: the ring buffer and drop counters (one instance, shared
 * between objects through map fd reuse), per-CPU work areas, record headers, and the dentry
 * walk that turns a struct path into the kernel's absolute path.
 */
#ifndef SEALTRAIL_COMMON_H
#define SEALTRAIL_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "sealtrail.h"

#define AT_FDCWD -100
#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_ICMPV6 58 /* a #define in the uapi, not in the BTF */
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define O_WRONLY 01
#define O_CREAT 0100
#define O_TRUNC 01000

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); /* userspace resizes before load */
} st_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_OP_MAX);
	__type(key, __u32);
	__type(value, __u64);
} st_drops SEC(".maps");

/* per-CPU work areas: BPF stacks are 512 bytes */
struct scratch {
	__u8 rec[ST_SCRATCH_SIZE];
};
struct pathbuf {
	__u8 buf[2 * ST_PATH_MAX]; /* dentry walk writes backwards; masking needs the slack */
	struct st_prefix_key key;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} st_scratch SEC(".maps");
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pathbuf);
} st_pathbuf SEC(".maps");

static __always_inline void count_drop(__u32 op)
{
	__u64 *n = bpf_map_lookup_elem(&st_drops, &op);
	if (n)
		*n += 1;
}

static __always_inline void fill_hdr(struct st_hdr *h, __u32 op, __u32 size)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	h->op = op;
	h->size = size;
	h->ts_ns = bpf_ktime_get_boot_ns();
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->ppid = BPF_CORE_READ(task, real_parent, tgid);
	h->uid = (__u32)uid_gid;
	h->gid = uid_gid >> 32;
	h->auid = ST_AUID_UNSET;
	h->ses = ST_AUID_UNSET;
	/* loginuid and sessionid exist only with CONFIG_AUDIT: relocated where they do */
	if (bpf_core_field_exists(task->loginuid)) {
		h->auid = BPF_CORE_READ(task, loginuid.val);
		h->ses = BPF_CORE_READ(task, sessionid);
	}
	h->_pad0 = 0;
	h->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(h->comm, sizeof(h->comm));
}

/*
 * Wake the consumer only when the ring is 1/8 full: a wakeup per record cost ~22 us per exec
 * here (bench/syscall_overhead.py). The agent polls with a short timeout and drains anyway,
 * so that timeout bounds the latency of a quiet ring.
 *
 * The ring is shared in tiers, so a flood of the cheapest events cannot crowd out the ones
 * decisions depend on: connect and bind events (recorded host-wide, by any user, at 100k+/s;
 * their rules are judged in the kernel, which reports verdicts) fill it to one half; other
 * events (the truncate, open and exec events after-the-fact kills are decided on) to three
 * quarters; the guard's verdicts to the end. What is dropped is counted (loss records).
 */
static __always_inline void submit(void *rec, __u64 size, __u32 op)
{
	if (size > ST_SCRATCH_SIZE)
		size = ST_SCRATCH_SIZE;
	__u64 avail = bpf_ringbuf_query(&st_events, BPF_RB_AVAIL_DATA);
	__u64 ring = bpf_ringbuf_query(&st_events, BPF_RB_RING_SIZE);
	__u64 tier = ring - ring / 4;
	if (op == ST_OP_VERDICT)
		tier = ring;
	else if (op == ST_OP_CONNECT || op == ST_OP_BIND)
		tier = ring / 2;
	if (avail > tier) {
		count_drop(op);
		return;
	}
	__u64 wakeup = avail > ring / 8 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&st_events, rec, size, wakeup))
		count_drop(op);
}

static __always_inline void *get_scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&st_scratch, &zero);
}

static __always_inline struct pathbuf *get_pathbuf(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&st_pathbuf, &zero);
}

struct walk_ctx {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	__u32 off;
	bool done;
};

/* One step of the walk (a bpf_loop callback, so the verifier checks it once, not per step). */
static long walk_step(__u32 index, void *arg)
{
	struct walk_ctx *w = arg;
	struct pathbuf *pb = get_pathbuf();
	if (!pb)
		return 1;
	/* locals, not w->x, inside BPF_CORE_READ: walk_ctx is ours, not a kernel type to relocate */
	struct dentry *dentry = w->dentry;
	struct vfsmount *vfsmnt = w->vfsmnt;
	struct mount *mnt = w->mnt;
	struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);

	if (dentry == mnt_root || dentry == parent) {
		struct mount *mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
		if (dentry != mnt_root || mnt_parent == mnt) {
			w->done = true; /* global root (or a detached tree) */
			if (dentry != mnt_root && w->off == ST_PATH_MAX - 1) {
				/*
				 * A file no directory holds (a memfd, another pseudo file): the
				 * kernel's own name for it, "memfd:NAME", without a leading '/',
				 * so it never reads as a path. An empty name stays "/".
				 */
				struct qstr name = BPF_CORE_READ(dentry, d_name);
				__u32 len = name.len & (ST_NAME_MAX - 1);
				__u32 off = (w->off - len) & (ST_PATH_MAX - 1);
				bpf_probe_read_kernel(&pb->buf[off], len, name.name);
				w->off = off;
			}
			return 1;
		}
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = mnt_parent;
		w->vfsmnt = &mnt_parent->mnt;
		return 0;
	}
	struct qstr name = BPF_CORE_READ(dentry, d_name);
	__u32 len = name.len & (ST_NAME_MAX - 1);
	__u32 off = w->off;
	if (len + 1 > off)
		return 1; /* would not fit: truncated */
	off -= len;
	off &= ST_PATH_MAX - 1;
	bpf_probe_read_kernel(&pb->buf[off], len, name.name);
	off -= 1;
	off &= ST_PATH_MAX - 1;
	pb->buf[off] = '/';
	w->off = off;
	w->dentry = parent;
	return 0;
}

/*
 * Build the absolute path of @path from the kernel's dentries, like d_path(): walk d_parent
 * to the mount root, then cross to the parent mount, up to ST_PATH_DEPTH steps. The string is
 * written backwards, ending at pb->buf[ST_PATH_MAX - 1]; returns the offset of its first byte
 * (< ST_PATH_MAX), and sets *truncated if the walk was cut.
 */
static __always_inline __u32 walk_path(struct pathbuf *pb, const struct path *path, bool *truncated)
{
	struct walk_ctx w = {};
	w.dentry = BPF_CORE_READ(path, dentry);
	w.vfsmnt = BPF_CORE_READ(path, mnt);
	w.mnt = container_of(w.vfsmnt, struct mount, mnt);
	w.off = ST_PATH_MAX - 1;

	pb->buf[ST_PATH_MAX - 1] = 0;
	bpf_loop(ST_PATH_DEPTH, walk_step, &w, 0);
	if (!w.done)
		*truncated = true;
	__u32 off = w.off & (ST_PATH_MAX - 1);
	if (off == ST_PATH_MAX - 1) { /* the root itself */
		off -= 1;
		pb->buf[off] = '/';
	}
	return off;
}

/*
 * How top_name_file reads the kernel's structures. The default build: bpf_rdonly_cast (6.2+)
 * makes a pointer read from the fd table a BTF pointer, so the walk is plain loads
 * (probe-mem, inline): about 100 ns instead of 600 for a path 6 deep here. The compat build
 * (-DST_COMPAT, events-compat.bpf.o, for kernels without the kfunc) reads each field through
 * a helper call; the agent picks the object (agent/events/stream.py).
 */
#ifdef ST_BTF_CAST
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#define TOP_AS(ptr, type) ((struct type *)bpf_rdonly_cast((ptr), bpf_core_type_id_kernel(struct type)))
#define TOP_LOAD(ptr, field) ((ptr)->field)
#else
#define TOP_AS(ptr, type) ((struct type *)(ptr))
#define TOP_LOAD(ptr, field) BPF_CORE_READ(ptr, field)
#endif

/*
 * The first component of the path walk_path would build for @file (a pointer read from the
 * fd table), as an st_prefix_key in pb->key ("NAME\0", prefixlen including the NUL; the root
 * itself: "\0"). walk_step's moves (d_parent, mount crossings, the same stops), pointers only,
 * no names but the last: what a miss of the path filter costs. False when that string would
 * not start with "/NAME" (a pseudo file, a walk cut at ST_PATH_DEPTH): then only the whole
 * path can be filtered.
 */
static __always_inline bool top_name_file(struct pathbuf *pb, struct file *file)
{
	struct file *f = TOP_AS(file, file);
	struct dentry *dentry = TOP_LOAD(f, f_path.dentry);
	unsigned long vfsmnt = (unsigned long)TOP_LOAD(f, f_path.mnt);
	struct mount *mnt = TOP_AS((void *)(vfsmnt - bpf_core_field_offset(struct mount, mnt)), mount);
	struct dentry *mnt_root = TOP_LOAD(mnt, mnt.mnt_root);
	struct dentry *top = NULL;
	bool done = false;

	/* a bounded loop, not bpf_loop: no indirect call per step */
	for (int i = 0; i < ST_PATH_DEPTH; i++) {
		struct dentry *parent = TOP_LOAD(dentry, d_parent);
		if (dentry == mnt_root || dentry == parent) {
			if (dentry != mnt_root)
				return false; /* a pseudo file */
			struct mount *mnt_parent = TOP_LOAD(mnt, mnt_parent);
			if (mnt_parent == mnt) {
				done = true;
				break;
			}
			dentry = TOP_LOAD(mnt, mnt_mountpoint);
			mnt = TOP_AS(mnt_parent, mount);
			mnt_root = TOP_LOAD(mnt, mnt.mnt_root);
			continue;
		}
		top = dentry;
		dentry = parent;
	}
	if (!done)
		return false;
	__u32 len = 0;
	if (top) {
		struct qstr name = TOP_LOAD(top, d_name);
		len = name.len & (ST_NAME_MAX - 1);
		if (bpf_probe_read_kernel(pb->key.data, len, name.name))
			return false;
	}
	pb->key.data[len & (ST_NAME_MAX - 1)] = 0;
	pb->key.prefixlen = (len + 1) * 8;
	return true;
}

/* Copy a walked path into the record at @dst; returns bytes written (NUL included). */
static __always_inline __u32 put_walked(void *dst, struct pathbuf *pb, const struct path *path,
					bool *truncated)
{
	__u32 off = walk_path(pb, path, truncated);
	__u32 len = ST_PATH_MAX - off;

	if (len > ST_PATH_MAX)
		return 0;
	if (bpf_probe_read_kernel(dst, len, &pb->buf[off & (ST_PATH_MAX - 1)]))
		return 0;
	return len;
}

/*
 * The file behind @fd of @task, the current task (bpf_get_current_task_btf(): a BTF pointer,
 * so task->files->fdt are plain loads; only the array slot needs a helper).
 */
static __always_inline struct file *fd_file(struct task_struct *task, long fd)
{
	struct file *f = NULL;
	if (fd < 0)
		return NULL;
	struct fdtable *fdt = task->files->fdt;
	if ((unsigned long)fd >= fdt->max_fds)
		return NULL;
	struct file **fds = fdt->fd;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

/*
 * Does @f have no name in any filesystem? A memfd or other pseudo file (its dentry is its own
 * parent, not a mount's root), or a file unlinked while open / an O_TMPFILE never linked
 * (i_nlink == 0; memfds have 0 too). What ST_EXEC_FILELESS and targets.fileless mean.
 */
static __always_inline bool file_fileless(struct file *f)
{
	if (!f)
		return false;
	struct dentry *d = BPF_CORE_READ(f, f_path.dentry);
	if (BPF_CORE_READ(d, d_inode, __i_nlink) == 0)
		return true;
	return d == BPF_CORE_READ(d, d_parent) && d != BPF_CORE_READ(f, f_path.mnt, mnt_root);
}

#endif /* SEALTRAIL_COMMON_H */
