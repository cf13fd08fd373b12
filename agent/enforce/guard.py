"""The in-kernel guard (probes/guard.bpf.c): cgroup sock hooks judged by compiled policy maps.

``Guard.install`` puts a CompiledPolicySet into the kernel atomically: every table is written
into fresh inner maps in the idle slot of its array-of-maps, then one store to st_guard_cfg
flips the live slot. Hooks read the slot once per decision, so they see the old policy or the
new one, never a mix and never none. The previous slot's maps are then released.

The hooks attach to one cgroup (the cgroup v2 root for a host-wide agent; a test attaches to a
cgroup it created) and apply to every process below it.

With a pin directory (``agent.kernel.pins``) the guard's maps and links are pinned, so the
kernel keeps judging with the last installed policy while no agent runs, and a starting agent
takes them over: same maps (the live slot stays live until its first install flips), links
switched to its programs. The rule tables of pinned generations are saved beside
(``PinDir.state_file``), so a verdict taken before the restart still names its rule.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.closing import Closing
from agent.enforce.cgroups import cgroup2_root, cgroup_dirs
from agent.errors import KernelError
from agent.kernel import abi
from agent.kernel.libbpf import lib
from agent.kernel.loader import (
    BPF_F_NO_PREALLOC,
    BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_LPM_TRIE,
    BpfObject,
    Map,
    cgroup_program_ids,
    object_path,
)
from agent.kernel.pins import GUARD, PinDir, stale
from agent.kernel.probe import PREPARE_EXEC_HOOK, btf_has_name
from agent.policy.compile import MAPS, OPS, CompiledPolicySet, path_lookup
from agent.policy.evaluate import Evaluator

log = logging.getLogger(__name__)

PROGRAMS = (
    "st_guard_connect4", "st_guard_connect6", "st_guard_sendmsg4", "st_guard_sendmsg6",
    "st_guard_bind4", "st_guard_bind6", "st_guard_post_bind4", "st_guard_post_bind6",
    "st_guard_egress",
)  # fmt: skip
#: cgroup programs whose helpers older kernels refuse there (6.1: the egress judge's
#: bpf_get_current_pid_tgid): loaded without them, which `policy check --host` reports
#: (HostCapabilities.cgroup_egress, doctor's cgroup_egress check)
CGROUP_OPTIONAL = ("st_guard_egress",)
LINEAGE_PROGRAMS = ("st_guard_fork", "st_guard_exec", "st_guard_exit")
LSM_PROGRAMS = (
    "st_lsm_exec", "st_lsm_file_open", "st_lsm_create", "st_lsm_unlink", "st_lsm_rename",
    "st_lsm_chmod", "st_lsm_chown", "st_lsm_listen", "st_lsm_truncate", "st_lsm_ftruncate",
    "st_lsm_mmap_file", "st_lsm_file_mprotect",
)  # fmt: skip
#: LSM programs whose hook only newer kernels have (file_truncate: 6.2), by the BTF function
#: the kernel attaches them to: loaded only where that exists.
LSM_OPTIONAL = {"st_lsm_ftruncate": b"bpf_lsm_file_truncate"}
#: Hosts without BPF-LSM: exec rules with targets.fileless, killed at sched_prepare_exec (6.10+)
FILELESS_PROGRAMS = ("st_fileless_exec",)
GUARDED_OPS = frozenset({"connect", "bind"})
#: Event kinds the LSM hooks judge in the kernel where BPF-LSM loads (truncate: open rules).
LSM_OPS = frozenset({"exec", "open", "unlink", "rename", "chmod", "chown", "listen", "truncate"})


@dataclass(frozen=True)
class _Table:
    outer: str  # array-of-maps in the object
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0


def _refused(exc: KernelError, programs: tuple[str, ...]) -> bool:
    """Whether a load failed on one of ``programs`` (libbpf names the program it failed)."""
    return any(f"prog '{name}': failed to load" in str(exc) for name in programs)


def _tables() -> dict[str, _Table]:
    """The inner maps, shaped as compile.MAPS says (cgroup: by id, see _cgroup_entries)."""
    kinds = {"array": BPF_MAP_TYPE_ARRAY, "hash": BPF_MAP_TYPE_HASH,
             "lpm_trie": BPF_MAP_TYPE_LPM_TRIE}  # fmt: skip
    out = {}
    for name in ("rules", "masks", "addrs", "ports", "paths", "exe", "uid", "gid"):
        spec = MAPS[name]
        out[name] = _Table(
            spec.name, kinds[spec.kind], spec.key_size, spec.value_size, spec.max_entries,
            BPF_F_NO_PREALLOC if spec.kind == "lpm_trie" else 0,
        )  # fmt: skip
    cg, key, mask = MAPS["cgroup"], ctypes.sizeof(abi.PolCgroupKey), ctypes.sizeof(abi.Mask)
    out["cgroup"] = _Table(cg.name, BPF_MAP_TYPE_HASH, key, cg.value_size, abi.POL_CGROUPS_MAX)
    key = ctypes.sizeof(abi.InodeKey)
    out["inodes"] = _Table("st_pol_inodes", BPF_MAP_TYPE_HASH, key, mask, abi.POL_TABLE_MAX)
    return out


TABLES = _tables()


def _cgroup_entries(compiled: CompiledPolicySet, root: Path) -> dict[bytes, bytes]:
    """st_pol_cgroup by cgroup id: every existing cgroup whose path matches an entry.

    The kernel knows a task's cgroup by id (bpf_get_current_cgroup_id); the policy names cgroup
    paths. Each cgroup directory that exists now gets its closed masks by the same LPM lookup the
    evaluator does. Cgroups created later match after the next reload (documented limit).
    """
    if not compiled.maps.get("cgroup"):
        return {}
    evaluator = Evaluator(compiled)
    entries: dict[bytes, bytes] = {}
    for rel, cgid in cgroup_dirs(root):
        for op in OPS.values():
            value = evaluator.lpm_value("cgroup", path_lookup(op, rel))
            if value is not None:
                entries[bytes(abi.PolCgroupKey(op=op, cgroup_id=cgid))] = value
    return entries


def _inode_entries(compiled: CompiledPolicySet) -> dict[bytes, bytes]:
    """st_pol_inodes: each exact path a rule names, by (op, device, inode), with its masks.

    A hard link is the same inode under another name; the LSM hooks look the object up here
    too, so the link is judged like the name the rule uses. Files created after the load are
    matched by path until the next reload.
    """
    entries: dict[bytes, bytes] = {}
    for key, value in compiled.maps.get("paths", {}).items():
        length = int.from_bytes(key[:4], "little") // 8
        data = key[4 : 4 + length]
        if len(data) < 3 or data[-1] != 0:
            continue  # a prefix entry: no single file
        try:
            st = os.stat(data[1:-1])
        except OSError:
            continue
        inode = abi.InodeKey(op=data[0], dev=abi.kernel_dev(st.st_dev), ino=st.st_ino)
        entries[bytes(inode)] = value
    return entries


class RuleRef(Protocol):
    """What a guard verdict needs of the rule it names (a CompiledRule, or a saved one)."""

    @property
    def rule_id(self) -> str: ...
    @property
    def policy_name(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def action(self) -> str: ...


class Generation(Protocol):
    """A policy generation as verdicts resolve it: a CompiledPolicySet, or a SavedGeneration."""

    @property
    def digest(self) -> str: ...
    def rule(self, operation: str, index: int) -> RuleRef: ...


@dataclass(frozen=True)
class SavedRule:
    rule_id: str
    policy_name: str
    mode: str
    action: str


@dataclass(frozen=True)
class SavedGeneration:
    """The rule table of a generation an earlier agent installed (from PinDir.state_file)."""

    digest: str
    rules: dict[tuple[str, int], SavedRule]

    def rule(self, operation: str, index: int) -> SavedRule:
        return self.rules[(operation, index)]

    @classmethod
    def of(cls, compiled: CompiledPolicySet) -> SavedGeneration:
        rules = {(r.operation, r.index): SavedRule(r.rule_id, r.policy_name, r.mode, r.action)
                 for r in compiled.rules}  # fmt: skip
        return cls(compiled.digest, rules)

    def to_json(self) -> dict[str, object]:
        rows = [[op, i, r.rule_id, r.policy_name, r.mode, r.action]
                for (op, i), r in sorted(self.rules.items())]  # fmt: skip
        return {"digest": self.digest, "rules": rows}

    @classmethod
    def from_json(cls, data: object) -> SavedGeneration:
        if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
            raise ValueError("not a saved generation")
        rules = {(str(op), int(i)): SavedRule(str(rid), str(pol), str(mode), str(action))
                 for op, i, rid, pol, mode, action in data["rules"]}  # fmt: skip
        return cls(str(data["digest"]), rules)


def _pinned_generation(pins: PinDir) -> int:
    """The highest generation the pinned guard config holds (0 if it cannot be read)."""
    fd = lib.bpf_obj_get(os.fsencode(pins.maps_dir(GUARD) / abi.MAP_GUARD_CFG))
    if fd < 0:
        return 0
    try:
        raw = Map(fd, abi.MAP_GUARD_CFG, 4, ctypes.sizeof(abi.GuardCfg), 1, BPF_MAP_TYPE_ARRAY)
        value = raw.lookup(b"\0" * 4)
        return int(max(abi.GuardCfg.from_buffer_copy(value).generation)) if value else 0
    except (KernelError, ValueError):
        return 0
    finally:
        os.close(fd)


def _absent_lsm_programs() -> frozenset[str]:
    """LSM_OPTIONAL programs whose hook this kernel lacks: its BTF has no such function."""
    return frozenset(p for p, fn in LSM_OPTIONAL.items() if not btf_has_name(fn))


def _link_program_id(link_fd: int) -> int:
    """struct bpf_link_info: type, id, prog_id (u32 each) first."""
    info = ctypes.create_string_buffer(256)
    size = ctypes.c_uint32(len(info))
    if link_fd < 0 or lib.bpf_obj_get_info_by_fd(link_fd, info, ctypes.byref(size)) < 0:
        raise KernelError("bpf link info")
    return int.from_bytes(info.raw[8:12], "little")


class Guard(Closing):
    """Load + attach the guard; ``install`` compiled policies; ``close`` detaches everything."""

    def __init__(
        self,
        cgroup: Path | str | None = None,
        shared_maps: dict[str, int] | None = None,
        lsm: bool = False,
        pins: PinDir | None = None,
    ) -> None:
        self.cgroup = Path(cgroup) if cgroup else cgroup2_root()
        self.pins = pins
        self._generation_floor = 0
        self.cgroup_root = cgroup2_root()
        self.lsm = lsm
        # cgroup programs get bpf_send_signal only on newer kernels; without it the agent
        # kills from userspace on the kernel's (deny) record
        self.kernel_kills_at_cgroup = True
        self._skipped = _absent_lsm_programs() if lsm else frozenset()
        # fileless exec: bprm_check_security judges it where BPF-LSM loads, else this hook
        self.fileless_exec = not lsm and btf_has_name(PREPARE_EXEC_HOOK)
        if not self.fileless_exec:
            self._skipped |= frozenset(FILELESS_PROGRAMS)
        cgroup_signal = True
        while True:  # at most three tries: each fallback once
            try:
                self._obj = self._load_pinned(shared_maps, cgroup_signal=cgroup_signal)
                break
            except KernelError as exc:
                if _refused(exc, CGROUP_OPTIONAL) and not set(CGROUP_OPTIONAL) <= self._skipped:
                    log.info("guard: this kernel refuses %s; loading without it",
                             ", ".join(CGROUP_OPTIONAL))  # fmt: skip
                    self._skipped |= frozenset(CGROUP_OPTIONAL)
                elif "bpf_send_signal" in str(exc) and cgroup_signal:
                    log.info("guard: no bpf_send_signal in cgroup programs here; kills from "
                             "userspace")  # fmt: skip
                    cgroup_signal = False
                else:
                    raise
        self.kernel_kills_at_cgroup = cgroup_signal
        #: datagrams no sock_addr hook sees are judged at egress (CGROUP_OPTIONAL)
        self.egress = not set(CGROUP_OPTIONAL) & self._skipped
        self._inner: dict[int, list[Map]] = {0: [], 1: []}
        self._installed: dict[int, dict[str, dict[bytes, bytes]]] = {0: {}, 1: {}}
        self.compiled: dict[int, CompiledPolicySet] = {}
        #: generations an earlier agent installed and pinned (their verdicts may still come)
        self.earlier: dict[int, SavedGeneration] = {}
        try:
            self._attach_all(lsm)
            self._cfg = self._obj.map(abi.MAP_GUARD_CFG)
            self._outer = {name: self._obj.map(t.outer) for name, t in TABLES.items()}
            # a pinned config carries on the earlier agent's numbering (0 when fresh)
            self.generation = max(self._generation_floor, int(max(self._read_cfg().generation)))
            self.taken_over = self.generation > 0
            if self.taken_over:
                self._take_over()
        except BaseException:
            self._obj.close()
            raise

    def _load_pinned(self, shared_maps: dict[str, int] | None, cgroup_signal: bool) -> BpfObject:
        """Load, reusing the maps an earlier agent pinned; if they no longer fit this build
        (an upgrade changed a table's size), start afresh: logged, since until the new
        programs attach nothing judges in the kernel."""
        try:
            return self._load(shared_maps, self.lsm, self._skipped, cgroup_signal, self.pins)
        except KernelError as exc:
            if self.pins is None or not stale(exc):
                raise
            log.warning("guard: the maps pinned in %s do not fit this agent (%s); replacing "
                        "them", self.pins.path, str(exc).splitlines()[0])  # fmt: skip
            # numbering goes on from the pinned guard's: verdicts of its generations still in
            # the ring buffer must not be read as the new ones' (their tables stay saved)
            self._generation_floor = _pinned_generation(self.pins)
            self.pins.remove(GUARD, keep_state=True)
            return self._load(shared_maps, self.lsm, self._skipped, cgroup_signal, self.pins)

    def _attach_all(self, lsm: bool) -> None:
        pins, keep = self.pins, set()
        cgroup_ino = os.stat(self.cgroup).st_ino  # the cgroup id: a pin per cgroup attached to
        for prog in PROGRAMS:
            if prog in self._skipped:
                continue
            if pins is None:
                self._obj.attach_cgroup(prog, self.cgroup)
                continue
            pin = pins.links_dir(GUARD) / f"{prog}@cgroup{cgroup_ino}"
            keep.add(pin)
            self._obj.attach_pinned(
                prog, pin, functools.partial(self._obj.attach_cgroup, prog, self.cgroup)
            )
        for prog in LINEAGE_PROGRAMS + (LSM_PROGRAMS if lsm else ()) + FILELESS_PROGRAMS:
            if prog in self._skipped:
                continue
            if pins is None:
                self._obj.attach(prog)
                continue
            pin = pins.links_dir(GUARD) / prog
            keep.add(pin)
            self._obj.attach_pinned(prog, pin, functools.partial(self._obj.attach, prog))
        if pins is not None:
            for gone in pins.prune_links(GUARD, keep):
                log.info("guard: detached %s, pinned by an earlier agent and not wanted now", gone)

    def _take_over(self) -> None:
        """The pinned slot is live: know its maps (verify, the next flip) and the rules of the
        pinned generations (the verdicts still in the ring buffer)."""
        assert self.pins is not None
        cfg = self._read_cfg()
        for gen, data in self.pins.load_generations().items():
            if gen in tuple(cfg.generation):
                try:
                    self.earlier[gen] = SavedGeneration.from_json(data)
                except (ValueError, TypeError, KeyError) as exc:
                    log.warning("guard: saved generation %d unreadable: %s", gen, exc)
        log.info("guard: took over the pinned guard at generation %d (policy %s)",
                 self.generation, self.earlier[self.generation].digest[:12]
                 if self.generation in self.earlier else "unknown")  # fmt: skip

    def policy_of(self, generation: int) -> Generation | None:
        """The policy a verdict of ``generation`` was taken under (None: not known here)."""
        return self.compiled.get(generation) or self.earlier.get(generation)

    @staticmethod
    def _load(
        shared_maps: dict[str, int] | None, lsm: bool, skipped: frozenset[str],
        cgroup_signal: bool, pins: PinDir | None,
    ) -> BpfObject:  # fmt: skip
        obj = BpfObject(object_path("guard"))
        try:
            for name, fd in (shared_maps or {}).items():
                obj.reuse_map(name, fd)
            if pins is not None:
                obj.pin_maps(pins.maps_dir(GUARD), skip=frozenset(shared_maps or {}))
            # LSM programs load only where BPF-LSM does (doctor probes it), and those of hooks
            # the kernel has: elsewhere it refuses them and would take the whole object down
            obj.only_load(
                lambda name, section: name not in skipped and (lsm or not section.startswith("lsm"))
            )
            rodata = abi.GuardRodata(cgroup_signal=int(cgroup_signal), lsm_signal=1)
            obj.set_rodata(abi.GUARD_RODATA_SECTION, bytes(rodata))
            obj.load()
        except BaseException:
            obj.close()
            raise
        return obj

    def _read_cfg(self) -> abi.GuardCfg:
        raw = self._cfg.lookup(b"\0" * 4)
        assert raw is not None
        return abi.GuardCfg.from_buffer_copy(raw)

    def install(self, compiled: CompiledPolicySet) -> int:
        """Make ``compiled`` the live policy; returns its generation number."""
        cfg = self._read_cfg()
        idle = 1 - cfg.slot
        fresh: list[Map] = []
        installed: dict[str, dict[bytes, bytes]] = {}
        try:
            for name, table in TABLES.items():
                if name == "cgroup":
                    entries = _cgroup_entries(compiled, self.cgroup_root)
                elif name == "inodes":
                    entries = _inode_entries(compiled)
                else:
                    entries = dict(compiled.maps.get(name, {}))
                inner = Map.create(table.map_type, f"st_{name}_{idle}", table.key_size,
                                   table.value_size, table.max_entries, table.flags)  # fmt: skip
                fresh.append(inner)
                installed[name] = entries
                for key, value in entries.items():
                    inner.update(key, value)
                slot_key = idle.to_bytes(4, "little")
                self._outer[name].update(slot_key, inner.fd.to_bytes(4, "little"))
        except BaseException:
            for m in fresh:
                m.close()
            raise
        self.generation += 1
        self.compiled[self.generation] = compiled
        # keep the previous generation for verdicts still in the ring buffer
        for gen in [g for g in self.compiled if g < self.generation - 1]:
            del self.compiled[gen]
        for gen in [g for g in self.earlier if g < self.generation - 1]:
            del self.earlier[gen]
        if self.pins is not None:  # before the switch: a kill after it still finds the rules
            saved = {g: SavedGeneration.of(c).to_json() for g, c in self.compiled.items()}
            saved.update({g: e.to_json() for g, e in self.earlier.items()})
            self.pins.save_generations(saved)
        cfg.generation[idle] = self.generation
        cfg.flags = abi.GUARD_LINEAGE if compiled.follows_descendants else 0
        cfg.slot = idle
        self._cfg.update(b"\0" * 4, bytes(cfg))  # the switch: one store
        old = self._inner[1 - idle]
        for name in TABLES:
            self._outer[name].delete((1 - idle).to_bytes(4, "little"))
        for m in old:
            m.close()
        self._inner[idle] = fresh
        self._installed[idle] = installed
        log.info("guard: policy %s live as generation %d", compiled.digest[:12], self.generation)
        return self.generation

    def live_table(self, name: str) -> Map:
        """The live slot's map of table ``name`` (what the hooks read now)."""
        slot = self._read_cfg().slot
        return self._inner[slot][list(TABLES).index(name)]

    def verify(self, compiled: CompiledPolicySet) -> list[str]:
        """Compare the kernel with what ``install(compiled)`` put there: the live slot and its
        generation, every table's entries, and every program still attached."""
        cfg = self._read_cfg()
        slot = cfg.slot
        if self.compiled.get(cfg.generation[slot]) is not compiled:
            return [f"guard: the live slot holds generation {cfg.generation[slot]}, not the "
                    f"one of policy {compiled.digest}"]  # fmt: skip
        errors: list[str] = []
        for name, inner in zip(TABLES, self._inner[slot], strict=True):
            held = self._outer[name].lookup(slot.to_bytes(4, "little"))
            if held is None or int.from_bytes(held[:4], "little") != inner.id:
                errors.append(f"guard: the live {TABLES[name].outer} slot is not the installed map")
                continue
            have, want = inner.items(), self._installed[slot][name]
            if TABLES[name].map_type == BPF_MAP_TYPE_ARRAY:  # every index exists, zero-filled
                have = {k: v for k, v in have.items() if k in want or any(v)}
            if have != want:
                errors.append(
                    f"guard: {TABLES[name].outer}: the kernel holds {len(have)} entries, the "
                    f"plan {len(want)}; {len(set(have.items()) ^ set(want.items()))} differ"
                )
        for prog in PROGRAMS:
            if prog in self._skipped:
                continue
            attached = cgroup_program_ids(self.cgroup, self._obj.attach_type(prog))
            if self._obj.program_id(prog) not in attached:
                errors.append(f"guard: {prog} is not attached to {self.cgroup}")
        for link in self._obj.links:
            if link.program in PROGRAMS:
                continue
            try:
                info_prog = _link_program_id(lib.bpf_link__fd(link.ptr))
            except KernelError:
                info_prog = -1
            if info_prog != self._obj.program_id(link.program):
                errors.append(f"guard: {link.program} is not attached")
        return errors

    def close(self) -> None:
        self._obj.close()
        for maps in self._inner.values():
            for m in maps:
                m.close()
        self._inner = {0: [], 1: []}
