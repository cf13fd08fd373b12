"""The event stream: load the probes, tell the kernel what to send, yield decoded events.

This is the one interface through which the host's activity enters the agent; ``sealtrail
watch`` and the agent daemon both consume it. Filtering happens in the kernel (op mask, open
path prefixes); loss is reported as ``LossEvent`` items in the stream, never silently.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field

from agent.closing import Closing
from agent.errors import KernelError, UsageError
from agent.events import model
from agent.events.decode import KIND_OP, OP_KIND, Clock, DecodeError, Decoder
from agent.events.proctable import ProcTable
from agent.kernel import abi
from agent.kernel.loader import BpfObject, Map, object_path
from agent.kernel.pins import EVENTS, PinDir, stale
from agent.kernel.ringbuf import RingBuffer

log = logging.getLogger(__name__)

DEFAULT_RINGBUF_BYTES = 8 << 20
LOSS_CHECK_INTERVAL_S = 0.25

# Which programs feed which event kinds (by the op their section handles).
_SYSCALLS: dict[str, tuple[str, ...]] = {
    "open": ("open", "openat", "openat2", "creat", "open_by_handle_at"),
    "unlink": ("unlink", "unlinkat"),
    "rename": ("rename", "renameat", "renameat2"),
    "chmod": ("chmod", "fchmod", "fchmodat", "fchmodat2"),
    "chown": ("chown", "lchown", "fchown", "fchownat"),
    "truncate": ("truncate", "ftruncate"),
    "connect": ("connect",),
    "bind": ("bind",),
    "listen": ("listen",),
    "accept": ("accept", "accept4"),
}
# Syscalls newer than the oldest kernel we support (Debian 12's 6.1): missing is expected there.
_OPTIONAL = {"fchmodat2"}
_SCHED = {"exec": "st_exec", "fork": "st_fork", "exit": "st_exit"}

StreamItem = model.Event | model.LossEvent


@dataclass(frozen=True)
class StreamConfig:
    kinds: frozenset[str] = frozenset(model.KINDS)
    # Report the file ops in filter_kinds only under these prefixes ("/etc" = /etc itself and
    # below). Empty = no filter.
    path_prefixes: tuple[str, ...] = ()
    filter_kinds: frozenset[str] = frozenset({"open"})
    ringbuf_bytes: int = DEFAULT_RINGBUF_BYTES
    exclude_self: bool = True
    # Load every program (attach only what kinds need) so reconfigure() can add kinds later.
    load_all: bool = False
    # Save each open's flags while it runs (the open family's sys_enter programs), for
    # pending_open_flags: what the fanotify mechanism judges opens by. Off, an open costs its
    # sys_exit program only.
    open_flags: bool = False
    # Pin the ring buffer and drop counters there (agent.kernel.pins): what the pinned guard
    # judges while no agent runs waits in them for the next one. None: nothing pinned.
    pins: PinDir | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        unknown = self.kinds - set(model.KINDS)
        if unknown:
            raise UsageError(
                f"unknown event kind(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(model.KINDS)}"
            )
        size = self.ringbuf_bytes
        if size < 4096 or size & (size - 1):
            raise UsageError(f"ring buffer size {size} must be a power of two >= 4096")
        for p in self.path_prefixes:
            if not p.startswith("/"):
                raise UsageError(f"--path-prefix {p!r} must be an absolute path")
            if len(p.encode()) > abi.FILTER_PREFIX_MAX - 1:
                raise UsageError(
                    f"--path-prefix {p!r} longer than {abi.FILTER_PREFIX_MAX - 1} bytes"
                )


def pattern_key(pattern: str) -> bytes:
    """LPM key for a policy path pattern: exact "/a/b", "/dir/" (below), "prefix*"."""
    raw = os.fsencode(pattern)
    if raw.endswith(b"*"):
        return abi.prefix_key(raw[:-1])
    if raw.endswith(b"/"):
        return abi.prefix_key(raw)
    return abi.prefix_key(raw + b"\0")


@functools.cache
def events_object() -> str:
    """``events``, or ``events-compat`` where the kernel has no ``bpf_rdonly_cast`` kfunc
    (before 6.2): the same probes, but their path-filter walk reads each pointer through a
    helper call, about six times slower on a miss (probes/common.h). Told by the name in the
    kernel's BTF string table (a kfunc is a BTF function of that name); unreadable BTF means
    no CO-RE at all, and the compat object's load then says why."""
    try:
        with open("/sys/kernel/btf/vmlinux", "rb") as f:
            btf = f.read()
    except OSError:
        return "events-compat"
    return "events" if b"\0bpf_rdonly_cast\0" in btf else "events-compat"


def top_name_key(key: bytes) -> bytes:
    """The st_top_names key for an st_path_prefixes key: what the first component of a path
    it matches must be. A key naming a whole first component ("/etc/shadow", "/etc\\0",
    "/boot/") needs exactly that name ("etc\\0"); one ending inside it ("/us" of "/us*", "/")
    needs a name starting so ("us", "")."""
    length = int.from_bytes(key[:4], "little") // 8
    data = key[4 : 4 + length]
    if not data.startswith(b"/"):
        raise ValueError(f"path prefix key {data!r} is not absolute")
    rest = data[1:]
    for i, byte in enumerate(rest):
        if byte in (0x2F, 0):  # '/' or the NUL of an exact key: the first component ends
            return abi.prefix_key(rest[:i] + b"\0")
    return abi.prefix_key(rest)


def _matches(keys: set[bytes], path: str) -> bool:
    """Would the LPM trie of ``keys`` match ``path`` (with its NUL, as the probe looks it up)?"""
    raw = os.fsencode(path) + b"\0"
    for key in keys:
        length = int.from_bytes(key[:4], "little") // 8
        if raw[:length] == key[4 : 4 + length]:
            return True
    return False


def prefix_entries(prefix: str) -> list[bytes]:
    """LPM keys for one prefix: the directory itself exactly, and everything below it."""
    raw = os.fsencode(prefix).rstrip(b"/") or b"/"
    if raw == b"/":
        return [abi.prefix_key(b"/")]
    return [abi.prefix_key(raw + b"\0"), abi.prefix_key(raw + b"/")]


class EventStream(Closing):
    """Context manager: ``with EventStream(cfg) as s: for item in s.poll(100): ...``."""

    def __init__(self, config: StreamConfig | None = None) -> None:
        self.config = config or StreamConfig()
        self.proctable = ProcTable()
        self.decoder = Decoder(Clock(), self.proctable.lookup)
        self._obj: BpfObject | None = None
        self._rb: RingBuffer | None = None
        self._drops: Map | None = None
        self._dropped_seen = [0] * abi.OP_MAX
        self._unstored_seen = 0
        self._loss_since_ns = time.time_ns()
        self._next_loss_check = 0.0
        self.decode_errors = 0
        self.started_ns = 0
        self._attached: set[str] = set()
        self._patterns: set[bytes] = set()
        self._top_keys: set[bytes] = set()
        self._filter_kinds: frozenset[str] = frozenset()

    # ---- lifecycle ----
    def start(self) -> None:
        try:
            self._start()
        except KernelError as exc:
            pins = self.config.pins
            if pins is None or not stale(exc):
                raise
            # another ring buffer size than the pinned one (--ringbuf-size changed): what the
            # old one holds is lost, and said so
            first = str(exc).splitlines()[0]
            log.warning("the ring buffer pinned in %s does not fit this agent (%s); replacing "
                        "it, with the records it held", pins.path, first)  # fmt: skip
            pins.remove(EVENTS)
            self._start()

    def _start(self) -> None:
        cfg = self.config
        obj = BpfObject(object_path(events_object()))
        try:
            if cfg.pins is not None:
                obj.pin_maps(cfg.pins.maps_dir(EVENTS), only={abi.MAP_EVENTS, abi.MAP_DROPS})
            wanted_programs = self._programs_for(cfg.kinds, cfg.open_flags)
            if not cfg.load_all:
                obj.only_load(lambda name, _section: name in wanted_programs)
            obj.resize_map(abi.MAP_EVENTS, cfg.ringbuf_bytes)
            rodata = abi.Rodata(self_tgid=os.getpid() if cfg.exclude_self else 0)
            obj.set_rodata(abi.RODATA_SECTION, bytes(rodata))
            obj.load()
            self._obj = obj
            self._configure(obj)
            self._attach(wanted_programs)
            self._rb = RingBuffer(obj.map(abi.MAP_EVENTS))
            self._drops = obj.map(abi.MAP_DROPS)
        except BaseException:
            obj.close()
            self._obj = None
            raise
        self.started_ns = time.time_ns()
        self._loss_since_ns = self.started_ns

    @staticmethod
    def _programs_for(kinds: frozenset[str], open_flags: bool = True) -> set[str]:
        names: set[str] = set()
        for kind in kinds:
            if kind in _SCHED:
                names.add(_SCHED[kind])
            for sc in _SYSCALLS.get(kind, ()):
                names.add(f"st_exit_{sc}")
                # file syscalls: exit only, but an open's flags are saved at its entry
                if kind not in model.FILE_KINDS or (kind == "open" and open_flags):
                    names.add(f"st_enter_{sc}")
        return names

    def _attach(self, programs: set[str]) -> None:
        assert self._obj is not None
        for name in sorted(programs - self._attached):
            try:
                self._obj.attach(name)
                self._attached.add(name)
            except KernelError as exc:
                # a syscall this kernel does not have (fchmodat2 before 6.6, legacy open
                # on arm64): the others still report; say so unless it is expected
                optional = name.split("_", 2)[-1] in _OPTIONAL
                log.log(logging.DEBUG if optional else logging.WARNING, "not attached: %s", exc)

    def _configure(self, obj: BpfObject) -> None:
        keys: set[bytes] = set()
        for prefix in self.config.path_prefixes:
            keys.update(prefix_entries(prefix))
        self._write_config(obj, self.config.kinds, self.config.filter_kinds, keys)

    def _write_config(
        self, obj: BpfObject, kinds: frozenset[str], filter_kinds: frozenset[str],
        keys: set[bytes],
    ) -> None:  # fmt: skip
        mask = 0
        for kind in kinds:
            mask |= 1 << KIND_OP[kind]
        filter_ops = 0
        if keys:
            for kind in filter_kinds & kinds:
                filter_ops |= 1 << KIND_OP[kind]
        trie, tops = obj.map(abi.MAP_PATH_PREFIXES), obj.map(abi.MAP_TOP_NAMES)
        # add before removing, first components before prefixes: at no moment does the
        # probes' first-component test drop what their prefix test would keep
        top_keys = {top_name_key(key) for key in keys}
        for key in top_keys - self._top_keys:
            tops.update(key, b"\1")
        for key in keys - self._patterns:
            trie.update(key, b"\1")
        conf = abi.Config(op_mask=mask, filter_ops=filter_ops)
        obj.map(abi.MAP_CONFIG).update(b"\0" * 4, bytes(conf))
        for key in self._patterns - keys:
            trie.delete(key)
        for key in self._top_keys - top_keys:
            tops.delete(key)
        self._patterns, self._top_keys = keys, top_keys
        self._filter_kinds = frozenset(kind for kind in kinds if filter_ops & (1 << KIND_OP[kind]))

    def reconfigure(
        self, extra_kinds: frozenset[str], path_patterns: tuple[str, ...], open_flags: bool = False
    ) -> None:
        """Stream ``extra_kinds`` too, file kinds among them only under ``path_patterns``
        (policy syntax: exact path, "/dir/" for everything below, "prefix*"); save opens'
        flags too if ``open_flags`` (or the config) asks (``StreamConfig.open_flags``; once
        on, the programs stay attached)."""
        if self._obj is None:
            raise KernelError("event stream is not started")
        kinds = self.config.kinds | extra_kinds
        if not self.config.load_all and not self._programs_for(kinds) <= self._programs_for(
            self.config.kinds
        ):
            raise KernelError("reconfigure needs StreamConfig(load_all=True)")
        keys = {pattern_key(p) for p in path_patterns}
        file_kinds = extra_kinds & model.FILE_KINDS
        self._attach(self._programs_for(kinds, open_flags or self.config.open_flags))
        self._write_config(self._obj, kinds, file_kinds, keys)

    def shared_maps(self) -> dict[str, int]:
        """Maps another BPF object should share (its records go to the same ring buffer)."""
        if self._obj is None:
            raise KernelError("event stream is not started")
        return {name: self._obj.map(name).fd for name in (abi.MAP_EVENTS, abi.MAP_DROPS)}

    def boot_ns(self, wall_ns: int) -> int:
        """The CLOCK_BOOTTIME stamp of an event whose ``ts_ns`` is ``wall_ns`` (the decoder
        adds one offset, taken at start)."""
        return wall_ns - self.decoder.clock.offset_ns

    def pending_open_flags(self, tid: int) -> int | None:
        """The flags of the open(2) thread ``tid`` is inside, from the probes' st_pending:
        saved at that open syscall's entry, gone at its exit, so an open the kernel makes
        outside an open syscall (io_uring, a core dump) has none. None if unknown."""
        if self._obj is None:
            return None
        raw = self._obj.map(abi.MAP_PENDING).lookup(tid.to_bytes(4, "little"))
        if raw is None:
            return None
        p = abi.Pending.from_buffer_copy(raw)
        if p.op != abi.Op.OPEN:
            return None
        v = p.variant
        if v == abi.Variant.OPEN:
            return int(p.args[1])
        if v in (abi.Variant.OPENAT, abi.Variant.OPEN_BY_HANDLE):
            return int(p.args[2])
        if v == abi.Variant.CREAT:
            return os.O_CREAT | os.O_WRONLY | os.O_TRUNC
        return None  # openat2: its flags are in user memory another thread may rewrite

    def close(self) -> None:
        if self._rb:
            self._rb.close()
            self._rb = None
        if self._obj:
            self._obj.close()
            self._obj = None

    def __enter__(self) -> EventStream:
        self.start()
        return self

    # ---- consumption ----
    def poll(self, timeout_ms: int) -> list[StreamItem]:
        """Wait up to timeout_ms; return decoded events, plus a LossEvent if the kernel dropped."""
        if self._rb is None:
            raise KernelError("event stream is not started")
        return self._decode_all(self._rb.poll(timeout_ms))

    def drain(self) -> list[StreamItem]:
        """Everything available now, and any loss counted so far (no rate limit)."""
        if self._rb is None:
            raise KernelError("event stream is not started")
        items = self._decode_all(self._rb.drain(), force_loss_check=True)
        return items

    @property
    def batches(self) -> bool:
        """True if ``poll_batch`` works: records come as one native batch (``split_batch``)."""
        return self._rb is not None and self._rb.batches

    def poll_batch(self, timeout_ms: int) -> bytes:
        """Wait up to timeout_ms; every record as one batch, undecoded (``decode_records``
        and ``due_loss`` do the rest)."""
        if self._rb is None:
            raise KernelError("event stream is not started")
        return self._rb.poll_batch(timeout_ms)

    def decode_records(self, raws: list[bytes]) -> list[StreamItem]:
        """Decode raw records as ``poll`` does, without the loss check."""
        return self._decode_all(raws, loss_check=False)

    def due_loss(self, *, force: bool = False) -> model.LossEvent | None:
        """The loss since the last report, checked at most every LOSS_CHECK_INTERVAL_S."""
        now = time.monotonic()
        if force or now >= self._next_loss_check:
            self._next_loss_check = now + LOSS_CHECK_INTERVAL_S
            return self.check_loss()
        return None

    def _decode_all(
        self, raws: list[bytes], force_loss_check: bool = False, loss_check: bool = True
    ) -> list[StreamItem]:
        out: list[StreamItem] = []
        decode = self.decoder.decode
        observe = self.proctable.observe
        for raw in raws:
            try:
                ev = decode(raw)
            except DecodeError as exc:
                self.decode_errors += 1
                log.error("undecodable record (%d bytes): %s", len(raw), exc)
                continue
            observe(ev)
            if self._filter_kinds and ev.kind in self._filter_kinds and not self._wanted(ev):
                continue
            out.append(ev)
        if loss_check:
            loss = self.due_loss(force=force_loss_check)
            if loss is not None:
                out.append(loss)
        return out

    def _wanted(self, ev: model.Event) -> bool:
        """The path filter for what the kernel could not judge (relative paths, joined here)."""
        if not isinstance(ev, model.FileEvent):
            return True
        paths = [(ev.path, ev.path_source)]
        if isinstance(ev, model.RenameEvent):
            paths.append((ev.new_path, ev.new_path_source))
        for path, source in paths:
            if source != model.PATH_ARG_CWD:
                return True  # absolute: the kernel already kept it
            if _matches(self._patterns, path):
                return True
        return False

    def dropped_total(self) -> list[int]:
        """Kernel drop counters per op, summed over CPUs, since load."""
        assert self._drops is not None
        totals = [0] * abi.OP_MAX
        for op in range(abi.OP_MAX):
            for cpu_val in self._drops.lookup_percpu(op.to_bytes(4, "little")):
                totals[op] += int.from_bytes(cpu_val, "little")
        return totals

    def check_loss(self) -> model.LossEvent | None:
        totals = self.dropped_total()
        delta = [t - s for t, s in zip(totals, self._dropped_seen, strict=True)]
        unstored = self._rb.failed - self._unstored_seen if self._rb is not None else 0
        if not any(delta) and not unstored:
            return None
        now = time.time_ns()
        # verdicts too: the kernel decided, and its record of it is what was lost
        kind = {**OP_KIND, abi.Op.VERDICT: "verdict"}
        by_kind = {kind.get(op, str(op)): n for op, n in enumerate(delta) if n}
        if unstored:  # taken from the ring but not stored (the agent ran out of memory)
            by_kind["unstored"] = unstored
            self._unstored_seen += unstored
        loss = model.LossEvent(
            ts_ns=now, since_ns=self._loss_since_ns, count=sum(delta) + unstored, by_kind=by_kind
        )
        self._dropped_seen = totals
        self._loss_since_ns = now
        return loss
