"""The kernel's text files, parsed: mount tables, task status, securityfs lists.

Each format is parsed here once, by pure functions over the text (unit-tested without a
host), with small readers beside them. ``sealtrail doctor`` finds cgroup2 and tracefs in the
mount table, the enforcer finds the acting process in ``/proc/<tid>``, the fanotify marks
find mount points and overlays.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# ---- /proc/<pid>/mountinfo ----


@dataclass(frozen=True)
class Mount:
    dev: str  # "major:minor" of the filesystem
    root: str  # the directory of that filesystem this mount shows at ``point``
    point: str
    fstype: str
    lower: tuple[str, ...] = ()  # overlay: its layers (upper first), as paths of its namespace


def read_exact(path: str) -> str:
    r"""A /proc file as text, exactly: bytes that are not UTF-8 kept (surrogateescape) and no
    newline translation. Text mode would turn a ``\r`` into a line break, and the kernel
    escapes only ``\n`` (and ``\\``) in what processes name themselves (the comm in status,
    mount points, cgroup names): a ``\r`` there must stay inside its line."""
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "surrogateescape")


def proc_lines(text: str) -> list[str]:
    r"""The lines of /proc text: split at ``\n`` only (``str.splitlines`` also splits at
    ``\r``, ``\v``, ``\f``, ``\x1c``-``\x1e``, U+0085, U+2028, U+2029, which a process can put
    in its name or a mount point to forge a line of its own)."""
    return text.split("\n")


#: Mounts of another namespace the agent reads at most (agent.enforce.mounts)
FOREIGN_MOUNTS_MAX = 2_000


def read_mounts(path: str = "/proc/self/mountinfo") -> list[Mount]:
    try:
        text = read_exact(path)
    except OSError:
        return []
    return parse_mounts(text)


def parse_mounts(text: str) -> list[Mount]:
    """The entries of mountinfo text (proc(5)), in order; malformed lines skipped."""
    out: list[Mount] = []
    for line in proc_lines(text):
        left, _, right = line.partition(" - ")
        # fields are separated by one space; str.split() would also split at "\v", "\f",
        # "\x1c"-"\x1f" and more, which the kernel leaves unescaped in a mount point
        fields, tail = left.split(" "), right.split(" ")
        if len(fields) < 5 or len(tail) < 3:
            continue
        layers: tuple[str, ...] = ()
        if tail[0] == "overlay":
            opts = dict(o.partition("=")[::2] for o in tail[2].split(","))
            layers = tuple(
                unescape_mount(p)
                for key in ("upperdir", "lowerdir")
                for p in opts.get(key, "").split(":")
                if p
            )
        out.append(
            Mount(fields[2], unescape_mount(fields[3]), unescape_mount(fields[4]), tail[0], layers)
        )
    return out


def unescape_mount(field_: str) -> str:
    """Mount points in /proc/*/mountinfo escape space, tab, newline and backslash as octal."""
    if "\\" not in field_:
        return field_
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and field_[i + 1 : i + 4].isdigit() and i + 3 < len(field_):
            out.append(chr(int(field_[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def find_mount(mounts: Iterable[Mount], fstype: str, prefer: str | None = None) -> str | None:
    """Mount point of the first ``fstype`` mount (``prefer`` wins if it is one of them)."""
    points = [m.point for m in mounts if m.fstype == fstype]
    if prefer in points:
        return prefer
    return points[0] if points else None


# ---- /proc/<pid>/status, exe, stat, cgroup ----


def parse_status(text: str, last: str | None = None) -> dict[str, str]:
    """``Name:\\tvalue`` lines of /proc/<pid>/status -> {name: value}; up to the field
    ``last`` only, if given (the fields come in a fixed order: Uid and Gid are the 9th and
    10th of about 60). The first line is the process's own name, which it sets: whatever it
    holds stays that line's value, and a field seen twice keeps its first (the kernel's)."""
    fields: dict[str, str] = {}
    for line in proc_lines(text):
        name, sep, value = line.partition(":")
        if sep and name not in fields:
            fields[name] = value.strip()
            if name == last:
                break
    return fields


def read_status(pid: int | str, last: str | None = None) -> dict[str, str]:
    """/proc/<pid>/status as ``parse_status`` reads it; OSError if the task is gone."""
    return parse_status(read_exact(f"/proc/{pid}/status"), last)


def first_int(fields: Mapping[str, str], name: str, default: int = -1) -> int:
    """The first number of a status field (``Uid:`` lists real, effective, saved, fs)."""
    words = fields.get(name, "").split()
    return int(words[0]) if words else default


def effective_capabilities(fields: Mapping[str, str]) -> int:
    """The ``CapEff`` bit set of a parsed status."""
    return int(fields.get("CapEff", "0"), 16)


def _stat_field(pid: int, index: int) -> int | None:
    """Field ``index`` (0: the state) after the parenthesised comm of /proc/<pid>/stat, as an
    int; None if the task is gone or the line is not as expected."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[index])
    except (OSError, ValueError, IndexError):
        return None


def ppid_of(pid: int) -> int:
    """The parent's tgid from /proc/<pid>/stat; 0 if unknown."""
    return _stat_field(pid, 1) or 0


def start_ticks(pid: int) -> int | None:
    """When the task started, in clock ticks since boot (/proc/<pid>/stat field 22); None if
    it is gone."""
    return _stat_field(pid, 19)


def stat_flags(pid: int) -> int | None:
    """The task's PF_* flags from /proc/<pid>/stat (field 9); None if it is gone."""
    return _stat_field(pid, 6)


def parse_cgroup(text: str) -> str | None:
    """The cgroup v2 path of a /proc/<pid>/cgroup text (its ``0::`` line)."""
    for line in proc_lines(text):
        if line.startswith("0::"):
            return line[3:]  # as it is: a cgroup name may end in blanks
    return None


def cgroup_of(pid: int | str) -> str | None:
    try:
        return parse_cgroup(read_exact(f"/proc/{pid}/cgroup"))
    except OSError:
        return None


# ---- securityfs ----


def parse_lockdown(text: str) -> str:
    """``none [integrity] confidentiality`` -> ``integrity`` (the bracketed mode)."""
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return "unknown"


def parse_lsm_list(text: str) -> tuple[str, ...]:
    """``lockdown,capability,bpf`` -> its names, in order."""
    return tuple(name for name in text.strip().split(",") if name)


def read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
