"""The first-component keys (st_top_names) never drop a path the prefix keys keep.

The probe drops a resolved file when the first component of its path matches no key of
st_top_names (an LPM trie of names, NUL included), before it builds the path; then the
st_path_prefixes test never runs. This is the model of both tries (``_matches`` is the prefix
test as the probe does it), checked over generated patterns and paths.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.events.stream import (
    _matches,
    pattern_key,
    prefix_entries,
    top_name_key,
)


def lpm_matches(key: bytes, data: bytes) -> bool:
    length = int.from_bytes(key[:4], "little") // 8
    return data[:length] == key[4 : 4 + length]


def first_component(path: str) -> bytes:
    """What the probe looks up: the name under the root, with its NUL ("" for "/")."""
    return path.encode().lstrip(b"/").split(b"/", 1)[0] + b"\0"


component = st.text(alphabet="ab.", min_size=1, max_size=3)
paths = st.lists(component, min_size=0, max_size=4).map(lambda parts: "/" + "/".join(parts))
patterns = st.one_of(
    paths,  # exact
    paths.map(lambda p: p.rstrip("/") + "/"),  # the directory's tree
    paths.map(lambda p: p + "*"),  # a prefix, the '*' anywhere in a component
)


@settings(max_examples=3000)
@given(pattern=patterns, path=paths)
def test_a_kept_path_passes_the_first_component_test(pattern: str, path: str) -> None:
    key = pattern_key(pattern)
    if _matches({key}, path):
        assert lpm_matches(top_name_key(key), first_component(path)), (pattern, path)


@settings(max_examples=1000)
@given(prefix=paths, path=paths)
def test_prefix_entries_too(prefix: str, path: str) -> None:
    for key in prefix_entries(prefix):
        if _matches({key}, path):
            assert lpm_matches(top_name_key(key), first_component(path)), (prefix, path)


def test_examples() -> None:
    assert top_name_key(pattern_key("/etc/shadow")) == top_name_key(pattern_key("/etc/"))
    etc = top_name_key(pattern_key("/etc/sudoers*"))
    assert lpm_matches(etc, b"etc\0") and not lpm_matches(etc, b"etcx\0")
    us = top_name_key(pattern_key("/us*"))
    assert lpm_matches(us, b"usr\0") and lpm_matches(us, b"us\0") and not lpm_matches(us, b"u\0")
    everything = top_name_key(pattern_key("/*"))
    assert lpm_matches(everything, b"\0") and lpm_matches(everything, b"anything\0")
    root = top_name_key(prefix_entries("/")[0])
    assert lpm_matches(root, b"\0") and lpm_matches(root, b"x\0")
