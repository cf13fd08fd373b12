"""Other names of one file: the same filesystem location seen through other mounts.

A bind mount (``mount --bind /etc/sudoers.d /tmp/x``), the same in a private mount namespace
(``unshare -m``, or ``unshare -rm`` by an ordinary user), or an overlay whose lower layer is a
rule's directory shows a rule's files under another path. fanotify still asks about them (the
marks are on the directory inodes, whichever mount reaches them), but the path it reports is
the other one. ``MountView.aliases`` maps that path back to the names the file has in the
agent's own mount namespace, so a rule is judged on the object, not on the mount used to reach
it. Read from ``/proc/<tid>/mountinfo`` of the asking thread (its namespace may not be ours);
the agent's own table is cached and dropped when the directory watcher sees the mounts change.

Another namespace's table is cached too (``_ForeignTables``), by namespace, and read again only
when the kernel flags that its mounts changed (POLLPRI on the open mountinfo file), at most
every half second per namespace and every tenth of a second in all: any user can make a
namespace of 20,000 bind mounts, and reading that for every permission event it causes held
every fanotify decision on the host for over a second each, and a mount loop beside it 0.8 s
(red team 2026-12-08). A table that may be older than its namespace's mounts is said to be:
the decision then judges the file as if in each tree and prefix a rule marks (fail closed). At
most ``FOREIGN_MOUNTS_MAX`` mounts of another namespace are read: a mount past that is not
known, so a file reached only through it is judged by the path that namespace shows (`policy
check --host` says so for open and exec rules).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import threading
import time
from typing import NamedTuple

from agent.kernel.procfs import FOREIGN_MOUNTS_MAX, Mount, parse_mounts, read_mounts

log = logging.getLogger(__name__)

#: Filesystems without files a policy could name (or whose files fanotify cannot mark).
PSEUDO_FILESYSTEMS = frozenset(
    {
        "proc", "sysfs", "cgroup", "cgroup2", "bpf", "tracefs", "debugfs", "securityfs",
        "devpts", "mqueue", "pstore", "configfs", "fusectl", "hugetlbfs", "binfmt_misc",
        "autofs", "efivarfs", "rpc_pipefs", "nsfs", "selinuxfs",
    }
)  # fmt: skip


def mounted_filesystems(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """One mount point per mounted filesystem that holds files (first mount of each device)."""
    seen: set[str] = set()
    out: list[str] = []
    for m in read_mounts(mountinfo):
        if m.fstype not in PSEUDO_FILESYSTEMS and m.dev not in seen:
            seen.add(m.dev)
            out.append(m.point)
    return out or ["/"]


def mount_point(dev: int) -> str | None:
    """A mount point of the filesystem with this st_dev."""
    wanted = _devname(dev)
    return next((m.point for m in read_mounts() if m.dev == wanted), None)


def relative_under(path: str, top: str) -> str | None:
    """``path`` relative to ``top`` ('' for itself), or None if it is not below it."""
    if top == "/":
        return path[1:] if path.startswith("/") else None
    if path == top:
        return ""
    return path[len(top) + 1 :] if path.startswith(top + "/") else None


#: Mount tables -> {mount point: the last mount on it}, for the tables in use (a table is
#: replaced, not changed, when the mounts change; the table is kept here so its id stays its).
_INDEXES: dict[int, tuple[list[Mount], dict[str, Mount]]] = {}


def _index(table: list[Mount]) -> dict[str, Mount]:
    known = _INDEXES.get(id(table))
    if known is not None and known[0] is table:
        return known[1]
    if len(_INDEXES) >= 32:  # the recent tables and a few foreign ones
        _INDEXES.clear()
    index = {m.point: m for m in table}  # in order: the last mount on a point wins
    _INDEXES[id(table)] = (table, index)
    return index


def _mount_of(path: str, table: list[Mount]) -> tuple[Mount, str] | None:
    """The mount ``path`` is on (the last one on the longest mount point) and the rest: the
    path and then each of its parent directories looked up among the mount points, so an
    event costs its depth in dictionary lookups, not one comparison per mount."""
    if not path.startswith("/"):
        return None
    index = _index(table)
    probe = path
    while True:
        m = index.get(probe)
        if m is not None:
            rest = relative_under(path, m.point)
            if rest is not None:
                return m, rest
        if probe == "/":
            return None
        probe = probe.rpartition("/")[0] or "/"


def _join(top: str, rest: str) -> str:
    return os.path.join(top, rest) if rest else top


def read_capped(fd: int, limit: int) -> tuple[str, bool]:
    """The mountinfo text at ``fd`` (from its start), at most ``limit`` lines; and whether
    lines were left out."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks, lines = [], 0
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
        lines += chunk.count(b"\n")
        if lines > limit:
            text = b"".join(chunks).split(b"\n")[:limit]
            return b"\n".join(text).decode(errors="surrogateescape") + "\n", True
    return b"".join(chunks).decode(errors="surrogateescape"), False


class _ForeignTables:
    """Other namespaces' mount tables, by namespace: each kept with its mountinfo open and read
    again only when the kernel flags a change (POLLPRI/POLLERR once the namespace's mounts
    changed after the last read), and then not more often than every ``REREAD_S``: a
    namespace whose mounts change faster (a mount loop: red team 2026-12-08, every decision
    on the host held 0.8 s) gets its last table, said to be stale, and the caller judges
    fail-closed; the 16 used last."""

    KEEP = 16
    REREAD_S = 0.5
    #: and no two reads of any namespaces' tables closer than this: many namespaces churning
    #: at once cost the decisions at most a read (FOREIGN_MOUNTS_MAX mounts) per interval
    ANY_READ_S = 0.1

    def __init__(self) -> None:
        # ns -> (its mountinfo fd, its table, when it was read, changed since: poll reports
        # a change once)
        self._tables: collections.OrderedDict[str, tuple[int, list[Mount], float, bool]] = (
            collections.OrderedDict()
        )
        self.capped: set[str] = set()  # namespaces whose tables were cut at FOREIGN_MOUNTS_MAX
        self._last_read = -1e9

    def table(self, ns: str, tid: int) -> tuple[list[Mount], bool]:
        """The namespace's table, and whether it may be older than its mounts."""
        held = self._tables.get(ns)
        if held is not None:
            fd, table, read_at, changed = held
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            changed = changed or bool(poller.poll(0))
            self._tables.move_to_end(ns)
            if not changed:
                return table, False
            now = time.monotonic()
            if now - read_at < self.REREAD_S or now - self._last_read < self.ANY_READ_S:
                self._tables[ns] = (fd, table, read_at, True)
                return table, True
            del self._tables[ns]
            os.close(fd)
        elif time.monotonic() - self._last_read < self.ANY_READ_S:
            return [], True  # not read yet, and reads are spent: judged fail-closed
        try:
            fd = os.open(f"/proc/{tid}/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return [], False
        # the namespace may have changed between the readlink and the open: key by the one open
        if _mount_ns(str(tid)) != ns:
            os.close(fd)
            return read_mounts(f"/proc/{tid}/mountinfo"), False
        self._last_read = time.monotonic()
        try:
            text, cut = read_capped(fd, FOREIGN_MOUNTS_MAX)
        except OSError:
            os.close(fd)
            return [], False
        if cut and ns not in self.capped:
            self.capped.add(ns)
            log.warning("mount namespace %s has more than %d mounts: the rest are not known "
                        "(files reached only through them are judged by the path shown)",
                        ns, FOREIGN_MOUNTS_MAX)  # fmt: skip
        table = parse_mounts(text)
        self._tables[ns] = (fd, table, time.monotonic(), False)
        while len(self._tables) > self.KEEP:
            _, (old, _, _, _) = self._tables.popitem(last=False)
            os.close(old)
        return table, False


class Aliases(NamedTuple):
    names: list[str]  # the file's other names in the agent's namespace
    stale: bool  # from another namespace's table that may be older than its mounts
    ours: bool  # the thread is in the agent's mount namespace


class MountView:
    #: How long a mount table that was replaced still names files for after-the-fact judging
    #: (a mount made, used and removed before the agent looked at the event).
    RECENT_S = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ours: list[Mount] | None = None
        self._recent: collections.deque[tuple[float, list[Mount]]] = collections.deque()
        self._ns = _mount_ns("self")
        # our own view of the table: the kernel flags it (POLLPRI) once the mounts change
        # after it was read, so a mount made an instant ago is never judged with an old table
        self._fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLPRI | select.POLLERR)
        self._foreign = _ForeignTables()

    def invalidate(self) -> None:
        """The mounts changed: read the table again when next needed (keeping this one a
        while for ``aliases(recent=True)``)."""
        with self._lock:
            if self._ours is not None:
                self._keep(self._ours)
            self._ours = None

    def snapshot(self) -> None:
        """Read the table now (a mount that is gone again soon is still known afterwards)."""
        self.invalidate()
        self._table()

    def _table(self) -> list[Mount]:
        with self._lock:
            changed = bool(self._poll.poll(0))
            if changed and self._ours is not None:
                self._keep(self._ours)
            if self._ours is None or changed:
                os.lseek(self._fd, 0, os.SEEK_SET)
                chunks = []
                while chunk := os.read(self._fd, 1 << 16):
                    chunks.append(chunk)
                self._ours = parse_mounts(b"".join(chunks).decode(errors="surrogateescape"))
            return self._ours

    def _keep(self, table: list[Mount]) -> None:
        if not self._recent or self._recent[-1][1] != table:
            self._recent.append((time.monotonic(), table))
            while len(self._recent) > 16:  # a mount storm: the latest ones
                self._recent.popleft()

    def _recent_tables(self) -> list[list[Mount]]:
        with self._lock:
            now = time.monotonic()
            while self._recent and now - self._recent[0][0] > self.RECENT_S:
                self._recent.popleft()
            return [table for _, table in self._recent]

    def aliases(
        self, path: str, tid: int | None, dev: int | None = None, *, recent: bool = False
    ) -> list[str]:
        """The other names, in the agent's mount namespace, of the file thread ``tid`` reached
        at ``path`` (a path as that thread's namespace shows it); [] if it has none. ``dev``
        (the file's st_dev, when known) catches a cached table older than a new mount;
        ``recent`` also asks the tables of the last seconds (judging after the fact)."""
        return self.aliases_checked(path, tid, dev, recent=recent).names

    def aliases_checked(
        self, path: str, tid: int | None, dev: int | None = None, *, recent: bool = False
    ) -> Aliases:
        """``aliases``, whether they came from another namespace's table that may be older
        than its mounts (changing faster than it is read again: judge fail-closed), and
        whether ``tid`` is in the agent's own namespace (its names are the agent's)."""
        ours = self._table()
        ns = _mount_ns(str(tid)) if tid is not None else None
        foreign = tid is not None and ns not in (self._ns, None)
        old = False
        if foreign:
            assert ns is not None and tid is not None
            with self._lock:
                table, old = self._foreign.table(ns, tid)
        else:
            table = ours
        found = _mount_of(path, table)
        stale = found is not None and dev is not None and found[0].dev != _devname(dev)
        if stale and not foreign:  # mounted since the table was read: read it again
            self.invalidate()
            table = ours = self._table()
        out = _aliases(path, table, ours, foreign)
        if recent and not out and not foreign:
            for earlier in self._recent_tables():
                if earlier != ours:
                    out += _aliases(path, earlier, earlier, False)
        names = [p for p in dict.fromkeys(out) if p != path]
        return Aliases(names, old, ns is not None and ns == self._ns)


def _aliases(path: str, table: list[Mount], ours: list[Mount], foreign: bool) -> list[str]:
    found = _mount_of(path, table)
    if found is None:
        return []
    mount, rest = found
    if not foreign and mount.root == "/" and not mount.lower:
        return []  # the filesystem's own tree, in our namespace: the path is the name
    out: list[str] = []
    if mount.lower:  # an overlay: the file as it is in each layer
        out += [_join(layer, rest) for layer in mount.lower]
    where = _join(mount.root, rest)  # the location inside its filesystem
    for m in ours:
        if m.dev != mount.dev or m.lower:
            continue
        inside = relative_under(where, m.root)
        if inside is not None:
            out.append(_join(m.point, inside))
    return out


def _devname(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


def _mount_ns(pid: str) -> str | None:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/{pid}/ns/mnt")
    return None
