"""The ctypes mirror (agent/kernel/abi.py) against the BTF of the compiled probe objects.

Every struct in ``abi.STRUCTS`` must appear in the BTF of at least one object in
agent/kernel/obj (or $SEALTRAIL_BPF_DIR), and wherever it appears its size, field names and
order, and each field's offset and size must equal the mirror's. Every enum of the header must
equal its mirror (``ENUMS``: ``st_op`` ``abi.Op``, ``st_variant`` ``abi.Variant``, ...), and
every ``#define`` its value in ``abi.DEFINES`` (probes/abi.bpf.c carries them into the BTF as
``enum st_defines``); a define or enum the header has and the checks do not is a failure too.
The guard's inner map templates must have the shapes the agent creates (``guard.TABLES``).
Layout drift fails here, not in production (the Tetragon alignchecker idea).

Not marked ``kernel``: ``bpftool btf dump file`` reads the ELF and needs no root. It needs
bpftool and the built objects (``make probes``): without them it skips, except under CI,
where it fails, as kernel tests do. The last tests feed the checker a hand-written BTF and
deliberately wrong mirrors, to prove it catches drift; they need nothing.
"""

from __future__ import annotations

import ctypes
import enum
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from agent.enforce.guard import TABLES
from agent.kernel import abi
from agent.kernel.loader import OBJ_DIR

BtfType = dict[str, Any]

# BTF kinds that only qualify or rename another type
_ALIASES = {"TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"}


class Btf:
    """One object's BTF as ``bpftool -j btf dump file`` prints it."""

    def __init__(self, types: list[BtfType]) -> None:
        self.by_id: dict[int, BtfType] = {t["id"]: t for t in types}
        self.named: dict[tuple[str, str], BtfType] = {
            (t["kind"], t["name"]): t for t in types if t.get("name") not in (None, "(anon)")
        }

    def resolve(self, type_id: int) -> BtfType:
        """The type behind typedefs and qualifiers."""
        t = self.by_id[type_id]
        while t["kind"] in _ALIASES:
            t = self.by_id[t["type_id"]]
        return t

    def size(self, type_id: int) -> int:
        t = self.resolve(type_id)
        if t["kind"] == "ARRAY":
            return int(t["nr_elems"]) * self.size(t["type_id"])
        if t["kind"] == "PTR":
            return 8
        return int(t["size"])

    def struct(self, name: str) -> BtfType | None:
        return self.named.get(("STRUCT", name))

    def enum(self, name: str) -> BtfType | None:
        return self.named.get(("ENUM", name)) or self.named.get(("ENUM64", name))

    def var(self, name: str) -> BtfType | None:
        return self.named.get(("VAR", name))


def _is_signed_int(ctype: Any) -> bool | None:
    if not (isinstance(ctype, type) and issubclass(ctype, ctypes._SimpleCData)):
        return None
    if getattr(ctype, "_type_", "") not in tuple(
        "bBhHiIlLqQ"
    ):  # integers only; c_char and friends excluded
        return None
    return bool(ctype(-1).value < 0)


def layout_errors(btf: Btf, c_name: str, mirror: type[ctypes.Structure]) -> list[str]:
    """Every difference between BTF ``struct c_name`` and ``mirror``; empty if they agree."""
    struct = btf.struct(c_name)
    if struct is None:
        return [f"struct {c_name} not in this BTF"]
    errors = []
    if struct["size"] != ctypes.sizeof(mirror):
        errors.append(f"size: C {struct['size']}, mirror {ctypes.sizeof(mirror)}")
    members = struct["members"]
    c_fields = [m["name"] for m in members]
    py_fields = [f[0] for f in mirror._fields_]
    if c_fields != py_fields:
        errors.append(f"fields: C {c_fields}, mirror {py_fields}")
    py_types = {f[0]: f[1] for f in mirror._fields_}
    for m in members:
        name = m["name"]
        if name not in py_types:
            continue
        where = f"{c_name}.{name}"
        if m["bits_offset"] % 8 or m.get("bitfield_size"):
            errors.append(f"{where}: bitfield; the ABI header allows none")
            continue
        field = getattr(mirror, name)
        offset, size = m["bits_offset"] // 8, btf.size(m["type_id"])
        if (offset, size) != (field.offset, field.size):
            errors.append(
                f"{where}: C offset {offset} size {size}, "
                f"mirror offset {field.offset} size {field.size}"
            )
        errors += _type_errors(btf, where, btf.resolve(m["type_id"]), py_types[name])
    return errors


def _type_errors(btf: Btf, where: str, t: BtfType, ctype: Any) -> list[str]:
    """Shape of one field beyond its size: nested struct identity, array length, signedness."""
    if t["kind"] == "STRUCT":
        want = abi.STRUCTS.get(t["name"])
        if want is None or ctype is not want:
            return [f"{where}: C struct {t['name']}, mirror {getattr(ctype, '__name__', ctype)}"]
    elif t["kind"] == "ARRAY":
        length = getattr(ctype, "_length_", None)
        if length != t["nr_elems"]:
            return [f"{where}: C array of {t['nr_elems']}, mirror {length}"]
        return _type_errors(btf, f"{where}[]", btf.resolve(t["type_id"]), ctype._type_)
    elif t["kind"] == "INT" and t["size"] > 1:
        signed = _is_signed_int(ctype)
        if signed is not None and signed != (t["encoding"] == "SIGNED"):
            return [f"{where}: C {t['encoding']} {t['name']}, mirror signed={signed}"]
    return []


#: C enum -> (its mirror, the prefix of its names, values only C spells as enumerators)
ENUMS: dict[str, tuple[type[enum.IntEnum], str, dict[str, int]]] = {
    "st_op": (abi.Op, "ST_OP_", {"ST_OP_MAX": abi.OP_MAX}),
    "st_variant": (abi.Variant, "ST_V_", {}),
    "st_mechanism": (abi.Mechanism, "ST_MECH_", {}),
    "st_slot": (abi.Slot, "ST_SLOT_", {"ST_SLOTS": abi.SLOTS}),
    "st_action": (abi.Action, "ST_ACT_", {}),
    "st_pol_action": (abi.PolAction, "ST_POL_", {}),
}
#: probes/abi.bpf.c's enum of the header's defines, ST_X as ST_DEFINE_X
DEFINES_ENUM = "st_defines"


def _mirror_values(c_name: str) -> dict[str, int]:
    if c_name == DEFINES_ENUM:
        return {f"ST_DEFINE_{name.removeprefix('ST_')}": v for name, v in abi.DEFINES.items()}
    mirror, prefix, extra = ENUMS[c_name]
    return {f"{prefix}{item.name}": item.value for item in mirror} | extra


def enum_errors(btf: Btf, c_name: str = "st_op") -> list[str]:
    found = btf.enum(c_name)
    if found is None:
        return [f"enum {c_name} not in this BTF"]
    # values as the enum's size holds them: bpftool prints an unsigned 32-bit enum value with
    # the top bit set (ST_AUID_UNSET, 0xffffffff) sign-extended to 64 bits
    mask = (1 << (8 * found["size"])) - 1
    got = {v["name"]: v["val"] & mask for v in found["values"]}
    want = {name: value & mask for name, value in _mirror_values(c_name).items()}
    return [
        f"enum {c_name}: {name}: C {got.get(name)}, mirror {want.get(name)}"
        for name in sorted(got.keys() | want.keys())
        if got.get(name) != want.get(name)
    ]


# ---- against the compiled objects ----


def _objects_dir() -> Path:
    override = os.environ.get("SEALTRAIL_BPF_DIR")
    return Path(override) if override else OBJ_DIR


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"ABI test cannot run under CI: {reason}")
    pytest.skip(reason)


@cache
def _dump(path: Path) -> Btf:
    out = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Btf(json.loads(out)["types"])


@pytest.fixture(scope="module")
def objects() -> dict[str, Btf]:
    if shutil.which("bpftool") is None:
        _unavailable("bpftool not installed (apt-get install bpftool)")
    paths = sorted(_objects_dir().glob("*.bpf.o"))
    if not paths:
        _unavailable(f"no *.bpf.o in {_objects_dir()} (make probes)")
    return {p.name: _dump(p) for p in paths}


def _holding(objects: dict[str, Btf], c_name: str) -> Iterator[tuple[str, Btf]]:
    return ((name, btf) for name, btf in objects.items() if btf.struct(c_name) is not None)


@pytest.mark.parametrize("c_name", sorted(abi.STRUCTS))
def test_struct_matches_btf(objects: dict[str, Btf], c_name: str) -> None:
    holders = list(_holding(objects, c_name))
    if not holders:
        pytest.fail(
            f"struct {c_name} is in abi.STRUCTS but in the BTF of none of {sorted(objects)}: "
            "BPF code uses it only through casts, so clang emitted no BTF for it and its layout "
            "is unchecked. Anchor it in an object's BTF (e.g. a typed global in a probe)."
        )
    errors = [
        f"{obj}: {e}"
        for obj, btf in holders
        for e in layout_errors(btf, c_name, abi.STRUCTS[c_name])
    ]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("c_name", [*sorted(ENUMS), DEFINES_ENUM])
def test_enum_matches_btf(objects: dict[str, Btf], c_name: str) -> None:
    holders = {name: btf for name, btf in objects.items() if btf.enum(c_name) is not None}
    if not holders:
        pytest.fail(
            f"enum {c_name} is in the BTF of none of {sorted(objects)}: its values are unchecked"
        )
    errors = [f"{obj}: {e}" for obj, btf in holders.items() for e in enum_errors(btf, c_name)]
    assert not errors, "\n".join(errors)


HEADER = Path(__file__).resolve().parents[2] / "probes" / "sealtrail.h"


def test_every_enum_and_define_of_the_header_is_checked() -> None:
    """A new enum or define in sealtrail.h must get a mirror (and an anchor in abi.bpf.c)."""
    if not HEADER.is_file():
        _unavailable(f"{HEADER} not found (tests run from a checkout)")
    text = HEADER.read_text()
    assert set(re.findall(r"^enum (st_\w+)", text, re.M)) == set(ENUMS)
    assert set(re.findall(r"^#define (ST_\w+)", text, re.M)) == set(abi.DEFINES)


def _uint(btf: Btf, member: BtfType) -> int:
    """The value of a ``__uint(name, N)`` map field: a pointer to an array of N."""
    return int(btf.resolve(btf.resolve(member["type_id"])["type_id"])["nr_elems"])


def _inner_template(btf: Btf, outer: str) -> dict[str, int]:
    """The ``__uint`` fields of the inner map template of array-of-maps ``outer``."""
    var = btf.var(outer)
    assert var is not None, f"map {outer} not in the guard's BTF"
    values = next(m for m in btf.resolve(var["type_id"])["members"] if m["name"] == "values")
    template = btf.resolve(btf.resolve(btf.resolve(values["type_id"])["type_id"])["type_id"])
    return {m["name"]: _uint(btf, m) for m in template["members"]}


def test_guard_inner_maps_are_what_the_agent_creates(objects: dict[str, Btf]) -> None:
    """guard.bpf.c's templates (sealtrail.h capacities) against guard.TABLES (abi's mirror):
    the kernel refuses an inner map of another shape when the agent installs a policy."""
    btf = objects.get("guard.bpf.o")
    if btf is None:
        pytest.fail(f"guard.bpf.o not among {sorted(objects)}")
    errors = []
    for name, table in TABLES.items():
        want = {"type": table.map_type, "max_entries": table.max_entries,
                "key_size": table.key_size, "value_size": table.value_size,
                "map_flags": table.flags}  # fmt: skip
        got = {"map_flags": 0} | _inner_template(btf, table.outer)
        if got != want:
            errors.append(f"{name} ({table.outer}): C {got}, agent {want}")
    assert not errors, "\n".join(errors)


# ---- the checker itself catches drift (no bpftool, no objects) ----

# struct pair { __u32 a; __u16 b; __u16 c; __s64 d; __u8 e[4]; }  (size 24), as bpftool prints it
_PAIR_BTF = [
    {"id": 1, "kind": "INT", "name": "unsigned int", "size": 4, "encoding": "(none)"},
    {"id": 2, "kind": "TYPEDEF", "name": "__u32", "type_id": 1},
    {"id": 3, "kind": "INT", "name": "unsigned short", "size": 2, "encoding": "(none)"},
    {"id": 4, "kind": "TYPEDEF", "name": "__u16", "type_id": 3},
    {"id": 5, "kind": "INT", "name": "long long", "size": 8, "encoding": "SIGNED"},
    {"id": 6, "kind": "TYPEDEF", "name": "__s64", "type_id": 5},
    {"id": 7, "kind": "INT", "name": "unsigned char", "size": 1, "encoding": "(none)"},
    {"id": 8, "kind": "ARRAY", "name": "(anon)", "type_id": 7, "index_type_id": 1, "nr_elems": 4},
    {
        "id": 9,
        "kind": "STRUCT",
        "name": "pair",
        "size": 24,
        "vlen": 5,
        "members": [
            {"name": "a", "type_id": 2, "bits_offset": 0},
            {"name": "b", "type_id": 4, "bits_offset": 32},
            {"name": "c", "type_id": 4, "bits_offset": 48},
            {"name": "d", "type_id": 6, "bits_offset": 64},
            {"name": "e", "type_id": 8, "bits_offset": 128},
        ],
    },
]


def _mirror(*fields: tuple[str, Any]) -> type[ctypes.Structure]:
    return type("Pair", (ctypes.Structure,), {"_fields_": list(fields)})


_U32, _U16, _S64, _U64 = ctypes.c_uint32, ctypes.c_uint16, ctypes.c_int64, ctypes.c_uint64
_E = ("e", ctypes.c_uint8 * 4)


def test_checker_accepts_the_right_mirror() -> None:
    right = _mirror(("a", _U32), ("b", _U16), ("c", _U16), ("d", _S64), _E)
    assert layout_errors(Btf(_PAIR_BTF), "pair", right) == []


@pytest.mark.parametrize(
    ("drift", "fields", "expect"),
    [
        (
            "reordered",
            [("a", _U32), ("c", _U16), ("b", _U16), ("d", _S64), _E],
            "fields: C ['a', 'b', 'c', 'd', 'e']",
        ),
        ("widened", [("a", _U64), ("b", _U16), ("c", _U16), ("d", _S64), _E], "size: C 24"),
        (
            "signedness",
            [("a", _U32), ("b", _U16), ("c", _U16), ("d", _U64), _E],
            "pair.d: C SIGNED",
        ),
        (
            "array length",
            [("a", _U32), ("b", _U16), ("c", _U16), ("d", _S64), ("e", ctypes.c_uint8 * 3)],
            "pair.e: C array of 4",
        ),
        ("missing field", [("a", _U32), ("b", _U16), ("c", _U16), ("d", _S64)], "fields:"),
    ],
)
def test_checker_catches_drift(drift: str, fields: list[tuple[str, Any]], expect: str) -> None:
    errors = layout_errors(Btf(_PAIR_BTF), "pair", _mirror(*fields))
    assert any(expect in e for e in errors), f"{drift} not caught: {errors}"


def test_checker_reports_absent_struct() -> None:
    assert layout_errors(Btf(_PAIR_BTF), "st_hdr", abi.Hdr) == ["struct st_hdr not in this BTF"]
