"""The event stream: load the probes, tell the kernel what to send, yield decoded events.

This is the one interface through which the host's activity enters the agent; ``sealtrail
watch`` and the agent daemon both consume it. Filtering happens in the kernel (op mask, open
path prefixes); loss is reported as ``LossEvent`` items in the stream, never silently.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from types import TracebackType

from agent.errors import KernelError, UsageError
from agent.events import model
from agent.events.decode import KIND_OP, OP_KIND, Clock, DecodeError, Decoder
from agent.events.proctable import ProcTable
from agent.kernel import abi
from agent.kernel.loader import BpfObject, Map, object_path
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


def prefix_entries(prefix: str) -> list[bytes]:
    """LPM keys for one prefix: the directory itself exactly, and everything below it."""
    raw = os.fsencode(prefix).rstrip(b"/") or b"/"
    if raw == b"/":
        return [abi.prefix_key(b"/")]
    return [abi.prefix_key(raw + b"\0"), abi.prefix_key(raw + b"/")]


class EventStream:
    """Context manager: ``with EventStream(cfg) as s: for item in s.poll(100): ...``."""

    def __init__(self, config: StreamConfig | None = None) -> None:
        self.config = config or StreamConfig()
        self.proctable = ProcTable()
        self.decoder = Decoder(Clock(), self.proctable.lookup)
        self._obj: BpfObject | None = None
        self._rb: RingBuffer | None = None
        self._drops: Map | None = None
        self._dropped_seen = [0] * abi.OP_MAX
        self._loss_since_ns = time.time_ns()
        self._next_loss_check = 0.0
        self.decode_errors = 0
        self.started_ns = 0

    # ---- lifecycle ----
    def start(self) -> None:
        cfg = self.config
        obj = BpfObject(object_path("events"))
        try:
            wanted_programs = self._programs_for(cfg.kinds)
            obj.only_load(lambda name, _section: name in wanted_programs)
            obj.resize_map(abi.MAP_EVENTS, cfg.ringbuf_bytes)
            rodata = abi.Rodata(self_tgid=os.getpid() if cfg.exclude_self else 0)
            obj.set_rodata(abi.RODATA_SECTION, bytes(rodata))
            obj.load()
            self._configure(obj)
            for name in sorted(wanted_programs):
                try:
                    obj.attach(name)
                except KernelError as exc:
                    # a syscall this kernel does not have (fchmodat2 before 6.6, legacy open
                    # on arm64): the others still report; say so unless it is expected
                    optional = name.split("_", 2)[-1] in _OPTIONAL
                    log.log(logging.DEBUG if optional else logging.WARNING, "not attached: %s", exc)
            self._rb = RingBuffer(obj.map(abi.MAP_EVENTS))
            self._drops = obj.map(abi.MAP_DROPS)
        except BaseException:
            obj.close()
            raise
        self._obj = obj
        self.started_ns = time.time_ns()
        self._loss_since_ns = self.started_ns

    @staticmethod
    def _programs_for(kinds: frozenset[str]) -> set[str]:
        names: set[str] = set()
        for kind in kinds:
            if kind in _SCHED:
                names.add(_SCHED[kind])
            for sc in _SYSCALLS.get(kind, ()):
                names.update({f"st_enter_{sc}", f"st_exit_{sc}"})
        return names

    def _configure(self, obj: BpfObject) -> None:
        mask = 0
        for kind in self.config.kinds:
            mask |= 1 << KIND_OP[kind]
        prefixes = self.config.path_prefixes
        filter_ops = 0
        if prefixes:
            for kind in self.config.filter_kinds:
                filter_ops |= 1 << KIND_OP[kind]
        conf = abi.Config(op_mask=mask, filter_ops=filter_ops)
        obj.map(abi.MAP_CONFIG).update(b"\0" * 4, bytes(conf))
        trie = obj.map(abi.MAP_PATH_PREFIXES)
        for prefix in prefixes:
            for key in prefix_entries(prefix):
                trie.update(key, b"\1")

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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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

    def _decode_all(self, raws: list[bytes], force_loss_check: bool = False) -> list[StreamItem]:
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
            out.append(ev)
        now = time.monotonic()
        if force_loss_check or now >= self._next_loss_check:
            self._next_loss_check = now + LOSS_CHECK_INTERVAL_S
            loss = self.check_loss()
            if loss is not None:
                out.append(loss)
        return out

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
        if not any(delta):
            return None
        now = time.time_ns()
        loss = model.LossEvent(
            ts_ns=now,
            since_ns=self._loss_since_ns,
            count=sum(delta),
            by_kind={OP_KIND[op]: n for op, n in enumerate(delta) if n and op in OP_KIND},
        )
        self._dropped_seen = totals
        self._loss_since_ns = now
        return loss
