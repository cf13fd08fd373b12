"""The acting process, as /proc tells it, and the kill that does not hit a recycled pid."""

from __future__ import annotations

import errno
import os
import signal

from agent.kernel import procfs
from agent.policy.evaluate import Process

#: Ancestors followed at most (a loop in /proc is impossible, a very deep tree is not): a
#: process further down than that has an ancestry not known, judged fail-closed.
MAX_ANCESTORS = 64


def process_of(tid: int, with_ancestors: bool) -> tuple[Process, int]:
    """The acting process (exe, real uid/gid, cgroup v2 path, ancestry), and the thread's
    process id (tgid); OSError if the thread is gone."""
    status = procfs.read_status(tid, last="Gid")  # Tgid, PPid, Uid, Gid come before it
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
        if pid > 1:  # stopped at the limit: an ancestor not read may be any binary
            ancestry_known = False
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


#: kill_process when ``acted_at_ns`` names a time before the pid's process started
RECYCLED = "recycled"


def kill_process(pid: int, acted_at_ns: int | None = None) -> bool | str:
    """SIGKILL through a pidfd (no signal to a recycled pid once the fd is open): True if sent.
    With ``acted_at_ns`` (when the process did what it is killed for, in CLOCK_BOOTTIME ns as
    the probes stamp it: the wall clock may be stepped meanwhile): not sent, and RECYCLED
    returned, if the process holding the pid now started after that, by more than the
    kernel's start-time resolution (one clock tick): the actor exited and its pid is another
    process's."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if acted_at_ns is not None and started_after(pid, acted_at_ns):
            return RECYCLED
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def started_after(pid: int, boot_ns: int) -> bool:
    """Whether the process holding ``pid`` started after ``boot_ns`` (CLOCK_BOOTTIME), by more
    than one clock tick (/proc/PID/stat's starttime, in ticks of CLOCK_BOOTTIME); False if it
    is gone or unreadable (nothing to protect then)."""
    ticks = procfs.start_ticks(pid)
    if ticks is None:
        return False
    return ticks * _TICK_NS > boot_ns + _TICK_NS


def read_exe(pid: int) -> tuple[str | None, bool]:
    """The task's binary and whether it is known. A kernel thread, or a task that is gone, is
    known to have none; anything else the agent cannot read is unknown, which the evaluator
    judges fail-closed: a refusal (EACCES, EPERM: the agent lacks CAP_SYS_PTRACE for another
    user's task, or an LSM said no), and a thread group whose leader exited (its exe link is
    gone, ENOENT) when no other thread's link can be read either."""
    try:
        return _binary(f"/proc/{pid}/exe"), True
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ESRCH):
            return None, False
    flags = procfs.stat_flags(pid)
    if flags is None:
        return None, True  # gone
    if flags & PF_KTHREAD:
        return None, True  # a kernel thread: no binary
    try:  # the leader exited, the other threads still run its binary
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None, False
    for tid in tasks:
        try:
            return _binary(f"/proc/{pid}/task/{tid}/exe"), True
        except OSError:
            continue
    return None, False


#: include/linux/sched.h: the task is a kernel thread
PF_KTHREAD = 0x00200000
_DELETED = " (deleted)"


def _binary(proc_link: str) -> str:
    """The binary's path from its /proc link: the kernel marks an unlinked binary by appending
    " (deleted)", which a file may also carry in its real name. Only a binary with no name left
    (st_nlink 0) loses the mark: a file literally named "trusted (deleted)" is judged by that
    name, not as "trusted". OSError if the link cannot be read."""
    link = os.readlink(proc_link)
    if not link.endswith(_DELETED):
        return link
    try:
        if os.stat(proc_link).st_nlink != 0:
            return link
    except OSError:
        return link  # cannot tell: the literal name, which no rule is likely to exempt
    return link.removesuffix(_DELETED)
