"""Kernel e2e, red team of 7ad357b: exit-only file probes, the first-component pre-filter
(st_top_names) and the fanotify decision's flags read from /proc/TID/syscall.

/proc/TID/syscall shows the number and argument registers the task saved at its *last*
syscall entry, also while the kernel opens a file for it outside that syscall: at the exit
of a blocked openat(2) a signal's core dump or an io_uring task work runs, and an io-wq
worker carries a copy of its creator's registers for life. The decision then judged the
decoy openat's O_RDONLY, not the open that is asked about; and the file needs ptrace access,
so an agent without CAP_SYS_PTRACE judged another user's read of a write-denied file as a
write. Fixed since: the open family's flags are saved again by a sys_enter program in
st_pending and removed at sys_exit, before signals and task work run, so an open outside an
open syscall finds none and every access is judged (fail closed); these tests keep it so.

Found on the way, older than 7ad357b (7ad357b~1 let it through the same way): a file opened
through a detached mount (open_tree OPEN_TREE_CLONE, root or any user in a user namespace)
is named from that mount's root, "/f", by the event fd's readlink and by the probes' walk
alike: no rule path matched, the write was allowed and nothing was journaled. Fixed since:
a name that does not lead to the event's file here makes the decision judge the file's own
name too (enforcer.name_here, by file handle).

The first-component pre-filter held: against 7ad357b~1's probes, both builds kept and dropped
the same opens (chroot, overlay both ways, tmpfs over a prefix, rbind of /, /proc/self/root,
/proc/self/cwd, memfd reopen, the root itself, "/" and "/d*" patterns, > 48 components,
> 4095 bytes); those cases are not repeated here.

Every rule names only directories this module created; helper processes are this test's own
subprocesses; the FIFO decoy is released by the helper's own child.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.enforce.cgroups import cgroup2_root
from agent.policy.mechanisms import host_capabilities
from tests.kernel.test_bypass import until
from tests.kernel.test_enforce import PY, SLOW, Env

pytestmark = pytest.mark.kernel

POLICY = """
name = "pathfilter"
description = "write rules a fanotify decision judges by the open's flags"
mode = "enforce"

[[rules]]
id = "pf-key-write"
description = "an exact file: reads allowed, writes denied"
operation = "open"
access = ["write", "truncate"]
targets.paths = ["{work}/etc/key"]
action = "deny"
fallback = "kill"

[[rules]]
id = "pf-tree-write"
description = "nothing written or created below tree"
operation = "open"
access = ["write", "create", "truncate"]
targets.paths = ["{work}/tree/"]
action = "deny"
fallback = "kill"
"""

# SIGQUIT (default action: core) while blocked in openat(FIFO, O_RDONLY): the core file is
# opened O_CREAT|O_WRONLY in the cwd, with orig_ax still 257 and flags 0 in the registers
CORE = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct rlimit r = {RLIM_INFINITY, RLIM_INFINITY};
    if (argc < 2 || setrlimit(RLIMIT_CORE, &r)) return 2;
    if (fork() == 0) { usleep(300000); kill(getppid(), SIGQUIT); _exit(0); }
    syscall(SYS_openat, AT_FDCWD, argv[1], O_RDONLY);  /* a FIFO nobody writes */
    return 3;
}
"""

# io_uring openat(PATH, O_WRONLY|O_APPEND) hard-linked behind a 200 ms timeout, submitted
# without waiting; then openat(FIFO, O_RDONLY) blocks. The timeout completes as task work at
# that openat's exit and submits the linked open there: inline (the task's own registers),
# or with IOSQE_ASYNC on an io-wq worker created at that moment (a copy of them).
URING = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/time_types.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
static int ring;
static struct io_uring_sqe *sqes;
static unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
static struct io_uring_cqe *cqes;
static void setup(void) {
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    ring = syscall(__NR_io_uring_setup, 8, &p);
    if (ring < 0) { perror("io_uring_setup"); exit(2); }
    char *sq = mmap(0, p.sq_off.array + p.sq_entries * sizeof(unsigned), PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQ_RING);
    char *cq = mmap(0, p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe),
                    PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_CQ_RING);
    sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) { perror("mmap"); exit(2); }
    sq_tail = (unsigned *)(sq + p.sq_off.tail); sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    sq_array = (unsigned *)(sq + p.sq_off.array);
    cq_head = (unsigned *)(cq + p.cq_off.head); cq_tail = (unsigned *)(cq + p.cq_off.tail);
    cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
}
static struct io_uring_sqe *get_sqe(void) {
    unsigned t = *sq_tail, i = t & *sq_mask;
    struct io_uring_sqe *s = &sqes[i];
    memset(s, 0, sizeof(*s));
    sq_array[i] = i;
    __atomic_store_n(sq_tail, t + 1, __ATOMIC_RELEASE);
    return s;
}
int main(int argc, char **argv) {
    static struct __kernel_timespec ts = {0, 200 * 1000 * 1000};
    if (argc < 4) return 2;
    setup();
    struct io_uring_sqe *s = get_sqe();
    s->opcode = IORING_OP_TIMEOUT; s->addr = (unsigned long)&ts; s->len = 1;
    s->flags = IOSQE_IO_HARDLINK; s->user_data = 1;
    s = get_sqe();
    s->opcode = IORING_OP_OPENAT; s->fd = AT_FDCWD; s->addr = (unsigned long)argv[1];
    s->open_flags = O_WRONLY | O_APPEND; s->user_data = 0;
    if (!strcmp(argv[3], "async")) s->flags = IOSQE_ASYNC;
    if (syscall(__NR_io_uring_enter, ring, 2, 0, 0, NULL, 0) != 2) { perror("enter"); return 2; }
    pid_t child = fork();
    if (!child) { sleep(1); open(argv[2], O_WRONLY); _exit(0); }  /* releases the decoy */
    int fifo = syscall(SYS_openat, AT_FDCWD, argv[2], O_RDONLY);  /* the decoy */
    waitpid(child, NULL, 0);
    if (fifo >= 0) close(fifo);
    int res[2] = {1, 1};
    for (int k = 0; k < 2; k++) {
        while (__atomic_load_n(cq_tail, __ATOMIC_ACQUIRE) == *cq_head)
            syscall(__NR_io_uring_enter, ring, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0);
        struct io_uring_cqe *c = &cqes[*cq_head & *cq_mask];
        res[c->user_data] = c->res;
        __atomic_store_n(cq_head, *cq_head + 1, __ATOMIC_RELEASE);
    }
    if (res[0] < 0) { printf("errno %d\n", -res[0]); return 1; }
    if (write(res[0], "x", 1) != 1) { printf("write errno %d\n", errno); return 1; }
    printf("written\n");
    return 0;
}
"""


# open_tree(DIR, OPEN_TREE_CLONE): a detached copy of DIR's mount (root of the caller's mount
# namespace, or any user in a user namespace of its own); openat(tree, NAME) through it
OTREE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int t = syscall(428 /* open_tree */, AT_FDCWD, argv[1], 1 /* OPEN_TREE_CLONE */ | O_CLOEXEC);
    if (t < 0) { printf("open_tree errno %d\n", errno); return 2; }
    int fd = openat(t, argv[2], O_WRONLY | O_APPEND);
    if (fd < 0) { printf("errno %d\n", errno); return 1; }
    if (write(fd, "x", 1) != 1) { printf("write errno %d\n", errno); return 1; }
    printf("written\n");
    return 0;
}
"""


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    if host_capabilities().lsm:
        pytest.skip("BPF-LSM loads here: open rules are not enforced by fanotify")
    if os.uname().machine != "x86_64":
        pytest.skip("the decoy's registers are read with x86-64's syscall table")
    root = Path(tempfile.mkdtemp(prefix="sealtrail-pathfilter-")).resolve()
    os.chmod(root, 0o755)
    work = root / "work"
    for d in ("etc", "tree"):
        (work / d).mkdir(parents=True)
    (work / "etc/key").write_text("protected\n")
    (work / "tree/f").write_text("protected\n")
    (work / "tree/pub").write_text("protected\n")
    os.chmod(work / "tree/pub", 0o666)  # nobody may write it, but for the rule
    os.mkfifo(root / "fifo")
    for name, source in (("core", CORE), ("uring", URING), ("otree", OTREE)):
        (root / f"{name}.c").write_text(source)
        subprocess.run(["gcc", "-O1", "-o", str(root / name), str(root / f"{name}.c")],
                       check=True)  # fmt: skip
    policies = root / "policies"
    policies.mkdir()
    (policies / "a.toml").write_text(POLICY.format(work=work))
    cgroup = cgroup2_root() / f"sealtrail-pathfilter-{os.getpid()}"
    cgroup.mkdir()
    env = Env(root, work, root / "journal", root / "keys", policies, root / "run", cgroup,
              None, {}, False)  # type: ignore[arg-type]  # fmt: skip
    with env.running():
        yield env
    shutil.rmtree(root, ignore_errors=True)


WRITE = """
import sys
try:
    open(sys.argv[1], 'ab').write(b'x')
except PermissionError:
    sys.exit(13)
"""


def test_sanity_rules_deny_writes_and_allow_reads(env: Env) -> None:
    key, new = env.work / "etc/key", env.work / "tree/new"
    for path, code in ((key, 13), (new, 13)):
        r = subprocess.run([PY, "-c", WRITE, str(path)], capture_output=True, timeout=30 * SLOW)
        assert r.returncode == code, (path, r.returncode, r.stderr)
    assert key.read_text() == "protected\n"  # a read is allowed


def uring(env: Env, how: str) -> str:
    r = subprocess.run([str(env.root / "uring"), str(env.work / "etc/key"),
                        str(env.root / "fifo"), how],
                       capture_output=True, text=True, timeout=30 * SLOW)  # fmt: skip
    return r.stdout.strip() or r.stderr.strip()


def test_io_uring_open_run_as_task_work_at_a_decoy_openats_exit(env: Env) -> None:
    """The linked io_uring openat(O_WRONLY) runs inline in the task's task work, at the exit
    of its blocked openat(FIFO, O_RDONLY); the decision reads 257 .. flags 0 and allows a
    write of a write-denied file."""
    out = uring(env, "inline")
    assert out == "errno 1", f"an io_uring write open judged as the decoy's read ({out})"
    assert (env.work / "etc/key").read_text() == "protected\n"


def test_io_uring_open_on_a_worker_made_at_a_decoy_openats_exit(env: Env) -> None:
    """IOSQE_ASYNC: the worker that runs the open is created by the task work, with the
    task's registers copied (create_io_thread): its /proc/TID/syscall says 257 .. flags 0
    for as long as it lives, whatever it opens."""
    out = uring(env, "async")
    assert out == "errno 1", f"an io-wq write open judged as the decoy's read ({out})"
    assert (env.work / "etc/key").read_text() == "protected\n"


def test_core_dump_into_a_create_denied_tree(env: Env) -> None:
    """The kernel opens the core file (core_pattern "core": in the cwd) O_CREAT|O_WRONLY
    while the dying task's registers still show its interrupted openat(FIFO, O_RDONLY): the
    decision judges a read and lets the dump be written below a create/write-denied tree.
    (fanotify: the file is created before its open is judged; a refused dump stays empty.)"""
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|") or "/" in pattern:
        pytest.skip(f"core_pattern {pattern!r}: the dump is not written in the cwd")
    tree = env.work / "tree"
    r = subprocess.run([str(env.root / "core"), str(env.root / "fifo")], cwd=tree,
                       capture_output=True, timeout=30 * SLOW)  # fmt: skip
    assert r.returncode == -3, r  # SIGQUIT
    dumps = {p.name: p.stat().st_size for p in tree.iterdir() if p.name.startswith("core")}
    for p in tree.iterdir():
        if p.name.startswith("core"):
            p.unlink()
    assert not any(dumps.values()), f"a core dump written below tree: {dumps}"


def otree(env: Env, name: str, *prefix: str) -> str:
    r = subprocess.run([*prefix, str(env.root / "otree"), str(env.work / "tree"), name],
                       capture_output=True, text=True, timeout=30 * SLOW)  # fmt: skip
    return r.stdout.strip() or r.stderr.strip()


def test_write_through_a_detached_clone_of_a_denied_tree(env: Env) -> None:
    """open_tree(tree, OPEN_TREE_CLONE) and openat(clone, "f", O_WRONLY): the file's path in
    a detached mount is "/f" (the event fd's readlink, the probes' walk). The decision also
    judges the file's name here (its handle reopened through a mount this namespace shows),
    and the verdict says which name it was judged as."""
    out = otree(env, "f")
    assert out == "errno 1", f"tree/f written through a detached mount ({out})"
    assert (env.work / "tree/f").read_text() == "protected\n"

    def judged() -> bool:
        return any(r["type"] == "verdict" and r.get("object", {}).get("judged_as") == want
                   for r in env.records())  # fmt: skip

    want = str(env.work / "tree/f")
    assert until(judged), "no verdict judged as the file's own name"


def test_write_through_a_detached_clone_by_nobody_in_a_user_namespace(env: Env) -> None:
    """The same without privilege: nobody in `unshare -rm` clones its own namespace's copy
    of tree and writes tree/pub (mode 0666) through it."""
    if not shutil.which("unshare") or not shutil.which("setpriv"):
        pytest.skip("no unshare/setpriv")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "unshare", "-rm"]
    out = otree(env, "pub", *nobody)
    if "unshare failed" in out or "open_tree errno" in out:
        pytest.skip(out)
    assert out == "errno 1", f"tree/pub written by nobody through a detached mount ({out})"
    assert (env.work / "tree/pub").read_text() == "protected\n"


READ_ONLY_POLICY = """
name = "pathfilter-ptrace"
description = "a write rule: reads of the file stay allowed"
mode = "enforce"

[[rules]]
id = "pf-no-write"
operation = "open"
access = ["write", "truncate"]
targets.paths = ["{path}"]
action = "deny"
fallback = "audit"
"""


def test_without_cap_sys_ptrace_another_users_read_of_a_write_denied_file(
    tmp_path: Path,
) -> None:
    """The agent without CAP_SYS_PTRACE (a degraded start it reports, not a refusal) cannot
    read /proc/TID/syscall of another user's task: the flags are unknown, so nobody's
    `cat` of a file that only a write rule names is refused."""
    from tests.agentproc import start_agent, stop_agent, wait_started

    shared = Path(tempfile.mkdtemp(prefix="sealtrail-pathfilter-ptrace-"))
    shared.chmod(0o755)
    target = shared / "readable"
    target.write_text("public\n")
    target.chmod(0o644)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.toml").write_text(READ_ONLY_POLICY.format(path=target))
    journal, run_dir, log = tmp_path / "journal", tmp_path / "run", tmp_path / "agent.log"
    cgroup = cgroup2_root() / f"sealtrail-pathfilter-ptrace-{os.getpid()}"
    cgroup.mkdir()
    drop = ("setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace")
    agent = start_agent(
        "--journal", str(journal), "--keys", str(tmp_path / "keys"),
        "--policies", str(policies), "--cgroup", str(cgroup), "--run-dir", str(run_dir),
        log=log, wrap=drop,
    )  # fmt: skip
    try:
        wait_started(agent, run_dir, log, 30 * SLOW)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                  "--inh-caps=-all"]  # fmt: skip
        out = subprocess.run([*nobody, "cat", str(target)], capture_output=True, text=True,
                             timeout=30 * SLOW)  # fmt: skip
    finally:
        stop_agent(agent, 30 * SLOW, cgroup, journal)
        shutil.rmtree(shared, ignore_errors=True)
    assert out.stdout == "public\n", f"a read refused by a write rule: {out}"
