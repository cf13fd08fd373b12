"""Mark planning (pure): marks are per kernel object, shared by the rules that need them."""

from __future__ import annotations

import os
from pathlib import Path

from agent.enforce.fanotify import parse_fdinfo
from agent.enforce.marks import (
    FAN_EVENT_ON_CHILD,
    FAN_OPEN_EXEC_PERM,
    FAN_OPEN_PERM,
    MarkKey,
    MarkRule,
    Stat,
    extend_plan,
    plan_marks,
)
from agent.enforce.mounts import mounted_filesystems
from agent.kernel.procfs import unescape_mount


class FakeFs:
    """A tree of paths: directories end with '/', everything else is a file; one device."""

    def __init__(self, *paths: str, mounts: tuple[str, ...] = ("/",)) -> None:
        self.nodes: dict[str, Stat] = {"/": Stat(1, 1, True)}
        self.links: set[str] = set()
        self.mounts = mounts
        self.overlay_mounts: list[tuple[str, tuple[str, ...]]] = []
        for path in paths:
            self.add(path)

    def add(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            sub = "/" + "/".join(parts[:i])
            is_dir = i < len(parts) or path.endswith("/")
            if sub not in self.nodes:
                self.nodes[sub] = Stat(1, len(self.nodes) + 1, is_dir)

    def stat(self, path: str) -> Stat | None:
        return self.nodes.get(os.path.normpath(path))

    def listdir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted(
            {
                p[len(prefix) :].split("/")[0]
                for p in self.nodes
                if p.startswith(prefix) and p != "/"
            }
        )

    def filesystems(self) -> list[str]:
        return list(self.mounts)

    def overlays(self) -> list[tuple[str, tuple[str, ...]]]:
        return list(self.overlay_mounts)


def key(fs: FakeFs, path: str) -> MarkKey:
    st = fs.stat(path)
    assert st is not None
    return MarkKey(st.dev, st.ino)


def rule(name: str, op: str, *paths: str) -> MarkRule:
    return MarkRule(("p", name), op, paths or None)


def test_two_exec_rules_in_one_directory_share_one_mark_and_dropping_one_keeps_it() -> None:
    fs = FakeFs("/w/a/", "/w/b/")
    both = plan_marks([rule("a", "exec", "/w/*"), rule("b", "exec", "/w/a/")], fs)
    one = plan_marks([rule("b", "exec", "/w/a/")], fs)
    shared = key(fs, "/w/a")
    assert both.refs[shared] == {("p", "a"), ("p", "b")}
    assert both.marks[shared] == FAN_OPEN_EXEC_PERM | FAN_EVENT_ON_CHILD
    # the object rule b needs is still marked with b's bits after rule a is gone
    assert one.marks[shared] == FAN_OPEN_EXEC_PERM | FAN_EVENT_ON_CHILD
    assert key(fs, "/w") not in one.marks


def test_open_and_exec_rules_on_one_object_union_their_bits() -> None:
    fs = FakeFs("/w/d/")
    plan = plan_marks([rule("o", "open", "/w/d/"), rule("x", "exec", "/w/d/")], fs)
    assert plan.marks[key(fs, "/w/d")] == FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM | FAN_EVENT_ON_CHILD


def test_prefix_rule_marks_matching_directories_and_their_whole_subtree() -> None:
    fs = FakeFs("/etc/sudoers", "/etc/sudoers.d/x/deep/", "/etc/hosts", "/etc/other/")
    plan = plan_marks([rule("s", "open", "/etc/sudoers*")], fs)
    marked = {plan.places[k] for k in plan.marks}
    assert marked == {"/etc", "/etc/sudoers.d", "/etc/sudoers.d/x", "/etc/sudoers.d/x/deep"}
    # new directories below are planned when they appear
    assert {"/etc", "/etc/sudoers.d", "/etc/sudoers.d/x/deep"} <= set(plan.watch)


def test_exact_file_is_marked_by_inode_only_and_is_an_identity_target() -> None:
    fs = FakeFs("/w/bin/tool", "/w/bin/other")
    plan = plan_marks([rule("t", "exec", "/w/bin/tool")], fs)
    tool = key(fs, "/w/bin/tool")
    # the loader opens the program: exec rules ask at open of that inode too
    assert plan.marks == {tool: FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM}
    assert plan.identities == {(tool.dev, tool.ino, "exec"): "/w/bin/tool"}
    assert plan.watch["/w/bin"] is True  # a file put in its place is planned again


def test_exact_file_that_does_not_exist_yet_marks_its_parent_until_it_does() -> None:
    fs = FakeFs("/w/bin/")
    before = plan_marks([rule("t", "open", "/w/bin/tool")], fs)
    assert before.marks == {key(fs, "/w/bin"): FAN_OPEN_PERM | FAN_EVENT_ON_CHILD}
    fs.add("/w/bin/tool")
    after = plan_marks([rule("t", "open", "/w/bin/tool")], fs)
    assert after.marks == {key(fs, "/w/bin/tool"): FAN_OPEN_PERM}


def test_missing_tree_is_watched_from_its_nearest_existing_ancestor() -> None:
    fs = FakeFs("/w/")
    plan = plan_marks([rule("t", "open", "/w/not/yet/")], fs)
    assert plan.marks == {}
    assert "/w" in plan.watch


def test_every_ancestor_of_a_rule_path_is_watched_for_directory_changes() -> None:
    fs = FakeFs("/a/b/c/tool")
    plan = plan_marks([rule("t", "exec", "/a/b/c/tool")], fs)
    assert {"/", "/a", "/a/b"} <= set(plan.watch)
    assert plan.watch["/a"] is False  # only directories there matter


def test_rule_without_paths_marks_every_filesystem() -> None:
    fs = FakeFs("/boot/", mounts=("/", "/boot"))
    fs.nodes["/boot"] = Stat(2, 1, True)
    plan = plan_marks([rule("all", "exec")], fs)
    assert plan.marks == {MarkKey(1, 0): FAN_OPEN_EXEC_PERM, MarkKey(2, 0): FAN_OPEN_EXEC_PERM}
    assert all(k.filesystem for k in plan.marks)


def test_mountinfo_lists_each_filesystem_with_files_once(tmp_path: object) -> None:
    text = (
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "23 22 0:5 / /proc rw - proc proc rw\n"
        "24 22 8:1 /srv /srv\\040data rw - ext4 /dev/sda1 rw\n"
        "25 22 0:40 / /tmp rw shared:1 - tmpfs tmpfs rw\n"
    )
    path = os.path.join(str(tmp_path), "mountinfo")
    with open(path, "w") as f:
        f.write(text)
    assert mounted_filesystems(path) == ["/", "/tmp"]
    assert unescape_mount("/srv\\040data") == "/srv data"


def test_fdinfo_lines_by_device_and_inode() -> None:
    text = (
        "pos:\t0\nflags:\t02004002\n"
        "fanotify flags:137 event-flags:88000\n"
        "fanotify sdev:fe00000 mflags:0 mask:40000 ignored_mask:0\n"
        "fanotify ino:20c7be sdev:fe00000 mflags:0 mask:8010000 ignored_mask:0 "
        "fhandle-bytes:8 fhandle-type:1 f_handle:bec72000dab3895e\n"
        "fanotify mnt_id:1a mflags:0 mask:10000 ignored_mask:0\n"
    )
    assert parse_fdinfo(text) == {
        (0xFE00000, 0): FAN_OPEN_EXEC_PERM,
        (0xFE00000, 0x20C7BE): FAN_OPEN_PERM | FAN_EVENT_ON_CHILD,
    }


def test_a_new_directory_inside_a_tree_is_added_without_planning_again() -> None:
    fs = FakeFs("/tmp/a/")
    rules = [rule("t", "exec", "/tmp/"), rule("s", "open", "/etc/sudoers*")]
    fs.add("/etc/")
    plan = plan_marks(rules, fs)
    fs.add("/tmp/a/new/deeper/")
    grown = extend_plan(plan, rules, fs, [("/tmp/a", "new", False)])
    assert grown is not None
    assert {grown.places[k] for k in grown.marks} - {plan.places[k] for k in plan.marks} == {
        "/tmp/a/new",
        "/tmp/a/new/deeper",
    }
    assert grown.marks[key(fs, "/tmp/a/new")] == FAN_OPEN_EXEC_PERM | FAN_EVENT_ON_CHILD
    # a directory matching a prefix rule, created next to it
    fs.add("/etc/sudoers.d/")
    grown2 = extend_plan(plan, rules, fs, [("/etc", "sudoers.d", False)])
    assert grown2 is not None and key(fs, "/etc/sudoers.d") in grown2.marks
    # a directory no rule reaches into is not ours: nothing to mark, nothing to plan again
    fs.add("/etc/other/")
    assert extend_plan(plan, rules, fs, [("/etc", "other", False)]).marks == plan.marks  # type: ignore[union-attr]


def test_a_new_directory_on_the_way_to_a_missing_rule_path_plans_everything_again() -> None:
    fs = FakeFs("/w/")
    rules = [rule("t", "open", "/w/not/yet/")]
    plan = plan_marks(rules, fs)
    fs.add("/w/not/")
    assert extend_plan(plan, rules, fs, [("/w", "not", False)]) is None


def test_a_rule_path_through_a_symlinked_directory_is_not_watched_through_the_link() -> None:
    fs = FakeFs("/usr/bin/dash")
    fs.nodes["/bin"] = Stat(1, fs.nodes["/usr/bin"].ino, True, is_link=True)
    fs.nodes["/bin/dash"] = fs.nodes["/usr/bin/dash"]
    plan = plan_marks([rule("d", "exec", "/bin/dash")], fs)
    assert plan.marks == {key(fs, "/usr/bin/dash"): FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM}
    assert "/bin" not in plan.watch  # inotify refuses a watch through a link (IN_DONT_FOLLOW)


def test_an_overlay_showing_a_tree_rule_files_gets_the_rule_marks_on_its_directories() -> None:
    fs = FakeFs("/w/tree/sub/", "/mnt/merged/sub/", "/mnt/whole/tree/sub/")
    fs.overlay_mounts = [("/mnt/merged", ("/up", "/w/tree")), ("/mnt/whole", ("/up2", "/w"))]
    plan = plan_marks([rule("t", "exec", "/w/tree/")], fs)
    marked = {plan.places[k] for k in plan.marks}
    # a layer that is the tree itself: the whole overlay; a layer above it: the tree inside
    assert {"/mnt/merged", "/mnt/merged/sub", "/mnt/whole/tree", "/mnt/whole/tree/sub"} <= marked
    assert "/mnt/whole" not in marked


def test_a_directory_gone_from_a_tree_leaves_the_plan_with_its_subtree() -> None:
    fs = FakeFs("/tmp/a/b/c/", "/tmp/keep/")
    rules = [rule("t", "exec", "/tmp/")]
    plan = plan_marks(rules, fs)
    shrunk = extend_plan(plan, rules, fs, [("/tmp", "a", True)])
    assert shrunk is not None
    assert {shrunk.places[k] for k in shrunk.marks} == {"/tmp", "/tmp/keep"}
    assert "/tmp/a/b" not in shrunk.watch


def test_a_procfs_below_a_tree_rule_is_listed_not_marked_and_not_walked() -> None:
    """procfs refuses permission events (fanotify_mark: EINVAL): a chroot's /proc below /tmp/
    used to make the whole policy fail to load. It is left out, named, and not descended into
    (its /proc/<pid>/... would be thousands of directories no mark can take)."""
    fs = FakeFs(
        "/tmp/chroot/proc/1/fd/", "/tmp/chroot/proc/1/environ", "/tmp/chroot/bin/", "/tmp/x/"
    )
    for path in ("/tmp/chroot/proc", "/tmp/chroot/proc/1", "/tmp/chroot/proc/1/fd"):
        fs.nodes[path] = Stat(9, fs.nodes[path].ino, True, unmarkable=True)
    fs.nodes["/tmp/chroot/proc/1/environ"] = Stat(9, 99, False, unmarkable=True)
    plan = plan_marks([rule("t", "exec", "/tmp/"), rule("o", "open", "/tmp/*")], fs)
    marked = {plan.places[k] for k in plan.marks}
    assert marked == {"/tmp", "/tmp/chroot", "/tmp/chroot/bin", "/tmp/x"}
    assert plan.unmarkable == {"/tmp/chroot/proc": {("p", "t"), ("p", "o")}}
    # a rule path in /proc itself: listed, never a mark the kernel would refuse
    exact = plan_marks([rule("k", "open", "/tmp/chroot/proc/1/environ")], fs)
    assert exact.marks == {} and set(exact.unmarkable) == {"/tmp/chroot/proc/1/environ"}
    # the directory gone: so is the entry
    later = extend_plan(plan, [rule("t", "exec", "/tmp/")], fs, [("/tmp", "chroot", True)])
    assert later is not None and later.unmarkable == {}


def test_a_directory_past_path_max_below_a_tree_is_listed_not_marked(tmp_path: Path) -> None:
    """Made by descending with directory fds, its path is longer than PATH_MAX: it cannot be
    marked by name, so the real planner lists it (``MarkPlan.unmarkable``, which the agent
    logs and puts in status.json) instead of passing over it in silence."""
    from agent.enforce.marks import OsView, plan_marks, too_long

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(17):
            os.mkdir("d" * 250, dir_fd=fd)
            nfd = os.open("d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    plan = plan_marks([rule("deep", "open", f"{tmp_path}/")], OsView())
    assert len(plan.unmarkable) == 1, plan.unmarkable
    (deep,) = plan.unmarkable
    assert too_long(deep) and deep.startswith(str(tmp_path)), deep
    marked = set(plan.places.values())
    assert str(tmp_path) in marked and len(marked) >= 16, len(marked)  # the ones it can name
