"""Parsers of the kernel's text files (agent.kernel.procfs): mount tables, status, securityfs."""

from __future__ import annotations

import pytest

from agent.kernel import procfs
from agent.kernel.procfs import Mount

# a hybrid host's mountinfo: cgroup v1 at /sys/fs/cgroup, cgroup2 below it; tracefs twice
HYBRID = """\
20 1 0:19 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
21 20 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
22 21 0:21 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
23 21 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
24 20 0:12 / /sys/kernel/debug/tracing rw,relatime - tracefs tracefs rw
25 20 0:12 / /sys/kernel/tracing rw,relatime - tracefs tracefs rw
"""


def test_parse_mounts_fields_and_escapes() -> None:
    mounts = procfs.parse_mounts(
        "36 1 8:1 / /mnt/my\\040disk rw,relatime - ext4 /dev/sda1 rw\nbroken\n"
    )
    assert mounts == [Mount("8:1", "/", "/mnt/my disk", "ext4")]


def test_overlay_layers_are_its_upper_then_lower_directories() -> None:
    line = "40 1 0:50 / /merged rw - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/up,workdir=/w\n"
    assert procfs.parse_mounts(line)[0].lower == ("/up", "/l1", "/l2")


def test_cgroup2_found_where_proc_mounts_says() -> None:
    assert procfs.find_mount(procfs.parse_mounts(HYBRID), "cgroup2") == "/sys/fs/cgroup/unified"
    unified = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert procfs.find_mount(procfs.parse_mounts(unified), "cgroup2") == "/sys/fs/cgroup"
    proc = "31 1 0:5 / /proc rw - proc proc rw\n"
    assert procfs.find_mount(procfs.parse_mounts(proc), "cgroup2") is None


def test_tracefs_prefers_the_canonical_mount() -> None:
    mounts = procfs.parse_mounts(HYBRID)
    assert (
        procfs.find_mount(mounts, "tracefs", prefer="/sys/kernel/tracing") == "/sys/kernel/tracing"
    )
    assert procfs.find_mount(mounts, "tracefs", prefer="/elsewhere") == "/sys/kernel/debug/tracing"


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("none [integrity] confidentiality\n", "integrity"),
        ("[none] integrity confidentiality\n", "none"),
        ("none integrity [confidentiality]", "confidentiality"),
        ("", "unknown"),
    ],
)
def test_parse_lockdown(text: str, mode: str) -> None:
    assert procfs.parse_lockdown(text) == mode


def test_parse_lsm_list() -> None:
    assert procfs.parse_lsm_list("lockdown,capability,landlock,yama,bpf") == (
        "lockdown",
        "capability",
        "landlock",
        "yama",
        "bpf",
    )
    assert procfs.parse_lsm_list("") == ()


STATUS = """\
Name:\tpython3
Umask:\t0022
Tgid:\t4321
PPid:\t1
Uid:\t1000\t1000\t1000\t1000
Gid:\t100\t100\t100\t100
CapEff:\t000001ffffffffff
"""


def test_status_fields_and_their_first_number() -> None:
    fields = procfs.parse_status(STATUS)
    assert fields["Name"] == "python3"
    assert (procfs.first_int(fields, "Tgid"), procfs.first_int(fields, "Uid")) == (4321, 1000)
    assert procfs.first_int(fields, "Gid") == 100
    assert procfs.first_int(fields, "NoSuchField", 7) == 7
    assert procfs.effective_capabilities(fields) == 0x1FFFFFFFFFF
    assert procfs.effective_capabilities({}) == 0


def test_cgroup_v2_path_is_the_unified_line() -> None:
    assert procfs.parse_cgroup("12:cpu:/old\n0::/system.slice/ssh.service\n") == (
        "/system.slice/ssh.service"
    )
    assert procfs.parse_cgroup("12:cpu:/old\n") is None


# ---- /proc/<tid>/syscall: an open's flags ----


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        ("257 0xffffff9c 0x7ffd12 0x241 0x1b6 0x0 0x0 0x7ffd00 0x7f0001\n", 0x241),  # openat
        ("2 0x7ffd12 0x0 0x0 0x0 0x0 0x0 0x7ffd00 0x7f0001\n", 0),  # open, O_RDONLY
        ("85 0x7ffd12 0x1a4 0x0 0x0 0x0 0x0 0x7ffd00 0x7f0001\n", 0o1101),  # creat
        ("304 0x3 0x7ffd12 0x80000 0x0 0x0 0x0 0x7ffd00 0x7f0001\n", 0x80000),  # by handle
        ("59 0x7ffd12 0x7ffd20 0x7ffd30 0x0 0x0 0x0 0x7ffd00 0x7f0001\n", 0),  # execve
        ("437 0xffffff9c 0x7ffd12 0x7ffd40 0x18 0x0 0x0 0x7ffd00 0x7f0001\n", None),  # openat2
        ("0 0x3 0x7ffd12 0x10 0x0 0x0 0x0 0x7ffd00 0x7f0001\n", None),  # read(2): no open
        ("running\n", None),
        ("-1 0x7ffd00 0x7f0001\n", None),  # not in a syscall
        ("257 0xffffff9c\n", None),  # cut short
        ("", None),
    ],
)
def test_open_flags_x86_64(text: str, flags: int | None) -> None:
    assert procfs.open_flags(text, "x86_64") == flags


def test_open_flags_other_architectures() -> None:
    line = "56 0xffffff9c 0x7ffd12 0x241 0x1b6 0x0 0x0 0x7ffd00 0x7f0001"
    assert procfs.open_flags(line, "aarch64") == 0x241  # openat is 56 there
    assert procfs.open_flags(line, "x86_64") is None  # 56 is clone here
    assert procfs.open_flags(line, "riscv64") is None  # no table: unknown, fail closed


def test_parse_status_stops_at_the_last_field_asked_for() -> None:
    text = "Name:\tcat\nTgid:\t7\nPPid:\t1\nUid:\t0\t0\t0\t0\nGid:\t5\t5\t5\t5\nVmRSS:\t1 kB\n"
    assert procfs.parse_status(text, "Gid") == {
        "Name": "cat", "Tgid": "7", "PPid": "1", "Uid": "0\t0\t0\t0", "Gid": "5\t5\t5\t5"
    }  # fmt: skip
    assert procfs.parse_status(text)["VmRSS"] == "1 kB"
    assert procfs.parse_status(text, "Nothing")["VmRSS"] == "1 kB"  # no such field: all


def test_in_exec_is_false_for_a_task_in_another_syscall_or_gone() -> None:
    import os

    assert procfs.in_exec(os.getpid()) is False  # this task is running: "running"
    assert procfs.in_exec(2**22 + 7) is False  # no such task
