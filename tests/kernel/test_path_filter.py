"""Kernel e2e: the probes' in-kernel path filter keeps exactly the opens whose path (as the
kernel resolves it) is under a prefix, whichever way the file was reached, in both builds of
the probes (``events``: plain loads after bpf_rdonly_cast; ``events-compat``: helper reads).

The filter drops a resolved file first by the first component of its path (st_top_names),
without building the path; these cases are the ways to reach one file by another name:
symlinks, bind mounts both ways, dirfd-relative opens, deep trees, failed opens, and a
pattern whose ``*`` ends inside the first component.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.events import model
from agent.events import stream as stream_mod
from agent.events.stream import EventStream, StreamConfig

pytestmark = pytest.mark.kernel

PY = sys.executable


@pytest.fixture(params=["events", "events-compat"])
def probes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name = str(request.param)
    monkeypatch.setattr(stream_mod, "events_object", lambda: name)
    return name


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory whose path starts with another first component than the test's tmp dir
    (/dev/shm or /var/tmp, whichever is not the tmp dir's)."""
    for base in ("/dev/shm", "/var/tmp"):
        if Path(base).is_dir() and Path(base).parts[1] != Path(tempfile.gettempdir()).parts[1]:
            d = Path(base) / f"st-pathfilter-{os.getpid()}"
            d.mkdir(exist_ok=True)
            try:
                yield d
            finally:
                subprocess.run(["rm", "-rf", str(d)], check=False)
            return
    pytest.fail("no /dev/shm or /var/tmp to make an outside directory in")


def opened(stream: EventStream, want: set[str], quiet: float = 1.0) -> set[str]:
    """Paths of the open events seen, polling until all of ``want`` arrived (then ``quiet``
    more seconds, for what should not arrive) or 10 s passed."""
    seen: set[str] = set()
    deadline = time.monotonic() + 10.0
    last_new = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last_new < quiet:
        for item in stream.poll(50):
            if isinstance(item, model.OpenEvent):
                seen.add(item.path)
                last_new = time.monotonic()
        if not want <= seen:
            last_new = time.monotonic()
    return seen


OPENER = textwrap.dedent(
    """
    import os, sys
    for p in sys.argv[1:]:
        if p.startswith("dirfd:"):
            d, name = p[6:].rsplit("/", 1)
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.close(os.open(name, os.O_RDONLY, dir_fd=fd))
            finally:
                os.close(fd)
            continue
        try:
            os.close(os.open(p, os.O_RDONLY))
        except OSError:
            pass
    """
)


def run_opens(*paths: str | Path) -> None:
    subprocess.run([PY, "-c", OPENER, *map(str, paths)], check=True, timeout=20)


def test_reached_by_other_names_is_judged_by_the_resolved_path(
    tmp_path: Path, outside: Path, probes: str
) -> None:
    work = tmp_path.resolve()
    inside = work / "in"
    deep = inside.joinpath(*[f"d{i}" for i in range(30)])
    deep.mkdir(parents=True)
    (work / "out").mkdir()
    for f in (inside / "a", inside / "b", inside / "c", deep / "f", work / "out" / "x"):
        f.write_text("x")
    (outside / "y").write_text("y")
    (outside / "link").symlink_to(inside / "b")
    config = StreamConfig(kinds=frozenset({"open"}), path_prefixes=(str(inside),))
    with EventStream(config) as stream:
        run_opens(
            inside / "a",  # directly
            outside / "link",  # a symlink from another first component
            f"dirfd:{inside}/c",  # relative to a directory fd
            deep / "f",  # 30 components below the prefix
            inside / "missing",  # ENOENT: filtered on the path as passed
            work / "out" / "x",  # same first component, not under the prefix
            outside / "y",  # another first component
        )
        seen = opened(
            stream,
            {f"{inside}/a", f"{inside}/b", f"{inside}/c", f"{deep}/f", f"{inside}/missing"},
        )
    assert {f"{inside}/a", f"{inside}/b", f"{inside}/c", f"{deep}/f", f"{inside}/missing"} <= seen
    assert f"{work}/out/x" not in seen
    assert f"{outside}/y" not in seen and f"{outside}/link" not in seen


def test_mounts_both_ways(tmp_path: Path, outside: Path, probes: str) -> None:
    """A tree mounted under the prefix is under it (the walk crosses into the parent mount);
    the prefix's tree bind-mounted elsewhere is not (its path there is another one)."""
    inside = tmp_path.resolve() / "in"
    (inside / "mnt").mkdir(parents=True)
    (inside / "own").write_text("own")
    source = outside / "src"
    source.mkdir()
    (source / "f").write_text("f")
    alias = outside / "alias"
    alias.mkdir()
    config = StreamConfig(kinds=frozenset({"open"}), path_prefixes=(str(inside),))
    script = (
        f"mount --bind {source} {inside}/mnt && mount --bind {inside} {alias} && "
        f"cat {inside}/mnt/f {alias}/own > /dev/null"
    )
    with EventStream(config) as stream:
        # a mount namespace of its own: nothing mounted here outlives the test
        subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       check=True, timeout=20)  # fmt: skip
        seen = opened(stream, {f"{inside}/mnt/f"})
    assert f"{inside}/mnt/f" in seen
    assert f"{alias}/own" not in seen and f"{inside}/own" not in seen


def test_a_pattern_ending_inside_the_first_component(
    tmp_path: Path, outside: Path, probes: str
) -> None:
    """``/tm*``-like patterns: the first-component test is a prefix test too."""
    work = tmp_path.resolve()
    top = work.parts[1]  # "tmp" (or whatever the test's first component is)
    (work / "f").write_text("f")
    (outside / "g").write_text("g")
    config = StreamConfig(kinds=frozenset({"open"}), load_all=True)
    with EventStream(config) as stream:
        stream.reconfigure(frozenset({"open"}), (f"/{top[:2]}*",))
        run_opens(work / "f", outside / "g")
        seen = opened(stream, {f"{work}/f"})
    assert f"{work}/f" in seen
    assert not outside.parts[1].startswith(top[:2]) and f"{outside}/g" not in seen


@pytest.mark.parametrize("asked", [True, False])
def test_an_opens_flags_are_known_while_it_runs_only_when_asked(
    tmp_path: Path, probes: str, asked: bool
) -> None:
    """``StreamConfig.open_flags``: the open family's sys_enter programs save the flags of an
    open while it runs (the fanotify mechanism judges opens by them); without it an open
    costs its sys_exit program only, and no flags are known."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    config = StreamConfig(kinds=frozenset({"open"}), path_prefixes=(str(tmp_path),),
                          open_flags=asked)  # fmt: skip
    flags = os.O_RDONLY | os.O_CLOEXEC
    with EventStream(config) as stream:
        # blocks in openat(2) until a writer comes: the flags are pending meanwhile
        child = subprocess.Popen([PY, "-c", f"import os; os.open({str(fifo)!r}, {flags})"])
        try:
            deadline = time.monotonic() + 10
            seen = None
            while time.monotonic() < deadline and seen is None:
                seen = stream.pending_open_flags(child.pid)
                if not asked:
                    time.sleep(0.5)  # long enough to be in the open
                    seen = stream.pending_open_flags(child.pid)
                    break
                time.sleep(0.01)
        finally:
            os.close(os.open(fifo, os.O_WRONLY))  # let the child's open finish
            child.wait(10)
        assert stream.pending_open_flags(child.pid) is None  # over: nothing left behind
    assert seen == (flags & 0xFFFFFFFF if asked else None), seen
