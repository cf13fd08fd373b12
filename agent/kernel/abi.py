"""ctypes mirror of ``probes/sealtrail.h``, the kernel/user ABI.

Keep in sync with probes/sealtrail.h: tests/kernel/test_abi.py compares every struct here
(size, field offsets and sizes), every enum and every ``#define`` (``DEFINES``) with the BTF
of the compiled objects, so drift fails a test.
"""

from __future__ import annotations

import ctypes
import enum
import os
from ctypes import c_char, c_int64, c_uint8, c_uint16, c_uint32, c_uint64

PATH_MAX = 4096
AUID_UNSET = 0xFFFFFFFF
PATH_DEPTH = 48
NAME_MAX = 256
ARGS_MAX = 4096
COMM_LEN = 16
FILTER_PREFIX_MAX = 256
SCRATCH_SIZE = 20480
RULES_PER_OP = 1024
MASK_WORDS = RULES_PER_OP // 64
LPM_PATH_DATA = 256
LPM_ADDR_DATA = 20
LPM_PORT_DATA = 4
POL_PATHS_MAX = 16384
POL_CGROUPS_MAX = 16384
POL_TABLE_MAX = 4096
LINEAGE_MAX = 65536
RULE_MONITOR = 0x1
RULE_FALLBACK_KILL = 0x2
RULE_FALLBACK_AUDIT = 0x4
GUARD_LINEAGE = 0x1


class Action(enum.IntEnum):
    NONE = 0
    ALLOW = 1
    AUDIT = 2
    DENY = 3
    KILL = 4


class Mechanism(enum.IntEnum):
    NONE = 0
    CGROUP_SOCK = 1
    LSM = 2
    FANOTIFY = 3
    SIGKILL = 4
    EXEC_TRACEPOINT = 5


class PolAction(enum.IntEnum):
    """st_pol_rule.action: what a rule asks for (the verdict's action is ``Action``)."""

    ALLOW = 0
    AUDIT = 1
    DENY = 2
    KILL = 3


class Slot(enum.IntEnum):
    """Fixed masks of one operation (st_pol_masks value = st_mask slot[SLOTS])."""

    EXE_ANY = 0  # rules whose subject does not name exe
    UID_ANY = 1
    GID_ANY = 2
    CGROUP_ANY = 3
    X_EXE_ANY = 4  # rules whose except does not name exe
    X_UID_ANY = 5
    X_GID_ANY = 6
    X_CGROUP_ANY = 7
    HAS_EXCEPT = 8
    ADDR_ANY = 9
    PORT_ANY = 10
    PROTO_ANY = 11
    PROTO_TCP = 12
    PROTO_UDP = 13
    ACCESS_READ = 14
    ACCESS_WRITE = 15
    ACCESS_CREATE = 16
    ACCESS_TRUNCATE = 17
    EXEC_FILELESS = 18  # exec rules with targets.fileless: T of a binary with no name


SLOTS = len(Slot)


class Op(enum.IntEnum):
    NONE = 0
    EXEC = 1
    FORK = 2
    EXIT = 3
    OPEN = 4
    UNLINK = 5
    RENAME = 6
    CHMOD = 7
    CHOWN = 8
    CONNECT = 9
    BIND = 10
    LISTEN = 11
    ACCEPT = 12
    VERDICT = 13
    TRUNCATE = 14


OP_MAX = 15


class Variant(enum.IntEnum):
    """st_pending.variant: which syscall of an op family saved the args."""

    OPEN = 0
    OPENAT = 1
    OPENAT2 = 2
    CREAT = 3
    OPEN_BY_HANDLE = 4
    UNLINK = 5
    UNLINKAT = 6
    RENAME = 7
    RENAMEAT = 8
    RENAMEAT2 = 9
    CHMOD = 10
    FCHMOD = 11
    FCHMODAT = 12
    FCHMODAT2 = 13
    CHOWN = 14
    LCHOWN = 15
    FCHOWN = 16
    FCHOWNAT = 17
    CONNECT = 18
    BIND = 19
    LISTEN = 20
    ACCEPT = 21
    TRUNCATE = 22
    FTRUNCATE = 23


F_TRUNCATED = 0x1
F_PATH_RESOLVED = 0x2
F_PATH_RELATIVE = 0x4
F_NO_EXIT = 0x8
EXEC_FILELESS = 0x1  # st_exec.exec_flags
F_SENDMSG = 0x10
F_TRUNCATE = 0x20
F_AUTOBIND = 0x40


class _S(ctypes.Structure):
    """Native layout: the BPF target uses the host's alignment rules for these types."""


class Hdr(_S):
    _fields_ = [
        ("op", c_uint16),
        ("flags", c_uint16),
        ("size", c_uint32),
        ("ts_ns", c_uint64),
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("ppid", c_uint32),
        ("uid", c_uint32),
        ("gid", c_uint32),
        ("auid", c_uint32),  # audit login uid (task->loginuid), AUID_UNSET if none
        ("cgroup_id", c_uint64),
        ("comm", c_char * COMM_LEN),
        ("ses", c_uint32),  # audit session id (task->sessionid), AUID_UNSET if none
        ("_pad0", c_uint32),
    ]


class Exec(_S):
    _fields_ = [
        ("hdr", Hdr),
        ("exe_len", c_uint32),
        ("filename_len", c_uint32),
        ("args_len", c_uint32),
        ("cwd_len", c_uint32),
        ("argc", c_uint32),
        ("exec_flags", c_uint32),
    ]


class Proc(_S):
    _fields_ = [
        ("hdr", Hdr),
        ("child_pid", c_uint32),
        ("exit_code", c_uint32),
        ("start_ns", c_uint64),
    ]


class File(_S):
    _fields_ = [
        ("hdr", Hdr),
        ("ret", c_int64),
        ("flags", c_uint32),
        ("mode", c_uint32),
        ("owner_uid", c_uint32),
        ("owner_gid", c_uint32),
        ("path_len", c_uint32),
        ("path2_len", c_uint32),
        ("base_len", c_uint32),
        ("base2_len", c_uint32),
        ("length", c_uint64),
    ]


class Net(_S):
    _fields_ = [
        ("hdr", Hdr),
        ("ret", c_int64),
        ("family", c_uint16),
        ("protocol", c_uint16),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("saddr", c_uint8 * 16),
        ("daddr", c_uint8 * 16),
        ("backlog", c_uint32),
        ("sock_type", c_uint32),
    ]


class Config(_S):
    _fields_ = [
        ("op_mask", c_uint32),
        ("filter_ops", c_uint32),
    ]


class Rodata(_S):
    _fields_ = [
        ("self_tgid", c_uint32),
        ("_pad0", c_uint32),
    ]


class PrefixKey(_S):
    _fields_ = [
        ("prefixlen", c_uint32),
        ("data", c_uint8 * FILTER_PREFIX_MAX),
    ]


class Pending(_S):
    _fields_ = [
        ("args", c_uint64 * 6),
        ("op", c_uint32),
        ("variant", c_uint32),
        ("_reserved", c_uint64),
    ]


class Verdict(_S):
    _fields_ = [
        ("hdr", Hdr),
        ("generation", c_uint32),
        ("rule_index", c_uint16),
        ("guarded_op", c_uint8),
        ("action", c_uint8),
        ("rule_action", c_uint8),
        ("mechanism", c_uint8),
        ("family", c_uint16),
        ("protocol", c_uint16),
        ("port", c_uint16),
        ("exe_len", c_uint32),
        ("addr", c_uint8 * 16),
        ("path_len", c_uint32),
        ("_pad0", c_uint32),
    ]


class Mask(_S):
    _fields_ = [("w", c_uint64 * MASK_WORDS)]


class PolMasks(_S):
    _fields_ = [("slot", Mask * SLOTS)]


class PolRule(_S):
    _fields_ = [
        ("rule_no", c_uint32),
        ("policy_no", c_uint16),
        ("action", c_uint8),
        ("flags", c_uint8),
    ]


class LpmPathKey(_S):
    _fields_ = [("prefixlen", c_uint32), ("data", c_uint8 * LPM_PATH_DATA)]


class LpmAddrKey(_S):
    _fields_ = [("prefixlen", c_uint32), ("data", c_uint8 * LPM_ADDR_DATA)]


class LpmPortKey(_S):
    _fields_ = [("prefixlen", c_uint32), ("data", c_uint8 * LPM_PORT_DATA)]


class PolExe(_S):
    _fields_ = [("self", Mask), ("inherit", Mask), ("xself", Mask), ("xinherit", Mask)]


class PolIdKey(_S):
    _fields_ = [("op", c_uint32), ("id", c_uint32)]


class PolId(_S):
    _fields_ = [("self", Mask), ("xself", Mask)]


class PolCgroupKey(_S):
    _fields_ = [("op", c_uint32), ("_pad0", c_uint32), ("cgroup_id", c_uint64)]


class InodeKey(_S):
    _fields_ = [("op", c_uint32), ("dev", c_uint32), ("ino", c_uint64)]


class LineageKey(_S):
    _fields_ = [("tgid", c_uint32), ("op", c_uint32)]


class Lineage(_S):
    _fields_ = [("inherit", Mask), ("xinherit", Mask)]


class GuardRodata(_S):
    _fields_ = [("cgroup_signal", c_uint8), ("lsm_signal", c_uint8), ("_pad0", c_uint8 * 6)]


class GuardCfg(_S):
    _fields_ = [
        ("slot", c_uint32),
        ("generation", c_uint32 * 2),
        ("flags", c_uint32),
    ]


# C struct name in the header -> mirror; the ABI test walks this table.
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "st_hdr": Hdr,
    "st_exec": Exec,
    "st_proc": Proc,
    "st_file": File,
    "st_net": Net,
    "st_config": Config,
    "st_rodata": Rodata,
    "st_prefix_key": PrefixKey,
    "st_pending": Pending,
    "st_verdict": Verdict,
    "st_mask": Mask,
    "st_pol_masks": PolMasks,
    "st_pol_rule": PolRule,
    "st_lpm_path_key": LpmPathKey,
    "st_lpm_addr_key": LpmAddrKey,
    "st_lpm_port_key": LpmPortKey,
    "st_pol_exe": PolExe,
    "st_pol_id_key": PolIdKey,
    "st_pol_id": PolId,
    "st_pol_cgroup_key": PolCgroupKey,
    "st_lineage_key": LineageKey,
    "st_inode_key": InodeKey,
    "st_lineage": Lineage,
    "st_guard_cfg": GuardCfg,
    "st_guard_rodata": GuardRodata,
}

# ``#define`` in the header -> its mirror here; the ABI test walks this table.
DEFINES: dict[str, int] = {
    "ST_PATH_MAX": PATH_MAX,
    "ST_AUID_UNSET": AUID_UNSET,
    "ST_PATH_DEPTH": PATH_DEPTH,
    "ST_NAME_MAX": NAME_MAX,
    "ST_ARGS_MAX": ARGS_MAX,
    "ST_COMM_LEN": COMM_LEN,
    "ST_FILTER_PREFIX_MAX": FILTER_PREFIX_MAX,
    "ST_SCRATCH_SIZE": SCRATCH_SIZE,
    "ST_F_TRUNCATED": F_TRUNCATED,
    "ST_F_PATH_RESOLVED": F_PATH_RESOLVED,
    "ST_F_PATH_RELATIVE": F_PATH_RELATIVE,
    "ST_F_NO_EXIT": F_NO_EXIT,
    "ST_F_SENDMSG": F_SENDMSG,
    "ST_F_TRUNCATE": F_TRUNCATE,
    "ST_F_AUTOBIND": F_AUTOBIND,
    "ST_EXEC_FILELESS": EXEC_FILELESS,
    "ST_RULES_PER_OP": RULES_PER_OP,
    "ST_MASK_WORDS": MASK_WORDS,
    "ST_LPM_PATH_DATA": LPM_PATH_DATA,
    "ST_LPM_ADDR_DATA": LPM_ADDR_DATA,
    "ST_LPM_PORT_DATA": LPM_PORT_DATA,
    "ST_POL_PATHS_MAX": POL_PATHS_MAX,
    "ST_POL_CGROUPS_MAX": POL_CGROUPS_MAX,
    "ST_POL_TABLE_MAX": POL_TABLE_MAX,
    "ST_LINEAGE_MAX": LINEAGE_MAX,
    "ST_RULE_MONITOR": RULE_MONITOR,
    "ST_RULE_FALLBACK_KILL": RULE_FALLBACK_KILL,
    "ST_RULE_FALLBACK_AUDIT": RULE_FALLBACK_AUDIT,
    "ST_GUARD_LINEAGE": GUARD_LINEAGE,
}

# Map names in the BPF objects.
MAP_EVENTS = "st_events"
MAP_CONFIG = "st_config"
MAP_DROPS = "st_drops"
MAP_PATH_PREFIXES = "st_path_prefixes"
MAP_TOP_NAMES = "st_top_names"
MAP_PENDING = "st_pending"
RODATA_SECTION = ".rodata.st"
MAP_GUARD_CFG = "st_guard_cfg"
GUARD_RODATA_SECTION = ".rodata.guard"
MAP_LINEAGE = "st_lineage"


def kernel_dev(st_dev: int) -> int:
    """stat(2)'s device number in the kernel's own encoding, ``MAJOR << 20 | MINOR`` (what
    st_inode_key.dev and fanotify's fdinfo hold)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def u32_key(value: int) -> bytes:
    """A ``__u32`` map key (array indexes: st_pol_rules, st_pol_masks, array-of-maps slots)."""
    return bytes(c_uint32(value))


def prefix_key(prefix: bytes) -> bytes:
    """LPM key for a path prefix (bytes as given; callers add the NUL for exact matches)."""
    if len(prefix) > FILTER_PREFIX_MAX:
        raise ValueError(f"path prefix longer than {FILTER_PREFIX_MAX} bytes")
    key = PrefixKey()
    key.prefixlen = len(prefix) * 8
    ctypes.memmove(key.data, prefix, len(prefix))
    return bytes(key)
