"""The acting process from /proc: this test's own process stands in for a judged one."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from agent.enforce.process import process_of, read_exe
from agent.kernel import procfs

REPO = Path(__file__).resolve().parents[3]


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


def test_a_binary_the_agent_may_not_read_is_unknown_not_absent(tmp_path: Path) -> None:
    """An unprivileged reader (no CAP_SYS_PTRACE) is refused /proc/PID/exe of a root task:
    ``read_exe`` says unknown, which the evaluator judges fail-closed; a task that is gone is
    known to have no binary."""
    code = (
        "import sys\n"
        "from agent.enforce.process import read_exe\n"
        "print(read_exe(int(sys.argv[1])), read_exe(2**22 + 1))\n"
    )
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-c", code, "1"],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout.strip()  # fmt: skip
    assert out == "(None, False) (None, True)"
    assert read_exe(os.getpid()) == (os.path.realpath(sys.executable), True)
