"""Typed ctypes bindings to the system ``libbpf.so.1`` (the only run-time dependency).

Written by hand because no maintained Python binding covers what sealtrail needs (BCC needs
kernel headers and a compiler on every host; pylibbpf has no ring buffer). Only the calls
sealtrail uses are bound; every pointer is opaque. libbpf runs in 1.0 mode: functions return
NULL or a negative errno and also set ``errno``.

libbpf's own log (including verifier output) is routed into the ``agent.kernel.libbpf`` logger.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)

from agent.errors import KernelError

log = logging.getLogger("agent.kernel.libbpf")


def _load() -> ctypes.CDLL:
    for name in ("libbpf.so.1", ctypes.util.find_library("bpf")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise KernelError("libbpf.so.1 not found: install the libbpf1 package")


lib = _load()
_libc = ctypes.CDLL(None, use_errno=True)

# opaque handles
ObjectPtr = c_void_p
ProgramPtr = c_void_p
MapPtr = c_void_p
LinkPtr = c_void_p
RingBufferPtr = c_void_p

SampleFn = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
# int (*)(enum libbpf_print_level, const char *fmt, va_list ap); on x86-64 and arm64 a va_list
# argument is passed as a pointer, which vsnprintf takes back as is.
PrintFn = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)


def _fn(name: str, restype: object, *argtypes: object) -> None:
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)


_fn("bpf_object__open_file", ObjectPtr, c_char_p, c_void_p)
_fn("bpf_object__load", c_int, ObjectPtr)
_fn("bpf_object__close", None, ObjectPtr)
_fn("bpf_object__next_program", ProgramPtr, ObjectPtr, ProgramPtr)
_fn("bpf_object__next_map", MapPtr, ObjectPtr, MapPtr)
_fn("bpf_object__find_program_by_name", ProgramPtr, ObjectPtr, c_char_p)
_fn("bpf_object__find_map_by_name", MapPtr, ObjectPtr, c_char_p)
_fn("bpf_program__name", c_char_p, ProgramPtr)
_fn("bpf_program__section_name", c_char_p, ProgramPtr)
_fn("bpf_program__set_autoload", c_int, ProgramPtr, c_bool)
_fn("bpf_program__autoload", c_bool, ProgramPtr)
_fn("bpf_program__fd", c_int, ProgramPtr)
_fn("bpf_program__attach", LinkPtr, ProgramPtr)
_fn("bpf_program__attach_cgroup", LinkPtr, ProgramPtr, c_int)
_fn("bpf_link__destroy", c_int, LinkPtr)
_fn("bpf_link__fd", c_int, LinkPtr)
_fn("bpf_link__open", LinkPtr, c_char_p)
_fn("bpf_link__pin", c_int, LinkPtr, c_char_p)
_fn("bpf_link__update_program", c_int, LinkPtr, ProgramPtr)
_fn("bpf_link__disconnect", None, LinkPtr)
_fn("bpf_map__set_pin_path", c_int, MapPtr, c_char_p)
_fn("bpf_obj_get", c_int, c_char_p)
_fn("bpf_map__name", c_char_p, MapPtr)
_fn("bpf_map__fd", c_int, MapPtr)
_fn("bpf_map__set_max_entries", c_int, MapPtr, c_uint32)
_fn("bpf_map__max_entries", c_uint32, MapPtr)
_fn("bpf_map__key_size", c_uint32, MapPtr)
_fn("bpf_map__value_size", c_uint32, MapPtr)
_fn("bpf_map__type", c_int, MapPtr)
_fn("bpf_map__initial_value", c_void_p, MapPtr, POINTER(c_size_t))
_fn("bpf_map__reuse_fd", c_int, MapPtr, c_int)


class MapCreateOpts(ctypes.Structure):
    """struct bpf_map_create_opts (libbpf >= 1.0)."""

    _fields_ = [
        ("sz", c_size_t),
        ("btf_fd", c_uint32),
        ("btf_key_type_id", c_uint32),
        ("btf_value_type_id", c_uint32),
        ("btf_vmlinux_value_type_id", c_uint32),
        ("inner_map_fd", c_uint32),
        ("map_flags", c_uint32),
        ("map_extra", c_uint64),
        ("numa_node", c_uint32),
        ("map_ifindex", c_uint32),
    ]


_fn("bpf_map_create", c_int, c_int, c_char_p, c_uint32, c_uint32, c_uint32, POINTER(MapCreateOpts))
_fn("bpf_map_update_elem", c_int, c_int, c_void_p, c_void_p, c_uint64)
_fn("bpf_map_lookup_elem", c_int, c_int, c_void_p, c_void_p)
_fn("bpf_map_delete_elem", c_int, c_int, c_void_p)
_fn("bpf_map_get_next_key", c_int, c_int, c_void_p, c_void_p)
_fn("bpf_obj_get_info_by_fd", c_int, c_int, c_void_p, POINTER(c_uint32))
_fn("bpf_prog_query", c_int, c_int, c_int, c_uint32, POINTER(c_uint32), POINTER(c_uint32),
    POINTER(c_uint32))  # fmt: skip
_fn("bpf_program__expected_attach_type", c_int, ProgramPtr)
_fn("ring_buffer__new", RingBufferPtr, c_int, SampleFn, c_void_p, c_void_p)
_fn("ring_buffer__poll", c_int, RingBufferPtr, c_int)
_fn("ring_buffer__consume", c_int, RingBufferPtr)
_fn("ring_buffer__free", None, RingBufferPtr)
_fn("libbpf_set_print", c_void_p, PrintFn)
_fn("libbpf_num_possible_cpus", c_int)
_fn("libbpf_major_version", c_uint32)
_fn("libbpf_minor_version", c_uint32)

_libc.vsnprintf.restype = c_int
_libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]

_VA_LIST_SIZE = 32  # x86-64: 24 bytes, arm64: 32 bytes
# libbpf_print_level: WARN=0, INFO=1, DEBUG=2
_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
_captured: list[str] | None = None


@PrintFn  # type: ignore[untyped-decorator]
def _print(level: int, fmt: bytes, ap: int) -> int:
    # vsnprintf consumes the va_list; keep a byte copy of it (what va_copy does on x86-64 and
    # arm64, where va_list is a small struct) to format again when the text is longer (the
    # verifier log arrives as one message of up to megabytes).
    saved = ctypes.string_at(ap, _VA_LIST_SIZE)
    buf = ctypes.create_string_buffer(8192)
    n = _libc.vsnprintf(buf, len(buf), fmt, ap)
    if n >= len(buf):
        ctypes.memmove(ap, saved, _VA_LIST_SIZE)
        buf = ctypes.create_string_buffer(n + 1)
        n = _libc.vsnprintf(buf, len(buf), fmt, ap)
    text = buf.value.decode("utf-8", "replace").rstrip("\n")
    if _captured is not None:
        _captured.append(text)
    pylevel = _LEVELS.get(level, logging.DEBUG)
    # libbpf reports at WARN what is often expected (e.g. a failed probe load in doctor); the
    # caller decides what is an error, so keep libbpf itself at DEBUG unless asked.
    log.log(min(pylevel, logging.DEBUG) if _captured is not None else pylevel, "%s", text)
    return int(n)


lib.libbpf_set_print(_print)


class LogCapture:
    """Collect libbpf's log lines while active (to attach verifier output to an error)."""

    def __enter__(self) -> list[str]:
        global _captured
        self._prev = _captured
        _captured = []
        return _captured

    def __exit__(self, *exc: object) -> None:
        global _captured
        _captured = self._prev


def errno_now() -> int:
    return ctypes.get_errno()


def check(ret: int, what: str) -> int:
    """Raise KernelError for a negative libbpf return value."""
    if ret < 0:
        err = -ret
        raise KernelError(f"{what}: {os.strerror(err)} (errno {err})", err)
    return ret


def version() -> str:
    return f"{lib.libbpf_major_version()}.{lib.libbpf_minor_version()}"


def possible_cpus() -> int:
    return int(check(lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus"))
