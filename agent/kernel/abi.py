"""ctypes mirror of ``probes/sealtrail.h``, the kernel/user ABI.

Keep in sync with probes/sealtrail.h: tests/kernel/test_abi.py compares every struct here
(size, field offsets and sizes) with the BTF of the compiled objects, so drift fails a test.
"""

from __future__ import annotations

import ctypes
import enum
from ctypes import c_char, c_int64, c_uint8, c_uint16, c_uint32, c_uint64

PATH_MAX = 4096
PATH_DEPTH = 48
NAME_MAX = 256
ARGS_MAX = 4096
COMM_LEN = 16
FILTER_PREFIX_MAX = 256
SCRATCH_SIZE = 20480
RULES_MAX = 1024
MASK_WORDS = RULES_MAX // 64
EXE_PATH_MAX = 252
ID_ANY = 0xFFFFFFFFFFFFFFFF


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


class IdKind(enum.IntEnum):
    UID = 1
    GID = 2
    CGROUP = 3


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


OP_MAX = 14

F_TRUNCATED = 0x1
F_PATH_RESOLVED = 0x2
F_PATH_RELATIVE = 0x4
F_NO_EXIT = 0x8


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
        ("_pad0", c_uint32),
        ("cgroup_id", c_uint64),
        ("comm", c_char * COMM_LEN),
    ]


class Exec(_S):
    _fields_ = [
        ("hdr", Hdr),
        ("exe_len", c_uint32),
        ("filename_len", c_uint32),
        ("args_len", c_uint32),
        ("cwd_len", c_uint32),
        ("argc", c_uint32),
        ("_pad0", c_uint32),
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
        ("open_filter", c_uint32),
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
        ("ts_ns", c_uint64),
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
    ]


class Mask(_S):
    _fields_ = [("w", c_uint64 * MASK_WORDS)]


class GuardCfg(_S):
    _fields_ = [
        ("slot", c_uint32),
        ("generation", c_uint32 * 2),
        ("_pad0", c_uint32),
    ]


class RuleKey(_S):
    _fields_ = [("slot", c_uint8), ("op", c_uint8), ("index", c_uint16)]


class Rule(_S):
    _fields_ = [
        ("action", c_uint8),
        ("monitor", c_uint8),
        ("_pad0", c_uint16),
        ("_pad1", c_uint32),
    ]


class AddrKey(_S):
    _fields_ = [
        ("prefixlen", c_uint32),
        ("slot", c_uint8),
        ("op", c_uint8),
        ("_pad0", c_uint8 * 2),
        ("addr", c_uint8 * 16),
    ]


class PortKey(_S):
    _fields_ = [
        ("slot", c_uint8),
        ("op", c_uint8),
        ("protocol", c_uint8),
        ("any", c_uint8),
        ("port", c_uint16),
        ("_pad0", c_uint16),
    ]


class ExeKey(_S):
    _fields_ = [
        ("prefixlen", c_uint32),
        ("slot", c_uint8),
        ("_pad0", c_uint8 * 3),
        ("path", c_uint8 * EXE_PATH_MAX),
    ]


class Subject(_S):
    _fields_ = [("include", Mask), ("exclude", Mask), ("lineage", Mask)]


class IdKey(_S):
    _fields_ = [
        ("slot", c_uint8),
        ("kind", c_uint8),
        ("_pad0", c_uint8 * 6),
        ("id", c_uint64),
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
    "st_guard_cfg": GuardCfg,
    "st_rule_key": RuleKey,
    "st_rule": Rule,
    "st_addr_key": AddrKey,
    "st_port_key": PortKey,
    "st_exe_key": ExeKey,
    "st_subject": Subject,
    "st_id_key": IdKey,
}

# Map names in the BPF objects.
MAP_EVENTS = "st_events"
MAP_CONFIG = "st_config"
MAP_DROPS = "st_drops"
MAP_OPEN_PREFIXES = "st_open_prefixes"
RODATA_SECTION = ".rodata.st"
MAP_GUARD_CFG = "st_guard_cfg"
MAP_RULES = "st_rules"
MAP_NET_ADDR = "st_net_addr"
MAP_NET_PORT = "st_net_port"
MAP_EXE = "st_exe"
MAP_IDS = "st_ids"
MAP_LINEAGE = "st_lineage"


def prefix_key(prefix: bytes) -> bytes:
    """LPM key for a path prefix (bytes as given; callers add the NUL for exact matches)."""
    if len(prefix) > FILTER_PREFIX_MAX:
        raise ValueError(f"path prefix longer than {FILTER_PREFIX_MAX} bytes")
    key = PrefixKey()
    key.prefixlen = len(prefix) * 8
    ctypes.memmove(key.data, prefix, len(prefix))
    return bytes(key)
