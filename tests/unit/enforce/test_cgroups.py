"""cgroup ids to the paths rules name: relative paths, and rescans at most once a second."""

from __future__ import annotations

from pathlib import Path

from agent.enforce.cgroups import CgroupPaths, cgroup_dirs, relative_path


def test_relative_path_below_the_mount() -> None:
    assert relative_path("/sys/fs/cgroup", "/sys/fs/cgroup") == "/"
    assert relative_path("/sys/fs/cgroup", "/sys/fs/cgroup/system.slice/a.service") == (
        "/system.slice/a.service"
    )


def test_cgroup_dirs_are_every_directory_by_inode(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    found = dict(cgroup_dirs(tmp_path))
    assert set(found) == {"/", "/a", "/a/b"}
    assert found["/a/b"] == (tmp_path / "a" / "b").stat().st_ino


class Tree:
    def __init__(self) -> None:
        self.cgroups: dict[str, int] = {"/": 1}
        self.scans = 0

    def scan(self) -> list[tuple[str, int]]:
        self.scans += 1
        return list(self.cgroups.items())


def test_unknown_ids_rescan_at_most_once_a_second() -> None:
    tree, now = Tree(), [100.0]
    paths = CgroupPaths(tree.scan, clock=lambda: now[0])
    assert paths.path(1) == "/" and tree.scans == 1
    assert paths.path(1) == "/" and tree.scans == 1  # known: no scan
    tree.cgroups["/new"] = 2
    now[0] += 0.5
    assert paths.path(2) is None and tree.scans == 1  # too soon after the last scan
    now[0] += 0.6
    assert paths.path(2) == "/new" and tree.scans == 2
