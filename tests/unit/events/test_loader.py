"""The dynamic loader's target, read from its command line (agent/events/loader.py)."""

from __future__ import annotations

import pytest

from agent.events.loader import is_dynamic_loader, loader_target


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
