"""The ctypes mirror of ``native/stnative.h``: every struct and constant C shares with Python.

Keep in sync with ``native/stnative.h``. The library describes its own build in a table
(``st_abi()``, ``native/stabi.c``: struct sizes, field offsets and sizes, constants);
``mismatches`` compares that table with this mirror and with the Python definitions of the
record-domain constants the C hot loops also apply (``python_values``), so a stale or
diverging build is refused on load (``agent.native``) and a drift fails
``tests/unit/native/test_native_abi.py`` rather than a verification.
"""

from __future__ import annotations

import ctypes
from collections import defaultdict
from typing import Any

MAX_FRONTIER = 64
_Hash = ctypes.c_uint8 * 32
_U32P = ctypes.POINTER(ctypes.c_uint32)

#: Why a verify run stopped (``StVerify.stop``, ``enum st_stop``).
STOP_END, STOP_LIMIT, STOP_TORN, STOP_SYNTAX, STOP_RECORD = range(5)
#: Why an encode run stopped (``StEncode.stop``, ``enum st_enc``).
ENC_END, ENC_LIMIT, ENC_FULL, ENC_SLOW = range(4)


class StTree(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint64),
        ("frontier_len", ctypes.c_uint64),
        ("frontier", _Hash * MAX_FRONTIER),
    ]


class StChain(ctypes.Structure):
    _fields_ = [("next_seq", ctypes.c_uint64), ("prev", _Hash), ("tree", StTree)]


class StVerify(ctypes.Structure):
    _fields_ = [
        ("chain", ctypes.POINTER(StChain)),
        ("taken", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("last_offset", ctypes.c_uint64),
        ("stop", ctypes.c_uint64),
        ("host", ctypes.c_char_p),
        ("host_len", ctypes.c_uint64),
        ("boot", ctypes.c_char_p),
        ("boot_len", ctypes.c_uint64),
    ]


class StBatch(ctypes.Structure):
    """Records appended by the sample sink ``st_batch_sample`` as ``[u32 size][bytes]``."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("len", ctypes.c_uint64),
        ("cap", ctypes.c_uint64),
        ("count", ctypes.c_uint64),
        ("failed", ctypes.c_uint64),
    ]


class StEncode(ctypes.Structure):
    _fields_ = [
        ("host", ctypes.c_char_p),
        ("host_len", ctypes.c_uint64),
        ("boot", ctypes.c_char_p),
        ("boot_len", ctypes.c_uint64),
        ("clock_offset", ctypes.c_int64),
        ("fixed_ts", ctypes.c_uint64),
        ("ops_mask", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("run_end", ctypes.c_uint64),
        ("n_exe", ctypes.c_uint64),
        ("exe_pid", _U32P),
        ("exe_off", _U32P),
        ("exe_len", _U32P),
        ("exe_json", ctypes.c_char_p),
        ("out", ctypes.c_void_p),
        ("out_cap", ctypes.c_uint64),
        ("out_len", ctypes.c_uint64),
        ("taken", ctypes.c_uint64),
        ("stop", ctypes.c_uint64),
    ]


#: Every struct of stnative.h and its mirror.
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "st_tree": StTree,
    "st_chain": StChain,
    "st_verify": StVerify,
    "st_batch": StBatch,
    "st_encode": StEncode,
}

#: The integer constants of stnative.h that only C and this package use.
NATIVE_INTS: dict[str, int] = {
    "ST_MAX_FRONTIER": MAX_FRONTIER,
    "ST_STOP_END": STOP_END,
    "ST_STOP_LIMIT": STOP_LIMIT,
    "ST_STOP_TORN": STOP_TORN,
    "ST_STOP_SYNTAX": STOP_SYNTAX,
    "ST_STOP_RECORD": STOP_RECORD,
    "ST_ENC_END": ENC_END,
    "ST_ENC_LIMIT": ENC_LIMIT,
    "ST_ENC_FULL": ENC_FULL,
    "ST_ENC_SLOW": ENC_SLOW,
}


def python_values() -> dict[str, int | bytes | frozenset[str] | dict[int, str]]:
    """The record-domain constants of stnative.h, by their C name, as the Python reference
    code defines them (where they belong: the record format, the canonical encoding, the event
    decoder; imported here, not at the top: those modules import this package)."""
    from agent.events.decode import PROTOCOLS
    from agent.journal.canonical import MAX_SAFE_INT
    from agent.journal.record import RECORD_PREFIX, VERDICT_ACTIONS

    return {
        "ST_RECORD_PREFIX": RECORD_PREFIX,
        "ST_SAFE_INT": MAX_SAFE_INT,
        "ST_VERDICT_ACTIONS": frozenset(VERDICT_ACTIONS),
        "ST_PROTOCOLS": dict(PROTOCOLS),
    }


class StAbiEntry(ctypes.Structure):
    """One entry of ``st_abi()`` (``struct st_abi_entry``; the table ends at a NULL name)."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("value", ctypes.c_int64),
        ("size", ctypes.c_uint64),
        ("text", ctypes.c_void_p),
    ]


#: A layout table as read: name -> every (value, size, text) entry of that name.
Table = dict[str, list[tuple[int, int, bytes | None]]]


def read_table(lib: ctypes.CDLL) -> Table:
    """The library's ``st_abi()`` table."""
    entries = lib.st_abi()
    table: defaultdict[str, list[tuple[int, int, bytes | None]]] = defaultdict(list)
    i = 0
    while entries[i].name is not None:
        e = entries[i]
        text = ctypes.string_at(e.text, e.size) if e.text else None
        table[e.name.decode("ascii")].append((int(e.value), int(e.size), text))
        i += 1
    return dict(table)


def mismatches(table: Table) -> list[str]:
    """Every way ``table`` (the C side) differs from this mirror and the Python values."""
    wrong: list[str] = []

    def one(name: str) -> tuple[int, int, bytes | None] | None:
        got = table.get(name, [])
        if len(got) != 1:
            wrong.append(f"{name}: {len(got)} entries in the library's table, expected 1")
            return None
        return got[0]

    for cname, cls in STRUCTS.items():
        entry = one(cname)
        if entry is not None and entry[1] != ctypes.sizeof(cls):
            wrong.append(f"struct {cname} is {entry[1]} bytes, the mirror {ctypes.sizeof(cls)}")
        fields = {f[0] for f in cls._fields_}
        listed = {n.split(".", 1)[1] for n in table if n.startswith(cname + ".")}
        for missing in sorted(fields ^ listed):
            side = "the mirror" if missing in fields else "C"
            wrong.append(f"{cname}.{missing} exists only in {side}")
        for field in sorted(fields & listed):
            entry = one(f"{cname}.{field}")
            desc: Any = getattr(cls, field)
            if entry is not None and (entry[0], entry[1]) != (desc.offset, desc.size):
                wrong.append(
                    f"{cname}.{field} is at {entry[0]} ({entry[1]} bytes) in C, at "
                    f"{desc.offset} ({desc.size} bytes) in the mirror"
                )
    for name, number in NATIVE_INTS.items():
        entry = one(name)
        if entry is not None and entry[0] != number:
            wrong.append(f"{name} is {entry[0]} in C, {number} in the mirror")
    prefix, safe_int = one("ST_RECORD_PREFIX"), one("ST_SAFE_INT")
    c_side: dict[str, int | bytes | frozenset[str] | dict[int, str] | None] = {
        "ST_RECORD_PREFIX": prefix[2] if prefix else None,
        "ST_SAFE_INT": safe_int[0] if safe_int else None,
        "ST_VERDICT_ACTIONS": frozenset(text for _, text in _texts(table, "ST_VERDICT_ACTIONS")),
        "ST_PROTOCOLS": dict(_texts(table, "ST_PROTOCOLS")),
    }
    python = python_values()
    for name, value in python.items():
        if c_side[name] != value:
            wrong.append(f"{name} is {c_side[name]!r} in C, {value!r} in Python")
    known = {*STRUCTS, *NATIVE_INTS, *python}
    for name in sorted(table):
        if name.split(".", 1)[0] not in known:
            wrong.append(f"{name} is in the library's table but not mirrored")
    return wrong


def _texts(table: Table, name: str) -> list[tuple[int, str]]:
    """The (value, text) of every entry called ``name``."""
    return [(value, (text or b"").decode("ascii")) for value, _, text in table.get(name, [])]


def declare(lib: ctypes.CDLL) -> None:
    """Argument and result types of every function Python calls."""
    u64, p = ctypes.c_uint64, ctypes.POINTER
    lib.st_abi.restype = p(StAbiEntry)
    lib.st_abi.argtypes = []
    lib.st_verify_run.restype = u64
    lib.st_verify_run.argtypes = [p(StVerify), ctypes.c_char_p, u64, u64]
    lib.st_tree_root.restype = None
    lib.st_tree_root.argtypes = [p(StTree), ctypes.c_char_p]
    lib.st_chain_lines.restype = u64
    lib.st_chain_lines.argtypes = [p(StChain), ctypes.c_char_p, u64]
    lib.st_chain_write.restype = ctypes.c_int64
    lib.st_chain_write.argtypes = [p(StChain), ctypes.c_int, ctypes.c_char_p, u64, ctypes.c_char_p]
    lib.st_chain_add.restype = None
    lib.st_chain_add.argtypes = [p(StChain), ctypes.c_char_p, u64]
    lib.st_scan_run.restype = u64
    lib.st_scan_run.argtypes = [
        ctypes.c_char_p,
        u64,
        u64,
        u64,
        _U32P,
        ctypes.c_uint32,
        _U32P,
        p(u64),
        ctypes.c_uint32,
        _U32P,
    ]
    lib.st_encode_run.restype = u64
    lib.st_encode_run.argtypes = [p(StChain), p(StEncode), ctypes.c_char_p, u64]
    lib.st_batch_free.restype = None
    lib.st_batch_free.argtypes = [p(StBatch)]
