"""The two ``Chain`` implementations are one chain: same seqs, hashes, roots and frontiers.

``new_chain`` picks the native one where the core is loaded; every caller (writer, reopen scan,
verifier) then relies on both extending a chain identically, whichever method it uses, and on
``from_state``/``frontier`` carrying a chain through a ``ChainState``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import native
from agent.errors import JournalError
from agent.journal.chain import Chain, PythonChain, new_chain
from agent.journal.merkle import CompactTree
from agent.journal.record import GENESIS_PREV, record_hash
from agent.journal.segments import list_segments
from agent.journal.state import ChainState
from agent.native.hashchain import NativeChain

from .conftest import Journal

needs_native = pytest.mark.skipif(
    not native.available() and not os.environ.get("CI"),
    reason="native core not built (make native)",
)


def view(chain: Chain) -> tuple[int, str, int, bytes, tuple[str, ...]]:
    return chain.next_seq, chain.prev, chain.size, chain.root(), chain.frontier()


def test_python_chain_is_the_record_hash_chain() -> None:
    chain = PythonChain()
    assert view(chain) == (0, GENESIS_PREV, 0, CompactTree().root(), ())
    tree = CompactTree()
    for i in range(37):
        line = b'{"seq":%d}' % i
        chain.add(line)
        tree.append(record_hash(line))
        assert chain.prev == record_hash(line).hex()
    assert view(chain) == (37, chain.prev, 37, tree.root(), tuple(n.hex() for n in tree.frontier))


def test_the_choice_is_made_once() -> None:
    assert isinstance(new_chain(use_native=False), PythonChain)
    expected = NativeChain if native.available() else PythonChain
    assert isinstance(new_chain(), expected)


def test_python_chain_takes_no_bulk_run_and_no_events(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.fill(10)
    content = list_segments(journal.dir)[0][1].read_bytes()
    chain = PythonChain()
    assert chain.add_ordinary(content, 0, "host-a", "boot-1") == 0
    assert not chain.takes_events
    with pytest.raises(JournalError, match="native core"):
        chain.add_events(None, b"", 0, limit=1, fixed_ts=0)  # type: ignore[arg-type]


@needs_native
def test_both_chains_agree_on_every_path(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.fill(90, seal_every=11)
    segments = [p.read_bytes() for _, p in list_segments(journal.dir)]
    py, c = PythonChain(), NativeChain()
    assert view(py) == view(c)
    first = segments[0]
    assert py.add_lines(first) == c.add_lines(first) == len(first)
    assert view(py) == view(c)
    bulk = 0
    for content in segments[1:]:
        pos = 0
        while pos < len(content):
            end = c.add_ordinary(content, pos, "host-a", "boot-1")
            bulk += end - pos
            for line in content[pos:end].splitlines():
                py.add(line)
            assert view(py) == view(c)
            if end >= len(content):
                break
            nl = content.index(b"\n", end)
            py.add(content[end:nl])
            c.add(content[end:nl])
            pos = nl + 1
        assert view(py) == view(c)
    assert bulk > sum(map(len, segments[1:])) // 2
    fd_py, fd_c = (os.open(tmp_path / n, os.O_WRONLY | os.O_CREAT, 0o600) for n in "pc")
    try:
        py.write(fd_py, b'{"x":1}')
        c.write(fd_c, b'{"x":1}')
    finally:
        os.close(fd_py)
        os.close(fd_c)
    assert view(py) == view(c)
    assert (tmp_path / "p").read_bytes() == (tmp_path / "c").read_bytes() == b'{"x":1}\n'
    py.renumber(1000)
    c.renumber(1000)
    assert view(py) == view(c) and py.next_seq == 1000


@pytest.mark.parametrize("use_native", [False, pytest.param(True, marks=needs_native)])
def test_a_chain_goes_through_a_chain_state(use_native: bool) -> None:
    chain = new_chain(use_native=use_native)
    for i in range(21):
        chain.add(b'{"n":%d}' % i)
    state = ChainState(
        host="h", next_seq=chain.next_seq, prev=chain.prev, frontier=chain.frontier(),
        boot="b", last_type="event",
    )  # fmt: skip
    again = new_chain(ChainState.from_dict(state.to_dict()), use_native=use_native)
    assert view(again) == view(chain) and again.root() == state.root()
    again.add(b"{}")
    chain.add(b"{}")
    assert view(again) == view(chain)
