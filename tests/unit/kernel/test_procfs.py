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


def test_parse_status_stops_at_the_last_field_asked_for() -> None:
    text = "Name:\tcat\nTgid:\t7\nPPid:\t1\nUid:\t0\t0\t0\t0\nGid:\t5\t5\t5\t5\nVmRSS:\t1 kB\n"
    assert procfs.parse_status(text, "Gid") == {
        "Name": "cat", "Tgid": "7", "PPid": "1", "Uid": "0\t0\t0\t0", "Gid": "5\t5\t5\t5"
    }  # fmt: skip
    assert procfs.parse_status(text)["VmRSS"] == "1 kB"
    assert procfs.parse_status(text, "Nothing")["VmRSS"] == "1 kB"  # no such field: all


# What a process controls in /proc text: its name (status's first line, 15 bytes, where the
# kernel escapes only "\n" and "\\"), its cgroup's name (a delegated subtree), a mount point
# (a FUSE or user-namespace mount). None of them may forge a line.
FORGING_BREAKS = ["\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("brk", FORGING_BREAKS)
def test_a_name_cannot_forge_status_fields(brk: str) -> None:
    forged = f"Name:\t{brk}Uid:\t0{brk}Gid:\t0{brk}Tgid:\t1\n"
    fields = procfs.parse_status(forged + STATUS.split("\n", 1)[1], "Gid")
    assert (procfs.first_int(fields, "Uid"), procfs.first_int(fields, "Gid")) == (1000, 100)
    assert procfs.first_int(fields, "Tgid") == 4321


def test_a_field_seen_twice_keeps_the_kernels_first_value() -> None:
    assert procfs.first_int(procfs.parse_status(STATUS + "Uid:\t0\n"), "Uid") == 1000


@pytest.mark.parametrize("brk", FORGING_BREAKS)
def test_a_cgroup_name_cannot_forge_the_unified_line(brk: str) -> None:
    text = f"0::/user.slice/x{brk}0::/system.slice/ssh.service\n"
    assert procfs.parse_cgroup(text) == f"/user.slice/x{brk}0::/system.slice/ssh.service"


@pytest.mark.parametrize("brk", [*FORGING_BREAKS, "\x1f"])
def test_a_mount_point_cannot_forge_a_mount_or_lose_its_name(brk: str) -> None:
    r"""The kernel escapes space, tab, newline and backslash in a mount point (\040 ...), and
    nothing else: a line break or a blank of another kind stays part of the name."""
    point = f"/home/u/m{brk}99\\0401\\0400:99{brk}/{brk}/etc"
    text = f"36 1 8:1 / {point} rw - fuse.x /dev/fuse rw\n37 1 8:2 / /data rw - ext4 /dev/sdb rw\n"
    mounts = procfs.parse_mounts(text)
    name = f"/home/u/m{brk}99 1 0:99{brk}/{brk}/etc"
    assert [(m.point, m.fstype) for m in mounts] == [(name, "fuse.x"), ("/data", "ext4")]
