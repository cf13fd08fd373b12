"""The acting process from /proc: this test's own process stands in for a judged one."""

from __future__ import annotations

import os
import sys
import threading

from agent.enforce.process import process_of
from agent.kernel import procfs


def test_a_thread_is_judged_as_its_process() -> None:
    asked: list[tuple[object, int]] = []
    thread = threading.Thread(target=lambda: asked.append(process_of(threading.get_native_id(),
                                                                     False)))  # fmt: skip
    thread.start()
    thread.join()
    ((process, tgid),) = asked
    assert tgid == os.getpid() and process == process_of(os.getpid(), False)[0]


def test_process_of_names_the_binary_ids_cgroup_and_ancestors() -> None:
    process, tgid = process_of(os.getpid(), with_ancestors=True)
    assert tgid == os.getpid()
    assert process.exe == os.path.realpath(sys.executable)
    assert (process.uid, process.gid) == (os.getuid(), os.getgid())
    assert process.cgroup == procfs.cgroup_of(os.getpid())
    assert process.ancestors[0] == process.exe
    assert process.ancestors[1:] and all(a.startswith("/") for a in process.ancestors)
    without, _ = process_of(os.getpid(), with_ancestors=False)
    assert without.ancestors == ()
