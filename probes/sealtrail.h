/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * sealtrail kernel/user ABI: the ONE place where every struct, opcode, limit and map
 * key/value layout shared between the BPF probes and userspace is defined.
 *
 * Keep in sync with agent/kernel/abi.py (the single ctypes mirror). tests/kernel/test_abi.py
 * compares that mirror's sizes and offsets with the BTF of the compiled objects, so drift
 * fails a test, not production.
 *
 * Rules for this header: fixed-width types only, explicit padding, no kernel headers (it is
 * included from BPF C and read by people writing userspace), every struct size a multiple of 8.
 *
 * Wire format of one ring-buffer record: a fixed struct chosen by hdr.op (st_exec, st_file,
 * st_net, st_proc), immediately followed by its variable data: strings back to back, each
 * NUL-terminated, lengths (including the NUL) given by the *_len fields of the fixed part, in
 * the order the fields are declared. hdr.size is the total record size.
 */
#ifndef SEALTRAIL_H
#define SEALTRAIL_H

#ifndef __VMLINUX_H__
#include <stdint.h>
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
typedef int64_t __s64;
#endif

/* ---- limits (documented in README "Event limits") ---- */
#define ST_PATH_MAX 4096       /* bytes of one path, NUL included */
#define ST_PATH_DEPTH 48       /* path components walked in the kernel */
#define ST_NAME_MAX 256        /* one path component, NUL included */
#define ST_ARGS_MAX 4096       /* bytes of argv (NUL-separated) */
#define ST_COMM_LEN 16
#define ST_FILTER_PREFIX_MAX 256 /* bytes of a --path-prefix key */
#define ST_SCRATCH_SIZE 20480  /* per-CPU event assembly buffer; >= largest record */

/* st_hdr.auid and st_hdr.ses of a task no login set, and of every task on a kernel built
 * without CONFIG_AUDIT: (u32)-1, as the kernel's AUDIT_UID_UNSET and AUDIT_SID_UNSET */
#define ST_AUID_UNSET 0xffffffffu

/* ---- opcodes: hdr.op ---- */
enum st_op {
	ST_OP_NONE = 0,
	ST_OP_EXEC = 1,
	ST_OP_FORK = 2,
	ST_OP_EXIT = 3,
	ST_OP_OPEN = 4,
	ST_OP_UNLINK = 5,
	ST_OP_RENAME = 6,
	ST_OP_CHMOD = 7,
	ST_OP_CHOWN = 8,
	ST_OP_CONNECT = 9,
	ST_OP_BIND = 10,
	ST_OP_LISTEN = 11,
	ST_OP_ACCEPT = 12,
	ST_OP_VERDICT = 13, /* a decision of the in-kernel guard (struct st_verdict) */
	ST_OP_TRUNCATE = 14, /* truncate(2), ftruncate(2) (struct st_file); judged by open rules */
	ST_OP_MAX = 15,     /* array size for per-op counters */
};

/* hdr.flags */
#define ST_F_TRUNCATED 0x1      /* some string was cut at its limit */
#define ST_F_PATH_RESOLVED 0x2  /* path(s) built from the kernel's dentries (symlinks resolved) */
#define ST_F_PATH_RELATIVE 0x4  /* path as passed was relative; base holds the dir it is relative to */
#define ST_F_NO_EXIT 0x8        /* result unknown (no exit event seen) */
#define ST_F_SENDMSG 0x10       /* VERDICT: judged at sendmsg (a datagram sent without connect) */
#define ST_F_TRUNCATE 0x20      /* VERDICT: judged at truncate (path_truncate/file_truncate) */
#define ST_F_AUTOBIND 0x40      /* VERDICT: bind(2) to port 0, judged at post_bind on the port picked */

/* ---- common header of every record ---- */
struct st_hdr {
	__u16 op;          /* enum st_op */
	__u16 flags;       /* ST_F_* */
	__u32 size;        /* total bytes of this record, fixed part + data */
	__u64 ts_ns;       /* bpf_ktime_get_boot_ns(): CLOCK_BOOTTIME */
	__u32 pid;         /* tgid */
	__u32 tid;
	__u32 ppid;        /* tgid of real_parent */
	__u32 uid;
	__u32 gid;
	__u32 auid;        /* audit login uid (task->loginuid; auditd's auid): who logged in, kept
			    * through sudo and su; ST_AUID_UNSET if no login set it */
	__u64 cgroup_id;   /* cgroup v2 id of the task */
	char comm[ST_COMM_LEN];
	__u32 ses;         /* audit session id (task->sessionid; auditd's ses), ST_AUID_UNSET if none */
	__u32 _pad0;
};

/* ST_OP_EXEC; data: exe (resolved), filename (as passed to execve), args, cwd */
struct st_exec {
	struct st_hdr hdr;
	__u32 exe_len;
	__u32 filename_len;
	__u32 args_len;     /* NUL-separated argv; 0 if unreadable */
	__u32 cwd_len;
	__u32 argc;
	__u32 exec_flags;   /* ST_EXEC_* */
};

/*
 * st_exec.exec_flags. FILELESS: the binary the kernel runs has no name in any filesystem at
 * exec time: a memfd (or another pseudo file; exe is then the kernel's name for it, e.g.
 * "memfd:NAME", with no leading '/'), a file unlinked while open or an O_TMPFILE never linked
 * (i_nlink == 0; exe is the path it had).
 */
#define ST_EXEC_FILELESS 0x1

/* ST_OP_FORK and ST_OP_EXIT; no data */
struct st_proc {
	struct st_hdr hdr;
	__u32 child_pid;    /* FORK: new tgid */
	__u32 exit_code;    /* EXIT: wait status (code << 8 | signal) */
	__u64 start_ns;     /* EXIT: task start (boottime), for duration */
};

/*
 * ST_OP_OPEN/UNLINK/RENAME/CHMOD/CHOWN/TRUNCATE; data: path, path2 (rename target), base, base2.
 * ST_F_PATH_RESOLVED: path is the kernel's view of the object (dentry walk from the opened
 * fd, symlinks and ".." resolved): OPEN with ret >= 0, fchmod/fchown/ftruncate.
 * Otherwise path is as passed; if it is relative, base is the kernel-resolved directory it is
 * relative to (cwd or dirfd) and ST_F_PATH_RELATIVE is set; base2 does the same for path2.
 */
struct st_file {
	struct st_hdr hdr;
	__s64 ret;          /* syscall return value: fd or -errno */
	__u32 flags;        /* OPEN: open flags; RENAME: renameat2 flags */
	__u32 mode;         /* OPEN(create)/CHMOD: mode */
	__u32 owner_uid;    /* CHOWN: new uid ((u32)-1 = unchanged) */
	__u32 owner_gid;    /* CHOWN: new gid */
	__u32 path_len;
	__u32 path2_len;
	__u32 base_len;
	__u32 base2_len;
	__u64 length;       /* TRUNCATE: the size asked for */
};

/* ST_OP_CONNECT/BIND/LISTEN/ACCEPT; no data. Addresses in network byte order. */
struct st_net {
	struct st_hdr hdr;
	__s64 ret;
	__u16 family;       /* AF_INET=2, AF_INET6=10 */
	__u16 protocol;     /* IPPROTO_TCP=6, IPPROTO_UDP=17, ... */
	__u16 sport;        /* host byte order */
	__u16 dport;        /* host byte order */
	__u8 saddr[16];     /* local address (v4 in the first 4 bytes) */
	__u8 daddr[16];     /* remote address */
	__u32 backlog;      /* LISTEN */
	__u32 sock_type;    /* SOCK_STREAM=1, SOCK_DGRAM=2 */
};

/*
 * ST_OP_VERDICT: the in-kernel guard decided on an operation (cgroup sock hooks; LSM hooks
 * where BPF-LSM loads). Emitted for every non-allow decision and for audit. Data: the object's
 * path (path_len bytes, file ops and exec; 0 for network), then the acting exe (exe_len).
 */
struct st_verdict {
	struct st_hdr hdr;
	__u32 generation;   /* policy generation (st_guard_cfg.generation[slot]) that decided */
	__u16 rule_index;   /* index in the compiled rule table of that generation */
	__u8 guarded_op;    /* enum st_op of the operation judged */
	__u8 action;        /* enum st_action actually taken */
	__u8 rule_action;   /* enum st_action the rule asks for (differs in monitor mode) */
	__u8 mechanism;     /* enum st_mechanism */
	__u16 family;       /* AF_INET/AF_INET6 as the caller asked */
	__u16 protocol;
	__u16 port;         /* host byte order */
	__u32 exe_len;
	__u8 addr[16];      /* IPv4 as ::ffff:a.b.c.d */
	__u32 path_len;
	__u32 _pad0;
};

/* ---- maps (names as in the BPF object; st_events is the ring buffer) ---- */

/* st_config (array, 1 entry, key 0): what userspace asked for; read on every event */
struct st_config {
	__u32 op_mask;        /* bit (1 << op) set = emit that op */
	__u32 filter_ops;     /* bit (1 << op): emit that file op only if a path matches st_path_prefixes */
};

/* load-time constants (section .rodata.st, set before load; the verifier prunes on them) */
struct st_rodata {
	__u32 self_tgid;      /* the agent's own tgid: never reported (no feedback loop) */
	__u32 _pad0;
};

/* st_path_prefixes (LPM trie): key = path bytes, prefixlen in bits; value = 1 */
struct st_prefix_key {
	__u32 prefixlen;
	__u8 data[ST_FILTER_PREFIX_MAX];
};

/* syscall variants inside one op family (st_pending.variant): which args mean what */
enum st_variant {
	ST_V_OPEN, ST_V_OPENAT, ST_V_OPENAT2, ST_V_CREAT, ST_V_OPEN_BY_HANDLE,
	ST_V_UNLINK, ST_V_UNLINKAT,
	ST_V_RENAME, ST_V_RENAMEAT, ST_V_RENAMEAT2,
	ST_V_CHMOD, ST_V_FCHMOD, ST_V_FCHMODAT, ST_V_FCHMODAT2,
	ST_V_CHOWN, ST_V_LCHOWN, ST_V_FCHOWN, ST_V_FCHOWNAT,
	ST_V_CONNECT, ST_V_BIND, ST_V_LISTEN, ST_V_ACCEPT,
	ST_V_TRUNCATE, ST_V_FTRUNCATE,
};

/* st_pending (hash, key = tid): the arguments of an open or network syscall, saved at
 * sys_enter until its sys_exit. Userspace reads it too: the fanotify mechanism learns there
 * the flags of the open it judges (only while that open syscall runs). */
struct st_pending {
	__u64 args[6];
	__u32 op;
	__u32 variant;      /* which syscall of the op's family (BPF-internal ST_V_*) */
	__u64 _reserved;    /* 0 */
};

/* st_drops (per-CPU array, key = op): records lost because the ring buffer was full */
/* counter type: __u64 */

/* ---- the in-kernel guard (probes/guard.bpf.c): compiled policy tables ----
 *
 * The layout is agent/policy/compile.py's (its docstring is the reference; its byte-level
 * tests pin it): every rule of an operation has an index (its bit in a mask; the compiler
 * orders rules by precedence, so the lowest set bit wins), every table maps a key to the mask
 * of rules that key satisfies, and the verdict is the lowest set bit of T & S & ~X.
 *
 * Each table is an array-of-maps with two slots: a reload fills fresh inner maps in the idle
 * slot, then flips st_guard_cfg.slot with one store. A hook reads the slot once, so it never
 * sees a half-written policy, and there is no moment without one.
 */

#define ST_RULES_PER_OP 1024
#define ST_MASK_WORDS (ST_RULES_PER_OP / 64)

/* LPM key data bytes (struct st_lpm_*_key); a path key is the kernel's LPM_DATA_SIZE_MAX */
#define ST_LPM_PATH_DATA 256
#define ST_LPM_ADDR_DATA 20
#define ST_LPM_PORT_DATA 4

/* capacities (entries) of the policy tables, checked by the compiler before a load */
#define ST_POL_PATHS_MAX 16384   /* st_pol_paths */
#define ST_POL_CGROUPS_MAX 16384 /* st_pol_cgroup: (op, id) of each existing cgroup a rule names */
#define ST_POL_TABLE_MAX 4096    /* st_pol_addrs, _ports, _exe, _uid, _gid, _inodes; cgroup paths */
#define ST_LINEAGE_MAX 65536     /* st_lineage: tasks whose ancestry the guard follows at once */

struct st_mask {
	__u64 w[ST_MASK_WORDS];   /* bit i of rule index i is bit i%64 of w[i/64] */
};

/* st_pol_masks value: fixed masks of one operation */
enum st_slot {
	ST_SLOT_EXE_ANY = 0, ST_SLOT_UID_ANY = 1, ST_SLOT_GID_ANY = 2, ST_SLOT_CGROUP_ANY = 3,
	ST_SLOT_X_EXE_ANY = 4, ST_SLOT_X_UID_ANY = 5, ST_SLOT_X_GID_ANY = 6, ST_SLOT_X_CGROUP_ANY = 7,
	ST_SLOT_HAS_EXCEPT = 8, ST_SLOT_ADDR_ANY = 9, ST_SLOT_PORT_ANY = 10, ST_SLOT_PROTO_ANY = 11,
	ST_SLOT_PROTO_TCP = 12, ST_SLOT_PROTO_UDP = 13, ST_SLOT_ACCESS_READ = 14,
	ST_SLOT_ACCESS_WRITE = 15, ST_SLOT_ACCESS_CREATE = 16, ST_SLOT_ACCESS_TRUNCATE = 17,
	ST_SLOT_EXEC_FILELESS = 18, /* exec rules with targets.fileless: T for a fileless binary */
	ST_SLOTS = 19,
};
struct st_pol_masks {
	struct st_mask slot[ST_SLOTS];
};

/* st_pol_rules (array): key op * ST_RULES_PER_OP + index */
enum st_pol_action { ST_POL_ALLOW = 0, ST_POL_AUDIT = 1, ST_POL_DENY = 2, ST_POL_KILL = 3 };
#define ST_RULE_MONITOR 0x1
#define ST_RULE_FALLBACK_KILL 0x2
#define ST_RULE_FALLBACK_AUDIT 0x4
struct st_pol_rule {
	__u32 rule_no;     /* position in the policy set (file order) */
	__u16 policy_no;
	__u8 action;       /* enum st_pol_action */
	__u8 flags;        /* ST_RULE_* */
};

/* LPM keys: data starts with the op byte */
struct st_lpm_path_key {   /* st_pol_exe: op, path bytes[, NUL if exact] */
	__u32 prefixlen;
	__u8 data[ST_LPM_PATH_DATA];
};
struct st_lpm_addr_key {   /* st_pol_addrs: op, 0, 0, 0, IPv6 (IPv4 as ::ffff:a.b.c.d) */
	__u32 prefixlen;
	__u8 data[ST_LPM_ADDR_DATA];
};
struct st_lpm_port_key {   /* st_pol_ports: op, 0, port (big-endian) */
	__u32 prefixlen;
	__u8 data[ST_LPM_PORT_DATA];
};
struct st_pol_exe {
	struct st_mask self;       /* rules whose binary condition this exe satisfies */
	struct st_mask inherit;    /* ... and passes to its descendants */
	struct st_mask xself;      /* rules that except this exe */
	struct st_mask xinherit;
};
struct st_pol_id_key {     /* st_pol_uid, st_pol_gid */
	__u32 op;
	__u32 id;
};
struct st_pol_id {
	struct st_mask self;
	struct st_mask xself;
};
struct st_pol_cgroup_key { /* st_pol_cgroup: the agent resolves cgroup paths to ids */
	__u32 op;
	__u32 _pad0;
	__u64 cgroup_id;
};

/*
 * st_pol_inodes (hash, LSM hooks): the files exact path rules name, by identity, so that a hard
 * link (another name for the same inode) is judged like the name the rule uses. Filled by the
 * agent at load from the paths table; dev is the kernel's encoding (MAJOR << 20 | MINOR).
 */
struct st_inode_key {
	__u32 op;
	__u32 dev;
	__u64 ino;
};

/* st_lineage (hash): what a task inherited from ancestors' binaries, per op */
struct st_lineage_key {
	__u32 tgid;
	__u32 op;
};
struct st_lineage {
	struct st_mask inherit;
	struct st_mask xinherit;
};

#define ST_GUARD_LINEAGE 0x1  /* some rule follows descendants: maintain st_lineage */
struct st_guard_cfg {
	__u32 slot;           /* 0 or 1: the live inner maps */
	__u32 generation[2];  /* policy generation held by each slot */
	__u32 flags;          /* ST_GUARD_* of the live slot */
};

/*
 * Load-time constants of the guard (section .rodata.guard). bpf_send_signal is not offered to
 * cgroup sock programs before Linux 6.? (Debian 12's 6.1 refuses it there): the agent then
 * loads with cgroup_signal = 0, and kills from userspace right after the kernel's deny.
 */
struct st_guard_rodata {
	__u8 cgroup_signal;  /* cgroup hooks may call bpf_send_signal */
	__u8 lsm_signal;     /* LSM hooks may call bpf_send_signal */
	__u8 _pad0[6];
};

/* what the guard did (st_verdict.action) */
enum st_action {
	ST_ACT_NONE = 0,
	ST_ACT_ALLOW = 1,
	ST_ACT_AUDIT = 2,
	ST_ACT_DENY = 3,
	ST_ACT_KILL = 4,
};

enum st_mechanism {
	ST_MECH_NONE = 0,
	ST_MECH_CGROUP_SOCK = 1,
	ST_MECH_LSM = 2,
	ST_MECH_FANOTIFY = 3,
	ST_MECH_SIGKILL = 4,
	ST_MECH_EXEC_TRACEPOINT = 5, /* tp_btf/sched_prepare_exec: SIGKILL before the image runs */
};

#ifdef __VMLINUX_H__
_Static_assert(sizeof(struct st_hdr) == 72, "st_hdr layout");
_Static_assert(sizeof(struct st_verdict) % 8 == 0, "st_verdict alignment");
_Static_assert(sizeof(struct st_exec) % 8 == 0, "st_exec alignment");
_Static_assert(sizeof(struct st_file) % 8 == 0, "st_file alignment");
_Static_assert(sizeof(struct st_net) % 8 == 0, "st_net alignment");
_Static_assert(sizeof(struct st_proc) % 8 == 0, "st_proc alignment");
_Static_assert(sizeof(struct st_exec) + 3 * ST_PATH_MAX + ST_ARGS_MAX <= ST_SCRATCH_SIZE,
	       "exec record fits scratch");
_Static_assert(sizeof(struct st_file) + 4 * ST_PATH_MAX <= ST_SCRATCH_SIZE, "file record fits scratch");
#endif

#endif /* SEALTRAIL_H */
