"""cgroup v2 paths and ids: rules name cgroups by path, the kernel knows a task's by id.

A cgroup v2 directory's inode number is its id (what ``bpf_get_current_cgroup_id`` and the
probes' ``cgroup_id`` report); a path is relative to the cgroup2 mount, as in
``/proc/<pid>/cgroup`` (``/system.slice/ssh.service``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from agent.errors import KernelError
from agent.kernel.procfs import find_mount, read_mounts


def cgroup2_root() -> Path:
    """The cgroup v2 mount point, from the mount table (hybrid hosts mount it elsewhere)."""
    point = find_mount(read_mounts(), "cgroup2")
    if point is None:
        raise KernelError("no cgroup v2 mount in /proc/self/mountinfo: the network guard needs "
                          "cgroup v2")  # fmt: skip
    return Path(point)


def relative_path(top: str, directory: str) -> str:
    """The cgroup path of ``directory`` below the cgroup2 mount ``top`` ("/" for the root)."""
    return "/" if directory == top else "/" + os.path.relpath(directory, top)


def cgroup_dirs(root: Path) -> Iterator[tuple[str, int]]:
    """(path below the cgroup2 mount, cgroup id) of every cgroup that exists now."""
    top = str(root)
    for dirpath, _dirs, _files in os.walk(top):
        with contextlib.suppress(OSError):  # a cgroup removed while we walk
            yield relative_path(top, dirpath), os.stat(dirpath).st_ino


class CgroupPaths:
    """cgroup v2 id (what the probes report) -> path below the cgroup2 mount (what rules name).

    Unknown ids trigger a rescan of the tree, at most once a second (``RESCAN_S``); a cgroup
    that is gone stays unknown (its rules cannot match). ``scan`` and ``clock`` are the tree
    walk and the time source (the unit tests give their own).
    """

    RESCAN_S = 1.0

    def __init__(
        self,
        scan: Callable[[], Iterable[tuple[str, int]]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._paths: dict[int, str] = {}
        self._next_scan = 0.0
        self._clock = clock
        if scan is None:
            with contextlib.suppress(KernelError):  # no cgroup v2: no cgroup rule can match
                scan = functools.partial(cgroup_dirs, cgroup2_root())
        self._scan = scan

    def path(self, cgroup_id: int) -> str | None:
        found = self._paths.get(cgroup_id)
        if found is not None or self._scan is None:
            return found
        now = self._clock()
        if now >= self._next_scan:
            self._next_scan = now + self.RESCAN_S
            self._paths.update((cgid, rel) for rel, cgid in self._scan())
        return self._paths.get(cgroup_id)
