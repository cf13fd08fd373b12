"""The dynamic loader run as a program, and the binary it will load.

``ld-linux-x86-64.so.2 /path/bin ARGS`` is, to the kernel, an exec of the loader only: the
loader then opens /path/bin and maps it executable itself, with no exec to report. The exec
event names that binary as ``loader_target``, read from the loader's own command line, which is
exactly what the loader acts on (the process has not run a single instruction when the kernel
reports the exec, so nothing can have rewritten it).

Limits (README "Event fields"): a loader is recognised by its file name (a copy renamed to
something else is not); the target is the path as passed, joined to the kernel's cwd (symlinks
are not resolved); a target without '/' is searched by the loader in the library path and
reported as given. On BPF-LSM hosts the mapping itself is judged (lsm/mmap_file), whatever the
loader is called.
"""

from __future__ import annotations

import posixpath
import re

_LOADER = re.compile(
    r"ld-linux[\w.-]*\.so(\.\d+)*|ld64\.so\.\d+|ld\.so(\.\d+)*|ld-musl-\w+\.so\.\d+"
)
# glibc rtld options (elf/rtld.c) that take the next argument as their value
_WITH_VALUE = frozenset(
    {"--library-path", "--preload", "--audit", "--argv0", "--inhibit-rpath",
     "--glibc-hwcaps-prefix", "--glibc-hwcaps-mask"}
)  # fmt: skip
_FLAGS = frozenset(
    {"--inhibit-cache", "--list", "--verify", "--list-tunables", "--list-diagnostics"}
)


def is_dynamic_loader(exe: str) -> bool:
    """Is ``exe`` (a resolved path) an ELF program interpreter, by its file name?"""
    return _LOADER.fullmatch(posixpath.basename(exe)) is not None


def loader_target(argv: tuple[str, ...], cwd: str) -> str | None:
    """The program a loader started with ``argv`` loads, or None if it names none."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in _WITH_VALUE:
            i += 2
        elif arg in _FLAGS:
            i += 1
        elif arg.startswith("--"):
            return None  # --help, --version, or an option this loader may not know
        else:
            break
    if i >= len(argv) or not argv[i]:
        return None
    target = argv[i]
    if "/" not in target or target.startswith("/"):
        return target
    return posixpath.normpath(posixpath.join(cwd, target))
