"""The userspace verdict: the same lookups the kernel does, over the same compiled bytes.

``Evaluator.decide`` reads only ``CompiledPolicySet.maps`` (never the TOML model), so a fixture
that passes here exercises the tables the kernel is given. It also serves the fanotify mechanism,
whose permission answers are decided in userspace.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agent.events.model import (
    AcceptEvent,
    Event,
    ExecEvent,
    FileEvent,
    NetEvent,
    OpenEvent,
    RenameEvent,
    TruncateEvent,
)
from agent.kernel.abi import PolIdKey, Slot, u32_key
from agent.policy.compile import (
    ACCESS_SLOTS,
    MAPS,
    OPS,
    PROTO_FAMILY,
    PROTO_SLOTS,
    CompiledPolicySet,
    addr_lookup,
    id_key,
    lpm_key,
    path_lookup,
    peer_lookups,
    port_lookup,
    unpack_masks,
)
from agent.policy.model import ACCESS, FILE_OPERATIONS, OPERATIONS

_NO_MASKS = (0, 0, 0, 0)

#: unpack_masks of the compiled tables' values: the same few bytes objects every decision
#: (their hash is cached in them), so a hit is one dictionary lookup instead of decoding every
#: slot again (a third of a decision's cost).
_unpack = functools.lru_cache(maxsize=4096)(unpack_masks)
#: Lookups an Evaluator remembers (then it starts again: memory stays bounded)
LPM_MEMO = 8192


@dataclass(frozen=True)
class Process:
    """The acting process as the kernel sees it."""

    exe: str | None  # resolved path of the running binary (for exec: the caller's)
    uid: int
    gid: int
    cgroup: str | None = None  # cgroup v2 path relative to the cgroup2 mount
    ancestors: tuple[str, ...] = ()  # exes of earlier images of this process and its ancestors
    #: False when the binary could not be read (/proc/PID/exe refused: the agent without
    #: CAP_SYS_PTRACE, a task of another user): judged fail-closed (``Evaluator._subject``)
    exe_known: bool = True
    #: False when an ancestor's binary could not be read (lineage rules: fail-closed too)
    ancestry_known: bool = True


@dataclass(frozen=True)
class Request:
    """One operation to judge: the process, the operation and its object."""

    operation: str
    process: Process
    path: str | None = None  # exec: the new binary; file ops: the object; rename: the source
    new_path: str | None = None  # rename: the destination
    access: tuple[str, ...] = ()  # open: subset of read, write, create, truncate
    address: str | None = None  # connect/accept: the peer; bind/listen: the local address
    port: int | None = None  # connect: the peer's port; bind/listen/accept: the local port
    protocol: str | None = None  # "tcp", "udp" or another name/number
    fileless: bool = False  # exec: the binary has no name in any filesystem (memfd, deleted)

    def __post_init__(self) -> None:
        if self.operation not in OPERATIONS:
            raise ValueError(f"operation {self.operation!r}: use one of {', '.join(OPERATIONS)}")
        if self.operation in FILE_OPERATIONS and self.path is None:
            raise ValueError(f"operation {self.operation!r} needs a path")
        if any(a not in ACCESS for a in self.access):
            raise ValueError(f"access {self.access!r}: use {', '.join(ACCESS)}")


class Effect(enum.StrEnum):
    """What a verdict does, spelled as the journal's verdict ``action`` (docs/journal-format.md):
    the rule's action, or in monitor mode what a deny or kill rule would have done."""

    ALLOW = "allow"
    AUDIT = "audit"
    DENY = "deny"
    KILL = "kill"
    WOULD_DENY = "would_deny"
    WOULD_KILL = "would_kill"

    @property
    def stops(self) -> bool:
        """Is the operation stopped (deny, kill)?"""
        return self in (Effect.DENY, Effect.KILL)

    @property
    def severity(self) -> int:
        """Orders verdicts on one object: the strictest of several names of a file wins."""
        return _SEVERITY[self]


_SEVERITY = {
    Effect.ALLOW: 0, Effect.AUDIT: 1, Effect.WOULD_DENY: 1, Effect.WOULD_KILL: 1,
    Effect.DENY: 2, Effect.KILL: 3,
}  # fmt: skip


def effective_action(mode: str, action: str) -> Effect:
    """What happens: deny/kill in monitor mode only record would_deny/would_kill."""
    if mode == "monitor" and action in ("deny", "kill"):
        return Effect(f"would_{action}")
    return Effect(action)


@dataclass(frozen=True)
class Verdict:
    action: str  # allow | audit | deny | kill, as the rule says ("allow" if no rule matched)
    effective: Effect  # action after the policy's mode: would_deny / would_kill in monitor mode
    rule_id: str | None
    policy_name: str | None
    digest: str  # of the policy set that decided

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "effective": self.effective,
            "rule": self.rule_id,
            "policy": self.policy_name,
            "digest": self.digest,
        }


@dataclass(frozen=True)
class IdScreen:
    """What a caller's real uid and primary gid alone say of one operation's rules, from the
    compiled tables: a rule can match only a subject in ``(uid.self | UID_ANY) & (gid.self |
    GID_ANY)`` (``Evaluator._subject``), so a caller for whom that is empty matches no rule of
    the operation, whatever the object, binary, cgroup or ancestry. The native fanotify filter
    answers such callers' permission events itself (``native/stfanotify.c``)."""

    uid_any: int
    gid_any: int
    uids: dict[int, int]  # uid -> the rules naming it (``uid.self``)
    gids: dict[int, int]

    def admits(self, uid: int, gid: int) -> bool:
        """False if no rule of the operation can match a caller with these ids."""
        return bool((self.uids.get(uid, 0) | self.uid_any) & (self.gids.get(gid, 0) | self.gid_any))


class Evaluator:
    """Verdicts from one compiled policy set."""

    def __init__(self, compiled: CompiledPolicySet) -> None:
        self.compiled = compiled
        self._lengths = {
            name: sorted({int.from_bytes(key[:4], "little") for key in compiled.maps[name]})[::-1]
            for name, spec in MAPS.items()
            if spec.kind == "lpm_trie"
        }
        # per operation, the bits of allow rules: the exceptions an unknown binary must not get
        allow: dict[int, int] = {}
        for rule in compiled.rules:
            if rule.action == "allow":
                op = OPS[rule.operation]
                allow[op] = allow.get(op, 0) | 1 << rule.index
        self._allow = allow
        self._lpm_seen: dict[tuple[str, tuple[int, bytes]], tuple[int, ...]] = {}

    def lpm_value(self, name: str, lookup: tuple[int, bytes]) -> bytes | None:
        """The packed value the kernel's LPM trie ``name`` returns for ``lookup``, if any."""
        prefixlen, data = lookup
        size = MAPS[name].lpm_data
        table = self.compiled.maps[name]
        for length in self._lengths[name]:
            if length <= prefixlen:
                value = table.get(lpm_key(length, data, size))
                if value is not None:
                    return value
        return None

    def _lpm(self, name: str, lookup: tuple[int, bytes]) -> tuple[int, ...]:
        """Longest-prefix match, as the kernel's LPM trie does (remembered: the same binaries
        and paths come back all the time, and the tables never change under an Evaluator)."""
        key = (name, lookup)
        found = self._lpm_seen.get(key)
        if found is None:
            value = self.lpm_value(name, lookup)
            found = _unpack(value) if value is not None else _NO_MASKS
            if len(self._lpm_seen) >= LPM_MEMO:
                self._lpm_seen.clear()
            self._lpm_seen[key] = found
        return found

    def _id(self, name: str, op: int, value: int) -> tuple[int, ...]:
        found = self.compiled.maps[name].get(id_key(op, value))
        return _unpack(found) if found is not None else _NO_MASKS

    def _lineage(self, op: int, ancestors: Iterable[str]) -> tuple[int, int]:
        """What the kernel keeps per task: inherit bits ORed over every exec in the ancestry."""
        inherit = xinherit = 0
        for exe in ancestors:
            _, inh, _, xinh = self._lpm("exe", path_lookup(op, exe))
            inherit, xinherit = inherit | inh, xinherit | xinh
        return inherit, xinherit

    def id_screen(self, operation: str) -> IdScreen:
        """The uid and gid masks of ``operation``'s rules (``IdScreen``)."""
        op = OPS[operation]
        found = self.compiled.maps["masks"].get(u32_key(op))
        if found is None:
            return IdScreen(0, 0, {}, {})  # no rule of the operation: nobody is admitted
        slot = _unpack(found)

        def table(name: str) -> dict[int, int]:
            out = {}
            for key, value in self.compiled.maps[name].items():
                k = PolIdKey.from_buffer_copy(key)
                if k.op == op:
                    out[int(k.id)] = _unpack(value)[0]
            return out

        return IdScreen(slot[Slot.UID_ANY], slot[Slot.GID_ANY], table("uid"), table("gid"))

    def targets(self, operation: str, path: str) -> bool:
        """Does any rule of ``operation`` name ``path`` (before asking who acts)?"""
        return bool(self._lpm("paths", path_lookup(OPS[operation], path))[0])

    def matching(self, request: Request) -> int:
        """The mask of every rule that matches ``request`` (bit = rule index)."""
        op = OPS[request.operation]
        found = self.compiled.maps["masks"].get(u32_key(op))
        if found is None:
            return 0
        slot = _unpack(found)
        return self._target(op, request, slot) & self._subject(op, request.process, slot)

    def _target(self, op: int, request: Request, slot: tuple[int, ...]) -> int:
        if request.path is not None:
            mask = self._lpm("paths", path_lookup(op, request.path))[0]
            if request.new_path is not None:
                mask |= self._lpm("paths", path_lookup(op, request.new_path))[0]
            if request.operation == "open":
                access = 0
                for name in request.access:
                    access |= slot[ACCESS_SLOTS[name]]
                mask &= access
            if request.fileless and request.operation == "exec":
                mask |= slot[Slot.EXEC_FILELESS]
            return mask
        addr = port = 0
        if request.address is not None:
            lookups = (
                peer_lookups(op, request.address)
                if request.operation == "connect"
                else (addr_lookup(op, request.address),)
            )
            for lookup in lookups:
                addr |= self._lpm("addrs", lookup)[0]
        if request.port is not None:
            port = self._lpm("ports", port_lookup(op, request.port))[0]
        protocol = request.protocol or ""
        proto_slot = PROTO_SLOTS.get(PROTO_FAMILY.get(protocol, protocol))
        proto = slot[proto_slot] if proto_slot is not None else 0
        return (
            (addr | slot[Slot.ADDR_ANY])
            & (port | slot[Slot.PORT_ANY])
            & (proto | slot[Slot.PROTO_ANY])
        )

    def _subject(self, op: int, process: Process, slot: tuple[int, ...]) -> int:
        exe = self._lpm("exe", path_lookup(op, process.exe)) if process.exe else _NO_MASKS
        uid = self._id("uid", op, process.uid)
        gid = self._id("gid", op, process.gid)
        cgroup = self._lpm("cgroup", path_lookup(op, process.cgroup)) if process.cgroup else (0, 0)
        inherit, xinherit = self._lineage(op, process.ancestors)
        if not (process.exe_known and process.ancestry_known):
            # A binary the agent could not read may be any binary: fail closed. The exe
            # condition of every deny, kill and audit rule holds (what is known can only add
            # an exemption it proves), no allow rule gets a match it cannot prove, and every
            # allow rule's `except` exempts.
            allow = self._allow.get(op, 0)
            inherit |= ~allow
            xinherit |= allow
        subject = (
            (exe[0] | inherit | slot[Slot.EXE_ANY])
            & (uid[0] | slot[Slot.UID_ANY])
            & (gid[0] | slot[Slot.GID_ANY])
            & (cgroup[0] | slot[Slot.CGROUP_ANY])
        )
        excluded = (
            slot[Slot.HAS_EXCEPT]
            & (exe[2] | xinherit | slot[Slot.X_EXE_ANY])
            & (uid[1] | slot[Slot.X_UID_ANY])
            & (gid[1] | slot[Slot.X_GID_ANY])
            & (cgroup[1] | slot[Slot.X_CGROUP_ANY])
        )
        return subject & ~excluded

    def decide(self, request: Request) -> Verdict:
        """The winning rule is the lowest set bit: indexes are in precedence order."""
        mask = self.matching(request)
        if not mask:
            return Verdict("allow", Effect.ALLOW, None, None, self.compiled.digest)
        rule = self.compiled.rule(request.operation, (mask & -mask).bit_length() - 1)
        return Verdict(
            rule.action,
            effective_action(rule.mode, rule.action),
            rule.rule_id,
            rule.policy_name,
            self.compiled.digest,
        )


def judged_kinds(operation: str, access: Iterable[str]) -> frozenset[str]:
    """The event kinds a rule of ``operation`` judges: its own, and for an open rule guarding
    ``truncate`` the truncate events too (truncate(2), ftruncate(2): no open happens)."""
    if operation == "open" and "truncate" in access:
        return frozenset({"open", "truncate"})
    return frozenset({operation})


def request_from_event(event: Event, process: Process) -> Request | None:
    """The request an observed event made, or None for kinds no rule guards (fork, exit).

    ``process`` is the actor as the agent's process table knows it: for an exec event that is
    the caller before the exec (its exe and ancestors), not the new image.
    """
    if isinstance(event, TruncateEvent):  # the effect an open with O_TRUNC has, without the open
        return Request("open", process, path=event.path, access=("truncate",))
    if event.kind not in OPS:
        return None
    if isinstance(event, ExecEvent):
        return Request("exec", process, path=event.exe or event.filename, fileless=event.fileless)
    if isinstance(event, FileEvent):
        return Request(
            event.kind,
            process,
            path=event.path,
            new_path=event.new_path if isinstance(event, RenameEvent) else None,
            access=event.access if isinstance(event, OpenEvent) else (),
        )
    if isinstance(event, NetEvent):
        local = event.kind in ("bind", "listen")
        return Request(
            event.kind,
            process,
            address=event.local_addr if local else event.remote_addr,
            port=event.local_port if local or isinstance(event, AcceptEvent) else event.remote_port,
            protocol=event.protocol,
        )
    return None
