"""Kernel e2e: a thread that takes another's tid in the middle of its exec (issue 9).

A multithreaded process's leader execs a binary an exact exec rule allows it; while the
agent decides that exec (the leader waits in FAN_OPEN_EXEC_PERM), a second thread of the
process execs the dynamic loader on the same binary. The kernel's de_thread kills the waiting
leader and gives its tid to the second thread, so the loader's open of the binary (which the
agent judges as an exec by the loader, denied) comes from the tid the agent just allowed an
exec of the same file for. Found by a red-team review of a shortcut that answered a thread's
next open of a file natively after Python allowed its exec: under it the loader ran the denied
binary in about one race of six and nothing was journaled. The agent must answer each such
open on its own: the loader never runs the binary, and the refusals are journaled.

One agent; its rule names only a binary this test created.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.policy.mechanisms import host_capabilities
from tests.agentproc import agent_in, rule_verdicts

pytestmark = pytest.mark.kernel

LOADER = "/lib64/ld-linux-x86-64.so.2"
ATTEMPTS = 150

#: race X DELAY_US Y [args...]: the leader execs X; a second thread waits DELAY_US, then execs
#: Y args (de_thread: the leader, waiting in X's permission event, is killed and the second
#: thread takes its tid).
RACE_C = textwrap.dedent(
    """\
    #define _GNU_SOURCE
    #include <pthread.h>
    #include <stdlib.h>
    #include <unistd.h>
    static char **yargv;
    static int delay;
    static void *second(void *unused)
    {
        (void)unused;
        usleep(delay);
        execv(yargv[0], yargv);
        _exit(99);
    }
    int main(int argc, char **argv)
    {
        if (argc < 4)
            return 2;
        delay = atoi(argv[2]);
        yargv = argv + 3;
        pthread_t t;
        pthread_create(&t, NULL, second, NULL);
        char *xargv[] = {argv[1], NULL};
        execv(argv[1], xargv);
        pthread_join(t, NULL);
        return 3;
    }
    """
)

POLICY = """
name = "dethread"
description = "the binary runs only from the race program"
mode = "enforce"

[[rules]]
id = "x-only-from-race"
description = "X, executed only by the race program (never by the loader)"
operation = "exec"
targets.paths = ["{x}"]
action = "deny"
fallback = "kill"

[rules.subjects.except]
exe = ["{race}"]
"""


def build_race(root: Path) -> Path:
    """``RACE_C`` compiled in ``root``."""
    (root / "race.c").write_text(RACE_C)
    race = root / "race"
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(race), str(root / "race.c")], check=True)
    return race


@pytest.fixture(scope="module")
def work() -> Iterator[tuple[Path, Path, Path]]:
    if host_capabilities().lsm:
        pytest.skip("BPF-LSM loads here: exec rules are not enforced by fanotify")
    root = Path(tempfile.mkdtemp(prefix="sealtrail-dethread-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    x = root / "X"
    shutil.copy2("/usr/bin/touch", x)
    race = build_race(root)
    try:
        with agent_in(root, POLICY.format(x=x, race=race), "sealtrail-dethread"):
            yield root, x, race
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_thread_that_takes_the_tid_of_an_allowed_exec_cannot_load_the_binary(
    work: tuple[Path, Path, Path],
) -> None:
    root, x, race = work
    direct = root / "w-direct"
    r = subprocess.run([LOADER, str(x), str(direct)], capture_output=True, text=True)
    assert r.returncode != 0 and not direct.exists(), r  # the control: ld.so X is refused
    ran = []
    for i in range(ATTEMPTS):
        witness = root / f"w-{i}"
        delay = (i * 37) % 1500  # µs: before, during and after the agent's decision
        subprocess.run([str(race), str(x), str(delay), LOADER, str(x), str(witness)],
                       capture_output=True, timeout=30)  # fmt: skip
        if witness.exists():
            ran.append((i, delay))
    assert ran == [], f"the loader ran the denied binary in {len(ran)} of {ATTEMPTS}: {ran[:10]}"
    verdicts = rule_verdicts(root / "journal", "x-only-from-race")
    # the race reached the loader (not vacuous): the control and some attempts were refused
    assert len(verdicts) >= 2, json.dumps(verdicts)[:2000]


#: A 32-bit program without libc: after SLEEP_MS, open(TARGET) by int 0x80; exit 0 if opened.
Y32_C = textwrap.dedent(
    """\
    static int sc3(int nr, int a, int b, int c)
    {
        int r;
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
        return r;
    }
    void _start(void)
    {
        struct { int s, ns; } ts = {0, SLEEP_MS * 1000000};
        sc3(162, (int)&ts, 0, 0); /* nanosleep */
        int fd = sc3(5, (int)TARGET, 0, 0); /* open, O_RDONLY */
        sc3(1, fd >= 0 ? 0 : 1, 0, 0); /* exit */
        for (;;)
            ;
    }
    """
)

IA32_POLICY = """
name = "dethread-ia32"
description = "the binary runs only from the race program and the 32-bit one; nothing opens secret/"
mode = "enforce"

[[rules]]
id = "x-exec"
description = "X, marked for exec (allowed to the race program and the 32-bit one)"
operation = "exec"
targets.paths = ["{x}"]
action = "deny"
fallback = "kill"

[rules.subjects.except]
exe = ["{race}", "{y}"]

[[rules]]
id = "secret-open"
description = "nothing opens below secret/ (a hard link to X is there)"
operation = "open"
targets.paths = ["{secret}/"]
action = "deny"
fallback = "audit"
"""


def test_a_32_bit_program_that_takes_the_tid_cannot_open_the_binary_by_a_denied_name() -> None:
    """The same race with a 32-bit program as the second thread's exec: an exec into a 32-bit
    program returns as a compat task, whose syscall exit no syscall tracepoint sees, and it
    then opens the allowed binary through a hard link an open rule denies. Found by a red-team
    review of a second version of that shortcut, which checked an in-execve mark kept by the
    probes (10 of 60 opened when the mark was cleared only at the syscall's exit; neither
    version is in the product). Every such open must be asked and refused."""
    if host_capabilities().lsm:
        pytest.skip("BPF-LSM loads here: exec rules are not enforced by fanotify")
    root = Path(tempfile.mkdtemp(prefix="sealtrail-dethread32-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    x = root / "X"
    shutil.copy2("/usr/bin/false", x)  # exits 1: the race's 0 can only be the 32-bit open's
    secret = root / "secret"
    secret.mkdir()
    os.link(x, secret / "X2")
    race, y = build_race(root), root / "y32"
    (root / "y32.c").write_text(Y32_C)
    subprocess.run(["gcc", "-m32", "-O1", "-nostdlib", "-static", "-DSLEEP_MS=20",
                    f'-DTARGET="{secret / "X2"}"', "-o", str(y), str(root / "y32.c")],
                   check=True)  # fmt: skip
    policy = IA32_POLICY.format(x=x, race=race, y=y, secret=secret)
    try:
        with agent_in(root, policy, "sealtrail-dethread32") as (journal, _):
            assert subprocess.run([str(y)]).returncode == 1, "the control: its open is refused"
            opened = [
                delay for delay in ((i * 53) % 2000 for i in range(60))
                if subprocess.run([str(race), str(x), str(delay), str(y)], capture_output=True,
                                  timeout=30).returncode == 0
            ]  # fmt: skip
            assert opened == [], f"opened the denied name in {len(opened)} of 60: {opened[:10]}"
            refused = rule_verdicts(journal, "secret-open")
            assert len(refused) >= 2, "the control and some races reached the open, refused"
    finally:
        shutil.rmtree(root, ignore_errors=True)
