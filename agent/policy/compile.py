"""Compile a PolicySet into the tables the kernel gets, byte for byte.

The same bytes feed the BPF maps (kernel side, later) and ``agent.policy.evaluate`` (here), so
one semantics serves both. Matching costs a fixed number of map lookups per event whatever the
rule count: every rule of an operation has an *index* (its bit in a 1024-bit mask), every table
maps a key to the mask of the rules that key satisfies, and the verdict is the lowest set bit of

    T & S & ~X

    T = what the object matches: paths trie (exec/file ops; rename: old | new path), for open
        ANDed with the OR of the access slots; for exec, | EXEC_FILELESS when the binary has
        no name (a memfd, a deleted file: probes/common.h file_fileless); for network ops
        (addrs | ADDR_ANY) & (ports | PORT_ANY) & (PROTO_<p> | PROTO_ANY)
    S = (exe.self | lineage | EXE_ANY) & (uid.self | UID_ANY) & (gid.self | GID_ANY)
        & (cgroup.self | CGROUP_ANY)
    X = HAS_EXCEPT & (exe.xself | xlineage | X_EXE_ANY) & (uid.xself | X_UID_ANY)
        & (gid.xself | X_GID_ANY) & (cgroup.xself | X_CGROUP_ANY)

``lineage``/``xlineage`` are per task: a child starts with its parent's, and each exec ORs in
the exe entry's ``inherit``/``xinherit`` (rules written with ``descendants = true``).

Precedence is the index order, decided once here (:func:`precedence_class`): enforcing allow,
then enforcing kill, enforcing deny, then monitor-mode allow, kill, deny, then audit (any mode);
ties by rule number = file order. So "lowest set bit" is the whole verdict function.

Byte layout (the structs of probes/sealtrail.h, packed with their BTF-checked mirrors in
``agent.kernel.abi``; native little-endian integers; LPM data is big-endian by construction;
every key of an LPM trie is ``struct { __u32 prefixlen; __u8 data[N]; }`` with bits past
prefixlen zero; ``st_mask`` is ``__u64 w[16]``, bit i of rule index i is bit i%64 of w[i/64]):

    st_pol_rules   ARRAY  key __u32 op*1024+index -> struct { __u32 rule_no; __u16 policy_no;
                                                             __u8 action; __u8 flags; } (8 B)
                   action: enum st_pol_action (abi.PolAction); flags: ST_RULE_* (abi.RULE_*).
                   rule_no indexes CompiledPolicySet.rules_by_no (the id).
    st_pol_masks   ARRAY  key __u32 op -> st_mask slot[19] (2432 B), slots as in abi.Slot
    st_pol_paths   LPM    data[256] = op, path bytes[, NUL if exact] -> st_mask (128 B)
                   exact "/etc/shadow": data "\\x04/etc/shadow\\0", prefixlen = 8 * 13
                   prefix "/etc/sudoers.d/" or "/etc/sudoers*": no NUL, prefixlen = 8 * len
                   lookup: op, resolved path, NUL; truncated to 256 bytes (a longer path can
                   still hit prefix entries, never exact ones)
    st_pol_addrs   LPM    data[20] = op, 0, 0, 0, IPv6 address (IPv4 as ::ffff:a.b.c.d)
                   prefixlen = 32 + CIDR length -> st_mask
    st_pol_ports   LPM    data[4] = op, 0, port (big-endian) prefixlen = 16 + block bits; a
                   range is stored as its aligned power-of-two blocks -> st_mask
    st_pol_exe     LPM    data[256] like st_pol_paths, the acting binary's path
                   -> struct { st_mask self, inherit, xself, xinherit; } (512 B)
    st_pol_uid     HASH   key struct { __u32 op; __u32 uid; } -> struct { st_mask self, xself; }
    st_pol_gid     HASH   key struct { __u32 op; __u32 gid; } -> same (primary gid)
    st_pol_cgroup  LPM    data[256] like st_pol_paths, the cgroup v2 path relative to the
                   cgroup2 mount -> struct { st_mask self, xself; } (the loader turns it into
                   a cgroup-id keyed map for bpf_get_current_cgroup_id: see policies/README.md)

Every LPM value is the *closure*: the OR of its own masks and those of every shorter entry that
covers it, so one longest-prefix lookup yields every matching rule.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from agent.errors import PolicyInvalid
from agent.kernel import abi
from agent.kernel.abi import OP_MAX, Op, Slot, u32_key
from agent.policy.model import (
    ACCESS,
    PROTOCOLS,
    Rule,
    Subject,
    parse_address,
    parse_path,
    parse_port,
)
from agent.policy.source import PolicyProblem, PolicySet, PolicySource

OPS: dict[str, int] = {
    name: int(Op[name.upper()])
    for name in (
        "exec",
        "open",
        "unlink",
        "rename",
        "chmod",
        "chown",
        "connect",
        "bind",
        "listen",
        "accept",
    )
}
MAX_RULES = abi.RULES_PER_OP  # per operation: the bits of a mask
MASK_BYTES = ctypes.sizeof(abi.Mask)
N_SLOTS = abi.SLOTS
PROTO_SLOTS = {"tcp": Slot.PROTO_TCP, "udp": Slot.PROTO_UDP}
#: The protocol a rule's "tcp" or "udp" matches, by an event's protocol name: MPTCP falls back
#: to TCP with any TCP peer, UDP-Lite reaches the same port numbers (guard.bpf.c proto_family).
PROTO_FAMILY = {"mptcp": "tcp", "udplite": "udp"}
ACCESS_SLOTS = {name: Slot[f"ACCESS_{name.upper()}"] for name in ACCESS}
assert set(PROTO_SLOTS) == set(PROTOCOLS)


@dataclass(frozen=True)
class MapSpec:
    """One BPF map: what the loader creates (BPF_F_NO_PREALLOC for LPM tries)."""

    name: str
    kind: str  # "array" | "hash" | "lpm_trie"
    key_size: int
    value_size: int
    max_entries: int  # a sealtrail.h capacity

    @property
    def lpm_data(self) -> int:
        """Bytes of an LPM key's data (after its ``__u32 prefixlen``)."""
        return self.key_size - _PREFIXLEN.size


def _spec(name: str, kind: str, key: type[ctypes._CData], value: type[ctypes._CData],
          max_entries: int) -> MapSpec:  # fmt: skip
    return MapSpec(name, kind, ctypes.sizeof(key), ctypes.sizeof(value), max_entries)


_U32 = ctypes.c_uint32
MAPS: dict[str, MapSpec] = {
    "rules": _spec("st_pol_rules", "array", _U32, abi.PolRule, OP_MAX * MAX_RULES),
    "masks": _spec("st_pol_masks", "array", _U32, abi.PolMasks, OP_MAX),
    "paths": _spec("st_pol_paths", "lpm_trie", abi.LpmPathKey, abi.Mask, abi.POL_PATHS_MAX),
    "addrs": _spec("st_pol_addrs", "lpm_trie", abi.LpmAddrKey, abi.Mask, abi.POL_TABLE_MAX),
    "ports": _spec("st_pol_ports", "lpm_trie", abi.LpmPortKey, abi.Mask, abi.POL_TABLE_MAX),
    "exe": _spec("st_pol_exe", "lpm_trie", abi.LpmPathKey, abi.PolExe, abi.POL_TABLE_MAX),
    "uid": _spec("st_pol_uid", "hash", abi.PolIdKey, abi.PolId, abi.POL_TABLE_MAX),
    "gid": _spec("st_pol_gid", "hash", abi.PolIdKey, abi.PolId, abi.POL_TABLE_MAX),
    # by path here; the guard turns it into the kernel's st_pol_cgroup, keyed by cgroup id
    "cgroup": _spec("st_pol_cgroup", "lpm_trie", abi.LpmPathKey, abi.PolId, abi.POL_TABLE_MAX),
}


def precedence_class(mode: str, action: str) -> int:
    """0 wins. Rules that change the outcome first (allow exceptions, then kill > deny), then
    monitor-mode rules the same way (they never override an enforcing rule), then audit."""
    if action == "audit":
        return 6
    order = ("allow", "kill", "deny").index(action)
    return order if mode == "enforce" else 3 + order


# ---- key encoding: used by the compiler (entries) and the evaluator (lookups) ----


#: Every st_lpm_*_key starts with ``__u32 prefixlen`` and has its data right after it, no
#: padding: checked here against the mirror, so the lookups below may build keys as bytes (the
#: evaluator makes dozens per decision; a ctypes object each would double its cost).
_PREFIXLEN = abi.LpmPathKey.prefixlen
assert all(
    key.prefixlen.offset == 0
    and key.prefixlen.size == _PREFIXLEN.size
    and key.data.offset == _PREFIXLEN.size
    and ctypes.sizeof(key) == key.data.offset + key.data.size
    for key in (abi.LpmPathKey, abi.LpmAddrKey, abi.LpmPortKey)
)
_PREFIXLEN_SIZE, _BYTEORDER = _PREFIXLEN.size, sys.byteorder


def prefix_bits(prefixlen: int, data: bytes, size: int) -> bytes:
    """``data`` cut to its first ``prefixlen`` bits (the rest zeroed), padded to ``size``."""
    full, rest = divmod(prefixlen, 8)
    kept = bytearray(data[: full + (1 if rest else 0)])
    if rest:
        kept[-1] &= (0xFF << (8 - rest)) & 0xFF
    return bytes(kept).ljust(size, b"\0")


def lpm_key(prefixlen: int, data: bytes, size: int) -> bytes:
    """An st_lpm_*_key with ``size`` bytes of data, the bits past ``prefixlen`` zeroed."""
    head = prefixlen.to_bytes(_PREFIXLEN_SIZE, _BYTEORDER)
    if not prefixlen % 8:  # whole bytes (every path key): nothing to mask
        return head + data[: prefixlen // 8].ljust(size, b"\0")
    return head + prefix_bits(prefixlen, data, size)


def path_patterns(
    compiled: CompiledPolicySet, operations: Iterable[str]
) -> list[tuple[bytes, bool]]:
    """The paths table's entries for ``operations``, as (path bytes, exact): an exact entry
    matches that path, the others every path that starts with it (what the LPM lookup of
    ``path_lookup`` can match; the native fanotify filter's ``patterns``)."""
    ops = {OPS[name] for name in operations}
    out = []
    for key in compiled.maps["paths"]:
        prefixlen = int.from_bytes(key[:_PREFIXLEN_SIZE], _BYTEORDER)
        data = key[_PREFIXLEN_SIZE : _PREFIXLEN_SIZE + prefixlen // 8]
        if not data or data[0] not in ops:
            continue
        body = data[1:]
        exact = body.endswith(b"\0")
        out.append((body[:-1] if exact else body, exact))
    return out


def path_entry(op: int, pattern: str) -> tuple[int, bytes]:
    body, is_prefix = parse_path(pattern)
    data = bytes([op]) + body + (b"" if is_prefix else b"\0")
    return 8 * len(data), data


def path_lookup(op: int, path: str) -> tuple[int, bytes]:
    data = (bytes([op]) + path.encode("utf-8", "surrogateescape") + b"\0")[: abi.LPM_PATH_DATA]
    return 8 * len(data), data


def addr_entry(op: int, cidr: str) -> tuple[int, bytes]:
    address, prefixlen = parse_address(cidr)
    return 32 + prefixlen, bytes([op, 0, 0, 0]) + address


def addr_lookup(op: int, address: str) -> tuple[int, bytes]:
    """Any textual address; IPv4 and IPv4-mapped IPv6 give the same key."""
    parsed = ipaddress.ip_address(address.split("%", 1)[0])
    packed = (
        b"\0" * 10 + b"\xff\xff" + parsed.packed
        if isinstance(parsed, ipaddress.IPv4Address)
        else parsed.packed
    )
    return 32 + 128, bytes([op, 0, 0, 0]) + packed


_MAPPED = b"\0" * 10 + b"\xff\xff"
#: the unspecified peer (v4 keys are v4-mapped) -> the loopback addresses it reaches
_UNSPECIFIED_PEER = {
    _MAPPED + bytes(4): (_MAPPED + bytes([127, 0, 0, 1]),),
    bytes(16): (bytes(15) + b"\1", _MAPPED + bytes([127, 0, 0, 1])),
}


def peer_lookups(op: int, address: str) -> tuple[tuple[int, bytes], ...]:
    """The keys a connect (or a datagram sent) to ``address`` is judged by: the address the
    kernel sends to. The unspecified address means this host: 0.0.0.0 goes to 127.0.0.1, "::"
    to ::1, or to ::ffff:127.0.0.1 from a socket bound to a v4-mapped address (judged as both),
    as probes/guard.bpf.c's unspecified_peer does."""
    prefixlen, data = addr_lookup(op, address)
    reached = _UNSPECIFIED_PEER.get(data[4:], (data[4:],))
    return tuple((prefixlen, data[:4] + peer) for peer in reached)


def port_entries(op: int, value: int | str) -> Iterator[tuple[int, bytes]]:
    """A port range as the aligned power-of-two blocks that exactly cover it."""
    low, high = parse_port(value)
    while low <= high:
        size = low & -low if low else 1 << 16
        while size > high - low + 1:
            size //= 2
        yield 16 + 16 - size.bit_length() + 1, bytes([op, 0]) + low.to_bytes(2, "big")
        low += size


def port_lookup(op: int, port: int) -> tuple[int, bytes]:
    return 32, bytes([op, 0]) + port.to_bytes(2, "big")


def id_key(op: int, value: int) -> bytes:
    return bytes(abi.PolIdKey(op, value))


def pack_masks(*masks: int) -> bytes:
    return b"".join(mask.to_bytes(MASK_BYTES, "little") for mask in masks)


def unpack_masks(value: bytes) -> tuple[int, ...]:
    return tuple(
        int.from_bytes(value[i : i + MASK_BYTES], "little")
        for i in range(0, len(value), MASK_BYTES)
    )


# ---- compiled form ----


def _by_exe(rule: Rule) -> bool:
    """Whether the rule's subjects, or their except, name an exe."""
    subject = rule.subjects
    return subject is not None and (
        subject.exe is not None or (subject.except_ is not None and subject.except_.exe is not None)
    )


@dataclass(frozen=True)
class CompiledRule:
    """One rule's place in the kernel tables, and what userspace needs to report it."""

    operation: str
    index: int  # bit in the operation's masks = precedence (0 wins)
    rule_no: int  # position in the set, file order
    rule_id: str
    policy_no: int
    policy_name: str
    mode: str
    action: str
    fallback: str | None
    file: str
    rule_in_file: int
    access: tuple[str, ...] = ()  # open rules: the access kinds they guard
    paths: tuple[str, ...] | None = None  # file and exec rules: targets.paths (None: every file)
    fileless: bool = False  # exec rules with targets.fileless (paths is then (): no file named)
    ports: tuple[int | str, ...] | None = None  # network rules: targets.ports (None: every port)
    protocol: str | None = None  # network rules: targets.protocol (None: tcp and udp)
    by_exe: bool = False  # subjects or their except name an exe

    @property
    def flags(self) -> int:
        return (
            (abi.RULE_MONITOR if self.mode == "monitor" else 0)
            | (abi.RULE_FALLBACK_KILL if self.fallback == "kill" else 0)
            | (abi.RULE_FALLBACK_AUDIT if self.fallback == "audit" else 0)
        )

    def entry(self) -> tuple[bytes, bytes]:
        """(key, value) in st_pol_rules."""
        key = u32_key(OPS[self.operation] * MAX_RULES + self.index)
        action = abi.PolAction[self.action.upper()]
        return key, bytes(abi.PolRule(self.rule_no, self.policy_no, action, self.flags))


@dataclass(frozen=True)
class CompiledPolicySet:
    """Exactly what the kernel gets (``maps``: map key -> {key bytes: value bytes}) plus the
    rule metadata userspace needs to turn a rule index into a verdict."""

    digest: str
    rules: tuple[CompiledRule, ...]  # by operation, then index
    maps: Mapping[str, Mapping[bytes, bytes]]

    def rule(self, operation: str, index: int) -> CompiledRule:
        return self._by_index[(operation, index)]

    @functools.cached_property
    def _by_index(self) -> dict[tuple[str, int], CompiledRule]:
        return {(r.operation, r.index): r for r in self.rules}

    @functools.cached_property
    def follows_descendants(self) -> bool:
        """Does any rule name a binary with ``descendants`` (exe entries with inherit bits)?
        Then the kernel keeps per-task lineage and userspace judges with ancestors."""
        return any(any(unpack_masks(value)[1::2]) for value in self.maps.get("exe", {}).values())

    @functools.cached_property
    def rules_by_no(self) -> tuple[CompiledRule, ...]:
        """Rules in set (file) order: ``rules_by_no[rule_no]``."""
        return tuple(sorted(self.rules, key=lambda r: r.rule_no))


class _Lpm:
    """Entries of one LPM map before packing: (prefixlen, data) -> vector of masks."""

    def __init__(self, size: int, width: int) -> None:
        self.size = size
        self.width = width
        self.raw: dict[tuple[int, bytes], list[int]] = {}

    def add(self, entry: tuple[int, bytes], slot: int, bit: int) -> None:
        prefixlen, data = entry
        bits = prefix_bits(prefixlen, data, self.size)
        self.raw.setdefault((prefixlen, bits), [0] * self.width)[slot] |= bit

    def closed(self) -> dict[bytes, bytes]:
        """Each entry ORed with every shorter entry covering it."""
        lengths = sorted({length for length, _ in self.raw})
        out = {}
        for (length, data), masks in self.raw.items():
            total = list(masks)
            for shorter in lengths:
                if shorter >= length:
                    break
                covering = self.raw.get((shorter, prefix_bits(shorter, data, self.size)))
                if covering is not None:
                    total = [a | b for a, b in zip(total, covering, strict=True)]
            out[lpm_key(length, data, self.size)] = pack_masks(*total)
        return out


class _OpTables:
    """Everything one operation contributes, filled rule by rule."""

    def __init__(self, op: int, maps: dict[str, _Lpm], ids: dict[str, dict[bytes, list[int]]]):
        self.op = op
        self.maps = maps
        self.ids = ids
        self.slots = [0] * N_SLOTS

    def add(self, rule: Rule, bit: int) -> None:
        op, target = self.op, rule.targets
        for path in target.paths or ():
            self.maps["paths"].add(path_entry(op, path), 0, bit)
        if target.fileless:
            self.slots[Slot.EXEC_FILELESS] |= bit
        for address in target.addresses or ():
            self.maps["addrs"].add(addr_entry(op, address), 0, bit)
        for port in target.ports or ():
            for entry in port_entries(op, port):
                self.maps["ports"].add(entry, 0, bit)
        if target.addresses is None:
            self.slots[Slot.ADDR_ANY] |= bit
        if target.ports is None:
            self.slots[Slot.PORT_ANY] |= bit
        protocol = Slot.PROTO_ANY if target.protocol is None else PROTO_SLOTS[target.protocol]
        self.slots[protocol] |= bit
        for access in rule.access_set:
            self.slots[ACCESS_SLOTS[access]] |= bit
        self._who(rule.subjects, bit, side=0)
        excepted = rule.subjects.except_ if rule.subjects else None
        if excepted is not None:  # rules without except never reach X: HAS_EXCEPT gates it
            self.slots[Slot.HAS_EXCEPT] |= bit
            self._who(excepted, bit, side=1)

    def _any(self, bit: int, side: int) -> None:
        base = Slot.X_EXE_ANY if side else Slot.EXE_ANY
        for offset in range(4):
            self.slots[base + offset] |= bit

    def _who(self, subject: Subject | None, bit: int, side: int) -> None:
        """side 0: the subject's own fields; side 1: its except."""
        if subject is None or not subject.selects:
            self._any(bit, side)
            return
        base = Slot.X_EXE_ANY if side else Slot.EXE_ANY
        for offset, values in enumerate((subject.exe, subject.uid, subject.gid, subject.cgroup)):
            if values is None:
                self.slots[base + offset] |= bit
        for exe in subject.exe or ():
            self.maps["exe"].add(path_entry(self.op, exe), 2 * side, bit)
            if subject.inherits:
                self.maps["exe"].add(path_entry(self.op, exe), 2 * side + 1, bit)
        for name, values in (("uid", subject.uid), ("gid", subject.gid)):
            for value in values or ():
                self.ids[name].setdefault(id_key(self.op, value), [0, 0])[side] |= bit
        for cgroup in subject.cgroup or ():
            self.maps["cgroup"].add(path_entry(self.op, cgroup), side, bit)


def compile_policy_set(policy_set: PolicySet) -> CompiledPolicySet:
    """The kernel tables for ``policy_set``; PolicyInvalid if a table limit is exceeded."""
    placed: dict[str, list[tuple[int, int, PolicySource, int]]] = defaultdict(list)
    for rule_no, (source, in_file, rule) in enumerate(policy_set.rules()):
        rank = precedence_class(source.policy.mode, rule.action)
        placed[rule.operation].append((rank, rule_no, source, in_file))
    lpms = {
        name: _Lpm(MAPS[name].lpm_data, MAPS[name].value_size // MASK_BYTES)
        for name in ("paths", "addrs", "ports", "exe", "cgroup")
    }
    ids: dict[str, dict[bytes, list[int]]] = {"uid": {}, "gid": {}}
    compiled: list[CompiledRule] = []
    masks: dict[bytes, bytes] = {}
    findings: list[PolicyProblem] = []
    for operation, op in OPS.items():
        entries = sorted(placed.get(operation, []), key=lambda e: e[:2])
        if len(entries) > MAX_RULES:
            _, _, source, in_file = entries[MAX_RULES]
            message = f"more than {MAX_RULES} rules for operation {operation!r}: the kernel "
            findings.append(source.finding("error", message + "masks hold that many", rule=in_file))
            continue
        tables = _OpTables(op, lpms, ids)
        for index, (_, rule_no, source, in_file) in enumerate(entries):
            policy, rule = source.policy, source.policy.rules[in_file]
            tables.add(rule, 1 << index)
            policy_no = policy_set.sources.index(source)
            compiled.append(
                CompiledRule(
                    operation, index, rule_no, rule.id, policy_no, policy.name, policy.mode,
                    rule.action, rule.fallback, source.document.file, in_file,
                    rule.access_set if rule.operation == "open" else (),
                    () if rule.targets.fileless else rule.targets.paths,
                    bool(rule.targets.fileless), rule.targets.ports, rule.targets.protocol,
                    _by_exe(rule),
                )
            )  # fmt: skip
        if entries:
            masks[u32_key(op)] = pack_masks(*tables.slots)
    maps: dict[str, dict[bytes, bytes]] = {name: lpm.closed() for name, lpm in lpms.items()}
    for name, table in ids.items():
        maps[name] = {key: pack_masks(*value) for key, value in table.items()}
    maps["masks"] = masks
    maps["rules"] = dict(rule.entry() for rule in compiled)
    for name, spec in MAPS.items():
        if len(maps[name]) > spec.max_entries:
            message = f"{len(maps[name])} entries for {spec.name}: at most {spec.max_entries}"
            findings.append(PolicyProblem("error", "(policy set)", None, None, None, None, message))
    if findings:
        raise PolicyInvalid(list(findings))
    return CompiledPolicySet(policy_set.digest, tuple(compiled), maps)
