"""BPF object lifecycle over libbpf: open → configure → load → attach → use → close.

Every step's failure is a KernelError that carries libbpf's own log (verifier output included).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.closing import Closing
from agent.errors import KernelError
from agent.kernel import libbpf
from agent.kernel.libbpf import lib

log = logging.getLogger(__name__)

OBJ_DIR = Path(__file__).with_name("obj")

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2


def object_path(name: str) -> Path:
    """Path of a compiled probe object shipped in the package (``make probes`` builds them)."""
    override = os.environ.get("SEALTRAIL_BPF_DIR")
    path = (Path(override) if override else OBJ_DIR) / f"{name}.bpf.o"
    if not path.is_file():
        raise KernelError(f"{path}: compiled probe missing; run `make probes` (or `make run`)")
    return path


BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_RINGBUF = 27
BPF_F_NO_PREALLOC = 1


class Map:
    """A BPF map by fd: fixed-size byte keys and values (pack them with agent.kernel.abi)."""

    def __init__(
        self, fd: int, name: str, key_size: int, value_size: int, max_entries: int, map_type: int
    ) -> None:
        self.fd = fd
        self.name = name
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.map_type = map_type
        self._owned = False

    @classmethod
    def of_object(cls, ptr: int, name: str) -> Map:
        return cls(
            libbpf.check(lib.bpf_map__fd(ptr), f"map {name}: fd"),
            name,
            int(lib.bpf_map__key_size(ptr)),
            int(lib.bpf_map__value_size(ptr)),
            int(lib.bpf_map__max_entries(ptr)),
            int(lib.bpf_map__type(ptr)),
        )

    @classmethod
    def create(
        cls,
        map_type: int,
        name: str,
        key_size: int,
        value_size: int,
        max_entries: int,
        flags: int = 0,
    ) -> Map:
        """A new map owned by this object (closed with ``close``), e.g. an inner map."""
        opts = libbpf.MapCreateOpts(sz=ctypes.sizeof(libbpf.MapCreateOpts), map_flags=flags)
        fd = lib.bpf_map_create(
            map_type, name.encode()[:15], key_size, value_size, max_entries, ctypes.byref(opts)
        )
        libbpf.check(fd, f"create map {name}")
        m = cls(fd, name, key_size, value_size, max_entries, map_type)
        m._owned = True
        return m

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _key(self, key: bytes) -> ctypes.Array[ctypes.c_char]:
        if len(key) != self.key_size:
            raise ValueError(f"map {self.name}: key is {len(key)} bytes, want {self.key_size}")
        return ctypes.create_string_buffer(key, self.key_size)

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if len(value) != self.value_size:
            raise ValueError(
                f"map {self.name}: value is {len(value)} bytes, want {self.value_size}"
            )
        v = ctypes.create_string_buffer(value, self.value_size)
        libbpf.check(
            lib.bpf_map_update_elem(self.fd, self._key(key), v, flags), f"map {self.name}: update"
        )

    def lookup(self, key: bytes, value_size: int | None = None) -> bytes | None:
        """Value bytes, or None if absent. Per-CPU maps need value_size = n_cpus * roundup8."""
        size = value_size or self.value_size
        v = ctypes.create_string_buffer(size)
        ret = lib.bpf_map_lookup_elem(self.fd, self._key(key), v)
        if ret == -2:  # ENOENT
            return None
        libbpf.check(ret, f"map {self.name}: lookup")
        return v.raw

    def lookup_percpu(self, key: bytes) -> list[bytes]:
        ncpu = libbpf.possible_cpus()
        stride = (self.value_size + 7) & ~7
        raw = self.lookup(key, stride * ncpu)
        if raw is None:
            return []
        return [raw[i * stride : i * stride + self.value_size] for i in range(ncpu)]

    def delete(self, key: bytes) -> bool:
        ret = lib.bpf_map_delete_elem(self.fd, self._key(key))
        if ret == -2:
            return False
        libbpf.check(ret, f"map {self.name}: delete")
        return True

    @property
    def id(self) -> int:
        """The kernel's id of this map (what an array-of-maps lookup returns)."""
        return object_id(self.fd)

    def items(self) -> dict[bytes, bytes]:
        """Every entry as the kernel holds it now."""
        out = {}
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                out[key] = value
        return out

    def keys(self) -> Iterator[bytes]:
        cur: ctypes.Array[ctypes.c_char] | None = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while lib.bpf_map_get_next_key(self.fd, cur, nxt) == 0:
            yield nxt.raw
            cur = ctypes.create_string_buffer(nxt.raw, self.key_size)


def object_id(fd: int) -> int:
    """The kernel id of a BPF map or program fd (``id`` follows ``type`` in both info structs)."""
    info = ctypes.create_string_buffer(256)
    size = ctypes.c_uint32(len(info))
    libbpf.check(lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)), "bpf_obj_get_info")
    return int.from_bytes(info.raw[4:8], "little")


def cgroup_program_ids(cgroup_path: str | Path, attach_type: int) -> set[int]:
    """Ids of the programs attached to a cgroup for one attach type (BPF_PROG_QUERY)."""
    fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = (ctypes.c_uint32 * 64)()
        count = ctypes.c_uint32(len(ids))
        flags = ctypes.c_uint32(0)
        ret = lib.bpf_prog_query(fd, attach_type, 0, ctypes.byref(flags), ids, ctypes.byref(count))
        libbpf.check(ret, f"bpf_prog_query {cgroup_path}")
        return set(ids[: count.value])
    finally:
        os.close(fd)


@dataclass
class Link:
    program: str
    ptr: int
    #: pinned on the BPF filesystem: closing it leaves the program attached (agent.kernel.pins)
    pinned: bool = False

    def destroy(self) -> None:
        if self.ptr:
            if self.pinned:
                lib.bpf_link__disconnect(self.ptr)  # close our fd only; the pin holds it
            lib.bpf_link__destroy(self.ptr)
            self.ptr = 0


class BpfObject(Closing):
    """One compiled ``.bpf.o``: configure before ``load()``, attach after."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        with libbpf.LogCapture() as logs:
            ptr = lib.bpf_object__open_file(os.fsencode(self.path), None)
        if not ptr:
            err = libbpf.errno_now()
            raise KernelError(
                f"{self.path}: open failed: {os.strerror(err)}\n" + "\n".join(logs), err
            )
        self._ptr: int | None = ptr
        self.links: list[Link] = []
        self.loaded = False

    # ---- introspection ----
    def _obj(self) -> int:
        if not self._ptr:
            raise KernelError(f"{self.path}: object is closed")
        return self._ptr

    def programs(self) -> dict[str, str]:
        """Program name -> section name (e.g. ``tp/syscalls/sys_enter_openat``)."""
        out: dict[str, str] = {}
        prog = lib.bpf_object__next_program(self._obj(), None)
        while prog:
            out[lib.bpf_program__name(prog).decode()] = lib.bpf_program__section_name(prog).decode()
            prog = lib.bpf_object__next_program(self._obj(), prog)
        return out

    def _prog(self, name: str) -> int:
        prog = lib.bpf_object__find_program_by_name(self._obj(), name.encode())
        if not prog:
            raise KernelError(f"{self.path}: no program named {name}")
        return int(prog)

    def _map_ptr(self, name: str) -> int:
        ptr = lib.bpf_object__find_map_by_name(self._obj(), name.encode())
        if not ptr:
            raise KernelError(f"{self.path}: no map named {name}")
        return int(ptr)

    # ---- configure (before load) ----
    def set_autoload(self, program: str, enabled: bool) -> None:
        libbpf.check(
            lib.bpf_program__set_autoload(self._prog(program), enabled), f"{program}: set_autoload"
        )

    def only_load(self, keep: Callable[[str, str], bool]) -> None:
        """Load only programs for which keep(name, section) is true."""
        for name, section in self.programs().items():
            self.set_autoload(name, keep(name, section))

    def resize_map(self, name: str, max_entries: int) -> None:
        libbpf.check(
            lib.bpf_map__set_max_entries(self._map_ptr(name), max_entries),
            f"map {name}: set_max_entries({max_entries})",
        )

    def set_rodata(self, section: str, data: bytes) -> None:
        """Overwrite the start of a read-only data section (e.g. ``.rodata.st``) before load."""
        if self.loaded:
            raise KernelError(f"{section}: rodata can only be set before load")
        size = ctypes.c_size_t()
        addr = lib.bpf_map__initial_value(self._map_ptr(section), ctypes.byref(size))
        if not addr or size.value < len(data):
            raise KernelError(f"{section}: is {size.value} bytes, cannot hold {len(data)}")
        ctypes.memmove(addr, data, len(data))

    # ---- load / attach ----
    def load(self) -> None:
        with libbpf.LogCapture() as logs:
            ret = lib.bpf_object__load(self._obj())
        if ret < 0:
            err = -ret
            tail = "\n".join(logs[-40:])
            raise KernelError(
                f"{self.path.name}: load failed: {os.strerror(err)} (errno {err})\n{tail}", err
            )
        self.loaded = True

    def program_id(self, program: str) -> int:
        return object_id(lib.bpf_program__fd(self._prog(program)))

    def attach_type(self, program: str) -> int:
        return int(lib.bpf_program__expected_attach_type(self._prog(program)))

    def attach(self, program: str) -> Link:
        with libbpf.LogCapture() as logs:
            ptr = lib.bpf_program__attach(self._prog(program))
        if not ptr:
            err = libbpf.errno_now()
            raise KernelError(
                f"{program}: attach failed: {os.strerror(err)}\n" + "\n".join(logs), err
            )
        link = Link(program, ptr)
        self.links.append(link)
        return link

    def attach_cgroup(self, program: str, cgroup_path: str | Path) -> Link:
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with libbpf.LogCapture() as logs:
                ptr = lib.bpf_program__attach_cgroup(self._prog(program), fd)
            if not ptr:
                err = libbpf.errno_now()
                raise KernelError(
                    f"{program}: attach to cgroup {cgroup_path} failed: "
                    f"{os.strerror(err)}\n" + "\n".join(logs),
                    err,
                )
        finally:
            os.close(fd)
        link = Link(program, ptr)
        self.links.append(link)
        return link

    def attach_pinned(self, program: str, pin: Path, attach: Callable[[], Link]) -> Link:
        """``attach()`` the program, pinned at ``pin``; if an earlier agent pinned a link
        there, take it over without a moment unattached: a cgroup link is switched to this
        program in place (BPF_LINK_UPDATE, atomic); a link the kernel cannot update (tracing,
        LSM) is replaced by attaching first and then dropping the old pin, so for an instant
        both programs run, never neither."""
        raw = os.fsencode(pin)
        if pin.exists():
            old = lib.bpf_link__open(raw)
            if old and lib.bpf_link__update_program(old, self._prog(program)) == 0:
                link = Link(program, old, pinned=True)
                self.links.append(link)
                return link
            fresh = attach()
            tmp_path = pin.with_name(pin.name + "-new")  # bpffs: no "." in names
            tmp_path.unlink(missing_ok=True)  # an earlier agent died right here: its new link goes
            tmp = os.fsencode(tmp_path)
            if old:
                lib.bpf_link__disconnect(old)
                lib.bpf_link__destroy(old)  # our fd; the old pin still holds the link
            libbpf.check(lib.bpf_link__pin(fresh.ptr, tmp), f"{program}: pin")
            os.rename(tmp, raw)  # the old link's last reference goes: it detaches now
        else:
            fresh = attach()
            libbpf.check(lib.bpf_link__pin(fresh.ptr, raw), f"{program}: pin at {pin}")
        fresh.pinned = True
        return fresh

    def pin_maps(
        self, directory: Path, only: set[str] | None = None, skip: frozenset[str] = frozenset()
    ) -> None:
        """Before load: pin this object's maps in ``directory`` (all but libbpf's internal
        .rodata/.bss ones, ``only`` those if given, never ``skip``); a map already pinned
        there is reused as it is (same type, sizes and flags), else load fails."""
        ptr = lib.bpf_object__next_map(self._obj(), None)
        while ptr:
            name = lib.bpf_map__name(ptr).decode()
            if "." not in name and name not in skip and (only is None or name in only):
                path = os.fsencode(directory / name)
                libbpf.check(lib.bpf_map__set_pin_path(ptr, path), f"map {name}: pin path")
            ptr = lib.bpf_object__next_map(self._obj(), ptr)

    def map(self, name: str) -> Map:
        return Map.of_object(self._map_ptr(name), name)

    def reuse_map(self, name: str, fd: int) -> None:
        """Before load: use an existing map (e.g. another object's ring buffer) for ``name``."""
        libbpf.check(lib.bpf_map__reuse_fd(self._map_ptr(name), fd), f"map {name}: reuse fd")

    def close(self) -> None:
        for link in self.links:
            link.destroy()
        self.links.clear()
        if self._ptr:
            lib.bpf_object__close(self._ptr)
            self._ptr = None
