"""fanotify mark planning: which kernel objects to mark for the rules fanotify enforces.

Pure: the filesystem is seen through :class:`FsView` (``OsView`` in the agent, a dict in the unit
tests), and the result is a :class:`MarkPlan` keyed by the *kernel object* a mark is put on
(device + inode, or a whole filesystem), never by the rule path that asked for it. Two rules
that need the same directory share one mark whose mask is the union of theirs; dropping one
rule leaves the other's bits in place (a mark removed for one rule used to remove it for every
rule sharing the object).

What each rule shape needs (fanotify directory marks see direct children only):

- exact path ``/a/b`` (open): the file's inode (``FAN_OPEN_PERM``), so every name of it (hard
  links, bind mounts) asks; its (device, inode) is an *identity target*: an open of that inode
  under any name is judged as an open of ``/a/b``. Only that inode: a parent directory mark
  would make every open in ``/a`` wait for the agent (``/etc/ld.so.cache`` on every exec). A
  file that does not exist yet is covered by its parent directory with ``FAN_EVENT_ON_CHILD``
  until it does; a file put in its place later is a new inode, planned when the parent changes.
- exact path (exec): the same with ``FAN_OPEN_EXEC_PERM``, plus ``FAN_OPEN_PERM`` on the inode
  so the dynamic loader opening it (``ld.so /a/b`` maps the program instead of exec'ing it) is
  judged as an exec.
- ``/a/b*`` (string prefix): the parent ``/a`` with ``FAN_EVENT_ON_CHILD``, and every existing
  directory whose path starts with ``/a/b`` together with its whole subtree.
- ``/a/b/`` (subtree): ``/a/b`` and every directory below it.
- no paths (every file): a filesystem mark on every mounted filesystem that holds files.

A directory on a filesystem that refuses permission events (procfs: ``fanotify_mark`` fails
with EINVAL, ``FS_DISALLOW_NOTIFY_PERM``; a chroot's or container's ``/proc`` below ``/tmp/``)
is not marked and not descended into: it is listed in :attr:`MarkPlan.unmarkable` and
``policy check --host`` names the gap (``mechanisms.fanotify_gaps``). One such mount must not
keep a policy from loading.

Directories that appear later (``mkdir``, a rename, a mount) are not marked by this plan: the
enforcer watches :attr:`MarkPlan.watch` and plans again when one changes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from agent.enforce.mounts import mounted_filesystems, relative_under
from agent.kernel.fanotify import FAN_EVENT_ON_CHILD, FAN_OPEN_EXEC_PERM, FAN_OPEN_PERM
from agent.kernel.procfs import read_mounts

#: Marks one plan may hold; a tree with more directories is marked up to here and reported.
MAX_MARKS = 16384


@dataclass(frozen=True, order=True)
class MarkKey:
    """The kernel object a mark is on: an inode (``ino`` > 0) or a whole filesystem (0)."""

    dev: int  # st_dev as stat(2) reports it
    ino: int

    @property
    def filesystem(self) -> bool:
        return self.ino == 0


@dataclass(frozen=True)
class Stat:
    dev: int
    ino: int
    is_dir: bool  # after following symlinks
    is_link: bool = False  # the path itself is a symlink
    #: on a filesystem that refuses fanotify permission events (procfs)
    unmarkable: bool = False


#: What ``OsView.stat`` says of a path longer than PATH_MAX: not marked, not descended into,
#: listed in :attr:`MarkPlan.unmarkable` (``too_long``).
TOO_LONG = Stat(0, 0, is_dir=True, unmarkable=True)


def too_long(path: str) -> bool:
    """Whether ``path`` is one the agent cannot mark by name (PATH_MAX, with its NUL)."""
    return len(os.fsencode(path)) >= os.pathconf("/", "PC_PATH_MAX")


class FsView(Protocol):
    def stat(self, path: str) -> Stat | None:
        """``stat(2)`` following symlinks (``is_link`` says whether ``path`` is one), or None
        if the path does not resolve."""

    def listdir(self, path: str) -> list[str]:
        """Entry names of a directory ([] if it cannot be read)."""

    def filesystems(self) -> list[str]:
        """Mount points of the mounted filesystems that hold files."""

    def overlays(self) -> list[tuple[str, tuple[str, ...]]]:
        """Overlay mounts: (mount point, its layers)."""


@dataclass(frozen=True)
class MarkRule:
    """The part of a fanotify-enforced rule that decides its marks."""

    ref: tuple[str, str]  # (policy name, rule id)
    operation: str  # "exec" | "open"
    paths: tuple[str, ...] | None  # None: every file


@dataclass
class MarkPlan:
    marks: dict[MarkKey, int] = field(default_factory=dict)  # object -> mask, union over rules
    places: dict[MarkKey, str] = field(default_factory=dict)  # object -> a path naming it
    refs: dict[MarkKey, set[tuple[str, str]]] = field(default_factory=dict)  # who needs it
    #: (dev, ino) of a file an exact rule names -> (operation, the path the rule names)
    identities: dict[tuple[int, int, str], str] = field(default_factory=dict)
    #: directories whose new entries change the plan -> whether new files matter there too
    #: (the parent of an exact path: a file created under that name), or only directories
    watch: dict[str, bool] = field(default_factory=dict)
    truncated: bool = False
    #: places a rule needs marked that are on a filesystem refusing permission events -> the
    #: rules that needed them (not marked: what happens there is judged after the fact)
    unmarkable: dict[str, set[tuple[str, str]]] = field(default_factory=dict)

    def add(self, key: MarkKey, mask: int, place: str, ref: tuple[str, str]) -> bool:
        if key not in self.marks and len(self.marks) >= MAX_MARKS:
            self.truncated = True
            return False
        self.marks[key] = self.marks.get(key, 0) | mask
        self.places.setdefault(key, place)
        self.refs.setdefault(key, set()).add(ref)
        return True


def plan_marks(rules: Iterable[MarkRule], fs: FsView) -> MarkPlan:
    out = MarkPlan()
    rules = list(rules)
    _plan_overlays(out, fs, rules)
    for rule in rules:
        perm = FAN_OPEN_EXEC_PERM if rule.operation == "exec" else FAN_OPEN_PERM
        if rule.paths is None:
            for mount in fs.filesystems():
                st = fs.stat(mount)
                if st is not None:
                    out.add(MarkKey(st.dev, 0), perm, mount, rule.ref)
            continue
        for path in rule.paths:
            # a directory on the way renamed, replaced or mounted over changes what the path
            # names: watch every existing ancestor for directory changes
            ancestor = os.path.dirname(path.rstrip("*").rstrip("/")) or "/"
            while True:
                if _real_dir(fs, ancestor):
                    _watch(out, ancestor, False)
                if ancestor == "/":
                    break
                ancestor = os.path.dirname(ancestor) or "/"
            if path.endswith("*"):
                _plan_prefix(out, fs, rule, perm, path[:-1])
            elif path.endswith("/"):
                _plan_tree(out, fs, rule, perm, path.rstrip("/") or "/")
            else:
                _plan_exact(out, fs, rule, perm, path)
    return out


def _mark_dir(
    out: MarkPlan, fs: FsView, rule: MarkRule, perm: int, path: str, files: bool = False
) -> Stat | None:
    st = fs.stat(path)
    if st is None or not st.is_dir:
        return None
    if st.unmarkable:
        out.unmarkable.setdefault(path, set()).add(rule.ref)
        return st
    out.add(MarkKey(st.dev, st.ino), perm | FAN_EVENT_ON_CHILD, path, rule.ref)
    if not st.is_link:
        _watch(out, path, files)
    return st


def _watch(out: MarkPlan, path: str, files: bool) -> None:
    out.watch[path] = out.watch.get(path, False) or files


def _real_dir(fs: FsView, path: str) -> bool:
    """A directory that is not a symlink (``/bin`` on merged-/usr systems is one: what it
    names is watched where it really is, and inotify refuses a watch through a link)."""
    st = fs.stat(path)
    return st is not None and st.is_dir and not st.is_link


def _existing_ancestor(fs: FsView, path: str) -> str:
    """``path`` or the nearest ancestor of it that exists (what can be watched for it)."""
    while path != "/" and not _real_dir(fs, path):
        path = os.path.dirname(path) or "/"
    return path


def _plan_exact(out: MarkPlan, fs: FsView, rule: MarkRule, perm: int, path: str) -> None:
    parent = os.path.dirname(path) or "/"
    st = fs.stat(path)
    if st is not None and not st.is_dir and st.unmarkable:
        out.unmarkable.setdefault(path, set()).add(rule.ref)
        return
    if st is not None and not st.is_dir:
        mask = perm | (FAN_OPEN_PERM if rule.operation == "exec" else 0)
        out.add(MarkKey(st.dev, st.ino), mask, path, rule.ref)
        out.identities.setdefault((st.dev, st.ino, rule.operation), path)
        # a file put in its place later is a new inode: planned again when the parent changes
        if _real_dir(fs, parent):
            _watch(out, parent, True)
        return
    # not there yet: every child of the parent asks until it exists (then only the file)
    if _mark_dir(out, fs, rule, perm, parent, files=True) is None:
        _watch(out, _existing_ancestor(fs, parent), False)


def _plan_tree(out: MarkPlan, fs: FsView, rule: MarkRule, perm: int, root: str) -> None:
    if fs.stat(root) is None:
        _watch(out, _existing_ancestor(fs, os.path.dirname(root) or "/"), False)
        return
    for directory in _walk_dirs(fs, root):
        if _mark_dir(out, fs, rule, perm, directory) is None and out.truncated:
            return


def _plan_prefix(out: MarkPlan, fs: FsView, rule: MarkRule, perm: int, prefix: str) -> None:
    parent, stem = os.path.split(prefix)
    parent = parent or "/"
    if _mark_dir(out, fs, rule, perm, parent) is None:
        _watch(out, _existing_ancestor(fs, parent), False)
        return
    for name in fs.listdir(parent):
        if name.startswith(stem):
            child = os.path.join(parent, name)
            st = fs.stat(child)
            if st is not None and st.is_dir:
                _plan_tree(out, fs, rule, perm, child)


def _plan_overlays(out: MarkPlan, fs: FsView, rules: list[MarkRule]) -> None:
    """An overlay whose layer holds a tree or prefix rule's files shows them on another
    filesystem, whose directories the rule's marks are not on: mark the overlay's directories
    that show them (the enforcer judges such a path by its layers' names, ``mounts``)."""
    for point, layers in fs.overlays():
        for rule in rules:
            perm = FAN_OPEN_EXEC_PERM if rule.operation == "exec" else FAN_OPEN_PERM
            for path in rule.paths or ():
                if not path.endswith(("*", "/")):
                    continue  # exact files: their inode marks fire through the overlay too
                base = path.rstrip("*").rstrip("/") or "/"
                for layer in layers:
                    if _in_scope(layer, path):
                        _plan_tree(out, fs, rule, perm, point)  # all of the overlay is inside
                    elif (rest := relative_under(base, layer)) is not None:
                        shown = os.path.join(point, rest) if rest else point
                        if path.endswith("*"):
                            _plan_prefix(out, fs, rule, perm, shown)
                        else:
                            _plan_tree(out, fs, rule, perm, shown)


def _walk_dirs(fs: FsView, root: str) -> Iterator[str]:
    """``root`` and every directory below it, depth first; symlinks are not followed (a link
    to a directory outside the tree is another path)."""
    stack = [root]
    seen: set[tuple[int, int]] = set()
    while stack:
        directory = stack.pop()
        st = fs.stat(directory)
        if st is None or not st.is_dir or (st.dev, st.ino) in seen:
            continue
        if st is not TOO_LONG:  # no identity: each such path is listed on its own
            seen.add((st.dev, st.ino))
        yield directory
        if st.unmarkable:
            continue  # not marked (_mark_dir lists it), and nothing below it can be
        for name in sorted(fs.listdir(directory), reverse=True):
            child = os.path.join(directory, name)
            sub = fs.stat(child)
            if sub is not None and sub.is_dir and not sub.is_link:
                stack.append(child)


#: filesystem types whose ``fs_flags`` have ``FS_DISALLOW_NOTIFY_PERM``: fanotify_mark with a
#: permission event fails with EINVAL there (measured on 6.18 for proc, sysfs, cgroup2, bpf,
#: tracefs, devtmpfs, devpts and tmpfs: only proc refuses; Linux sets the flag on proc only)
NO_PERMISSION_EVENTS = frozenset({"proc"})


class OsView:
    """The real filesystem (the agent's mount namespace)."""

    def __init__(self) -> None:
        self._fstypes: dict[int, str] = {}  # st_dev -> type, read from mountinfo when needed

    def stat(self, path: str) -> Stat | None:
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                # past PATH_MAX (made by descending with directory fds): marks are placed by
                # path name, so it is listed as not marked (policy check --host names the gap)
                return TOO_LONG
            return None
        except ValueError:
            return None
        return Stat(st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode), os.path.islink(path),
                    self._fstype(st.st_dev) in NO_PERMISSION_EVENTS)  # fmt: skip

    def _fstype(self, dev: int) -> str:
        """The type of the filesystem on ``dev``; mountinfo is read again for a device not
        in the last reading (mounted since)."""
        if dev not in self._fstypes:
            self._fstypes = {}
            for m in read_mounts():
                major, _, minor = m.dev.partition(":")
                with contextlib.suppress(ValueError):
                    self._fstypes[os.makedev(int(major), int(minor))] = m.fstype
        return self._fstypes.get(dev, "")

    def listdir(self, path: str) -> list[str]:
        try:
            return os.listdir(path)
        except (OSError, ValueError):
            return []

    def filesystems(self) -> list[str]:
        return mounted_filesystems()

    def overlays(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(m.point, m.lower) for m in read_mounts() if m.lower]


def extend_plan(
    plan: MarkPlan,
    rules: Iterable[MarkRule],
    fs: FsView,
    new_dirs: Iterable[tuple[str, str, bool]],
) -> MarkPlan | None:
    """``plan`` plus the directories that appeared, (parent, name) each: a directory inside a
    tree or prefix rule gets that rule's marks with its subtree, one on the way to a rule path
    that does not exist yet needs the whole plan made again (None), any other is not ours.
    Cheap where planning again is not: a busy ``/tmp`` under ``/tmp/`` makes many directories."""
    out = MarkPlan(
        dict(plan.marks), dict(plan.places), {k: set(v) for k, v in plan.refs.items()},
        dict(plan.identities), dict(plan.watch), plan.truncated,
        {k: set(v) for k, v in plan.unmarkable.items()},
    )  # fmt: skip
    rules = list(rules)
    changes = list(new_dirs)
    gone = {os.path.join(parent, name) for parent, name, went in changes if went}
    if gone:  # their marks went with them (the kernel drops them): forget what lay below
        if any(
            _within(p.rstrip("*").rstrip("/") or "/", gone) for r in rules for p in r.paths or ()
        ):
            return None  # on the way to a rule path: plan it all again
        for key in [k for k, p in out.places.items() if _within(p, gone)]:
            del out.marks[key], out.places[key], out.refs[key]
        for path in [p for p in out.watch if _within(p, gone)]:
            del out.watch[path]
        for path in [p for p in out.unmarkable if _within(p, gone)]:
            del out.unmarkable[path]
    for parent, name, went in changes:
        new = os.path.join(parent, name)
        if went:
            continue
        inside = [r for r in rules if any(_in_scope(new, p) for p in r.paths or ())]
        for rule in inside:
            perm = FAN_OPEN_EXEC_PERM if rule.operation == "exec" else FAN_OPEN_PERM
            _plan_tree(out, fs, rule, perm, new)
        if not inside and any(
            (p.rstrip("*").rstrip("/") or "/").startswith(new + "/")
            for r in rules
            for p in r.paths or ()
        ):
            return None
    return out


def _within(path: str, tops: set[str]) -> bool:
    """Is ``path`` one of ``tops`` or below one (one set lookup per path component)?"""
    while True:
        if path in tops:
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


def _in_scope(directory: str, path: str) -> bool:
    """Is ``directory`` (and so everything below it) matched by the rule path ``path``?"""
    if path.endswith("*"):
        return directory.startswith(path[:-1])
    if path.endswith("/"):
        root = path.rstrip("/")
        return directory == root or directory.startswith(root + "/")
    return False
