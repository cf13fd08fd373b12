"""``_mount_of`` (the mount a path is on) by its index equals the scan over every mount."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.enforce.mounts import _mount_of, relative_under
from agent.kernel.procfs import Mount


def _mount_of_scan(path: str, table: list[Mount]) -> tuple[Mount, str] | None:
    """The reference: every mount compared, the last one on the longest mount point wins."""
    best: tuple[Mount, str] | None = None
    for m in table:
        rest = relative_under(path, m.point)
        if rest is not None and (best is None or len(m.point) >= len(best[0].point)):
            best = (m, rest)
    return best


parts = st.sampled_from(["a", "b", "ab", "a b", "."])
points = st.lists(parts, max_size=3).map(lambda p: "/" + "/".join(p))
paths = st.one_of(
    points,
    points.map(lambda p: p + "/"),
    points.map(lambda p: p.rstrip("/") + "/ab/c"),
    st.sampled_from(["", "a/b", "//a"]),
)
tables = st.lists(
    st.tuples(st.integers(0, 3), points).map(lambda t: Mount(f"0:{t[0]}", "/", t[1], "x")),
    max_size=6,
)


@settings(max_examples=2000)
@given(table=tables, path=paths)
def test_index_equals_scan(table: list[Mount], path: str) -> None:
    assert _mount_of(path, table) == _mount_of_scan(path, table)


def test_the_last_mount_on_a_point_wins_and_a_new_table_is_indexed_anew() -> None:
    under = Mount("0:1", "/", "/srv", "ext4")
    over = Mount("0:2", "/", "/srv", "tmpfs")
    root = Mount("0:3", "/", "/", "ext4")
    assert _mount_of("/srv/x", [root, under, over]) == (over, "x")
    assert _mount_of("/srvx", [root, under, over]) == (root, "srvx")
    assert _mount_of("/srv/x", [root, over, under]) == (under, "x")
    assert _mount_of("/srv/x", [root]) == (root, "srv/x")
