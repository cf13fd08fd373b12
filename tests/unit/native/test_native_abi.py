"""The native core's layout, checked against its ctypes mirror as the kernel ABI is against BTF.

``native/stnative.h`` defines every struct and constant C shares with Python once; the library
exports them as built (``st_abi()``): struct sizes, every field's offset and size, the constants'
values. Here they must equal ``agent/native/layout.py`` and the Python definitions of the
record-domain constants (record prefix, safe-integer bound, verdict actions, protocol names), and
a drift of any kind must be reported.
"""

from __future__ import annotations

import ctypes
import os

import pytest

from agent import native
from agent.events.decode import PROTOCOLS
from agent.journal.canonical import MAX_SAFE_INT
from agent.journal.record import RECORD_PREFIX, VERDICT_ACTIONS
from agent.native import layout

pytestmark = pytest.mark.skipif(
    not native.available() and not os.environ.get("CI"),
    reason="native core not built (make native)",
)


@pytest.fixture(scope="module")
def table() -> layout.Table:
    return layout.read_table(native.library())


def test_the_library_matches_the_mirror(table: layout.Table) -> None:
    assert layout.mismatches(table) == []


@pytest.mark.parametrize("name", sorted(layout.STRUCTS))
def test_struct_offsets_and_sizes(table: layout.Table, name: str) -> None:
    cls = layout.STRUCTS[name]
    assert table[name] == [(0, ctypes.sizeof(cls), None)]
    fields = [f[0] for f in cls._fields_]
    assert sorted(n for n in table if n.startswith(name + ".")) == sorted(
        f"{name}.{f}" for f in fields
    )
    for field in fields:
        desc = getattr(cls, field)
        assert table[f"{name}.{field}"] == [(desc.offset, desc.size, None)], field


def test_constants_have_the_python_values(table: layout.Table) -> None:
    for name, value in layout.NATIVE_INTS.items():
        assert table[name] == [(value, 0, None)], name
    assert table["ST_SAFE_INT"] == [(MAX_SAFE_INT, 0, None)]
    assert table["ST_RECORD_PREFIX"] == [(0, len(RECORD_PREFIX), RECORD_PREFIX)]
    actions = {text for _, _, text in table["ST_VERDICT_ACTIONS"]}
    assert actions == {a.encode() for a in VERDICT_ACTIONS}
    protocols = {value: text for value, _, text in table["ST_PROTOCOLS"]}
    assert protocols == {n: name.encode() for n, name in PROTOCOLS.items()}


def _doctored(
    table: layout.Table, name: str, entries: list[tuple[int, int, bytes | None]]
) -> layout.Table:
    out = dict(table)
    if entries:
        out[name] = entries
    else:
        del out[name]
    return out


@pytest.mark.parametrize(
    ("name", "entries", "words"),
    [
        ("st_chain.tree", [(48, 2064, None)], "st_chain.tree is at 48"),
        ("st_verify", [(0, 80, None)], "struct st_verify is 80 bytes"),
        ("st_encode.stop", [], "st_encode.stop exists only in the mirror"),
        ("st_batch.spare", [(40, 8, None)], "st_batch.spare exists only in C"),
        ("ST_STOP_LIMIT", [(7, 0, None)], "ST_STOP_LIMIT is 7 in C"),
        ("ST_SAFE_INT", [(1 << 53, 0, None)], "ST_SAFE_INT is"),
        ("ST_RECORD_PREFIX", [(0, 19, b"sealtrail/record/v1")], "ST_RECORD_PREFIX is"),
        ("ST_VERDICT_ACTIONS", [(0, 4, b"deny")], "ST_VERDICT_ACTIONS is"),
        ("ST_PROTOCOLS", [(6, 3, b"tcp")], "ST_PROTOCOLS is"),
        ("ST_NEW_THING", [(1, 0, None)], "ST_NEW_THING is in the library's table but not mirrored"),
    ],
)
def test_every_drift_is_reported(
    table: layout.Table, name: str, entries: list[tuple[int, int, bytes | None]], words: str
) -> None:
    wrong = layout.mismatches(_doctored(table, name, entries))
    assert any(words in w for w in wrong), wrong
