"""The dynamic loader's target, read from its command line (agent/events/loader.py)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.events.loader import (
    is_dynamic_loader,
    is_loader_image,
    is_loader_process,
    loader_target,
)


@pytest.mark.parametrize(
    "exe",
    ["/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1",
     "/lib/ld-linux.so.2", "/lib64/ld64.so.2", "/lib/ld-musl-x86_64.so.1", "/usr/bin/ld.so"],
)  # fmt: skip
def test_loaders_by_name(exe: str) -> None:
    assert is_dynamic_loader(exe)


@pytest.mark.parametrize("exe", ["/usr/bin/ld", "/usr/bin/ldd", "/usr/lib/libld-linux.so.2.txt"])
def test_not_loaders(exe: str) -> None:
    assert not is_dynamic_loader(exe)


@pytest.mark.parametrize(
    ("argv", "target"),
    [
        (("ld.so", "/opt/x/bin"), "/opt/x/bin"),
        (("ld.so", "bin/tool", "-v"), "/home/u/bin/tool"),  # joined to the kernel's cwd
        (("ld.so", "../x/./tool"), "/home/x/tool"),
        (("ld.so", "--library-path", "/l", "--preload", "p.so", "/opt/t"), "/opt/t"),
        (("ld.so", "--inhibit-cache", "--argv0", "name", "/opt/t", "a"), "/opt/t"),
        (("ld.so", "--list", "/opt/t"), "/opt/t"),
        (("ld.so", "tool"), "tool"),  # no '/': the loader searches the library path
        (("ld.so",), None),
        (("ld.so", "--help"), None),
        (("ld.so", "--library-path"), None),
    ],
)
def test_target(argv: tuple[str, ...], target: str | None) -> None:
    assert loader_target(argv, "/home/u") == target


def test_a_loader_is_recognised_by_its_elf_shape_under_any_name(tmp_path: Path) -> None:
    renamed = tmp_path / "myld"
    shutil.copy("/lib64/ld-linux-x86-64.so.2", renamed)
    assert is_loader_image(str(renamed))  # a shared object without an interpreter of its own
    assert not is_loader_image("/usr/bin/true")  # a program: it has PT_INTERP
    assert not is_loader_image("/usr/lib/x86_64-linux-gnu/libc.so.6")  # libc names one too
    (tmp_path / "text").write_text("#!/bin/sh\n")
    assert not is_loader_image(str(tmp_path / "text"))
    truncated = tmp_path / "short"
    truncated.write_bytes(renamed.read_bytes()[:40])
    assert not is_loader_image(str(truncated))


def test_a_running_loader_is_recognised_from_its_memory_not_its_file() -> None:
    via_loader = subprocess.Popen(["/lib64/ld-linux-x86-64.so.2", "/usr/bin/sleep", "5"])
    plain = subprocess.Popen(["/usr/bin/sleep", "5"])
    try:
        time.sleep(0.3)
        assert is_loader_process(via_loader.pid)
        assert not is_loader_process(plain.pid)
    finally:
        for p in (via_loader, plain):
            p.kill()
            p.wait()
