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

import os
import posixpath
import re
import struct

from agent.kernel import procfs

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


_ELF64 = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr
_PT_INTERP = 3
_ET_DYN = 3


def is_loader_image(path: str) -> bool:
    """Is the ELF file at ``path`` shaped like a dynamic loader (``_loader_shaped``)?"""
    try:
        with open(path, "rb") as f:
            return _loader_shaped(f.read(4096))
    except OSError:
        return False


def is_loader_process(pid: int) -> bool:
    """Is the program process ``pid`` runs shaped like a dynamic loader? Read from its memory
    (the first page of its executable's mapping), never by opening the file: the fanotify
    thread asks this, and an open of a file it marked would wait for itself."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        start = None
        # split at "\n" only: a file the process mapped may have a "\r" in its name
        for line in procfs.proc_lines(procfs.read_exact(f"/proc/{pid}/maps")):
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and int(fields[2], 16) == 0 and fields[5] == exe:
                start = int(fields[0].split("-")[0], 16)
                break
        if start is None:
            return False
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return _loader_shaped(os.pread(fd, 4096, start))
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return False


def _loader_shaped(image: bytes) -> bool:
    """A shared object with no program interpreter of its own: the loader under any name (a
    renamed copy, a hard link), and static-pie programs, which is what matters here: such a
    program can map another program without exec'ing it. Little-endian ELF64 only; the program
    headers must be in ``image`` (the first page, as the linkers put them)."""
    if len(image) < _ELF64.size or image[:5] != b"\x7fELF\x02" or image[5] != 1:
        return False
    fields = _ELF64.unpack_from(image)
    e_type, e_phoff, e_phentsize, e_phnum = fields[1], fields[5], fields[9], fields[10]
    end = e_phoff + e_phentsize * e_phnum
    if e_type != _ET_DYN or e_phentsize < 4 or end > len(image):
        return False
    types = (int.from_bytes(image[i : i + 4], "little") for i in range(e_phoff, end, e_phentsize))
    return _PT_INTERP not in types
