"""The acting process from /proc: this test's own process stands in for a judged one."""

from __future__ import annotations

import contextlib
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


def _chain(tmp_path: Path, depth: int) -> tuple[subprocess.Popen[str], int]:
    """``depth`` shells, each waiting for the next (none execs it in its place), the last one
    sleeping: (the outermost, the sleeper's pid)."""
    script = tmp_path / "chain.sh"
    script.write_text('if [ "$1" -gt 0 ]; then sh "$0" $(($1 - 1)); true; '
                      'else echo $$; exec sleep 30; fi\n')  # fmt: skip
    top = subprocess.Popen(["sh", str(script), str(depth)], stdout=subprocess.PIPE, text=True)
    assert top.stdout is not None
    return top, int(top.stdout.readline())


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        children = Path(f"/proc/{p}/task/{p}/children")
        todo += [int(c) for c in children.read_text().split()] if children.exists() else []
    return out


def test_an_ancestry_deeper_than_the_walk_is_not_known(tmp_path: Path) -> None:
    """A process further down than MAX_ANCESTORS is judged fail-closed (its ancestry is not
    known) instead of as if the ancestors not read did not exist: a descendants rule missed
    a process 70 levels down before 2026-12-08."""
    from agent.enforce.process import MAX_ANCESTORS

    for depth, known in ((5, True), (MAX_ANCESTORS + 6, False)):
        top, leaf = _chain(tmp_path, depth)
        try:
            process, _ = process_of(leaf, with_ancestors=True)
            assert process.ancestry_known is known, (depth, len(process.ancestors))
        finally:
            for pid in reversed(_descendants(top.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            top.wait()


def test_a_kill_for_an_act_before_the_process_started_is_not_sent() -> None:
    """After-the-fact kills name the pid of an event: a process that took that pid after the
    act is not the actor and is not killed (before 2026-12-08 it was, and the journal named
    the actor); the actor itself is."""
    import time

    from agent.enforce.process import RECYCLED, kill_process, started_after

    def boot_ns() -> int:  # the probes' clock: the wall clock may be stepped meanwhile
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    before = boot_ns() - 2_000_000_000  # an act two seconds before the sleeper started
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.1)
        assert started_after(sleeper.pid, before)
        assert not started_after(sleeper.pid, boot_ns())
        assert kill_process(sleeper.pid, acted_at_ns=before) == RECYCLED
        assert sleeper.poll() is None, "a process started after the act was killed"
        assert kill_process(sleeper.pid, acted_at_ns=boot_ns()) is True
        assert sleeper.wait(5) == -9
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
