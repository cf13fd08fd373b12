"""The acting process, as /proc tells it, and the kill that does not hit a recycled pid."""

from __future__ import annotations

import errno
import os
import signal

from agent.kernel import procfs
from agent.policy.evaluate import Process

#: Ancestors followed at most (a loop in /proc is impossible, a very deep tree is not).
MAX_ANCESTORS = 64


def process_of(tid: int, with_ancestors: bool) -> tuple[Process, int]:
    """The acting process (exe, real uid/gid, cgroup v2 path, ancestry), and the thread's
    process id (tgid); OSError if the thread is gone."""
    status = procfs.read_status(tid)
    tgid = procfs.first_int(status, "Tgid", tid)
    ppid = procfs.first_int(status, "PPid")
    exe, exe_known = read_exe(tid)
    ancestors: list[str] = []
    ancestry_known = True
    if with_ancestors:
        if exe:
            ancestors.append(exe)
        pid, hops = ppid, 0
        while pid > 1 and hops < MAX_ANCESTORS:
            parent_exe, known = read_exe(pid)
            ancestry_known &= known
            if parent_exe:
                ancestors.append(parent_exe)
            pid = procfs.ppid_of(pid)
            hops += 1
    process = Process(
        exe=exe,
        uid=procfs.first_int(status, "Uid"),
        gid=procfs.first_int(status, "Gid"),
        cgroup=procfs.cgroup_of(tid),
        ancestors=tuple(ancestors),
        exe_known=exe_known,
        ancestry_known=ancestry_known,
    )
    return process, tgid


def read_exe(pid: int) -> tuple[str | None, bool]:
    """The task's binary and whether it is known. No binary (a kernel thread, a task exiting
    or gone: ENOENT, ESRCH) is known to be none; a refusal (EACCES, EPERM: the agent lacks
    CAP_SYS_PTRACE for another user's task, or an LSM said no) leaves it unknown, which the
    evaluator judges fail-closed."""
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)"), True
    except OSError as exc:
        return None, exc.errno in (errno.ENOENT, errno.ESRCH)


def kill_process(pid: int) -> bool:
    """SIGKILL through a pidfd (no signal to a recycled pid once the fd is open)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
