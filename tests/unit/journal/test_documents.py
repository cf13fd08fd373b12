"""Every exchanged document parses strictly: random JSON gives a FormatError or a value whose
``to_dict`` is the input again, never another exception and never a coerced value."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import SealtrailError
from agent.journal.checkpoint import (
    Checkpoint,
    ConsistencyProof,
    InclusionProof,
    SignedCheckpoint,
    Tail,
)
from agent.journal.reader import latest_checkpoint, prove, prove_consistency
from agent.journal.record import Record
from agent.journal.state import ChainState

from .conftest import Journal

Parser = Callable[[Mapping[str, Any]], Any]

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["007", "0", "ab" * 32, "AB" * 32, "a" * 32, "sealtrail-checkpoint/v1"])
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=16,
)


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Parser, dict[str, Any]]]:
    journal = Journal(tmp_path_factory.mktemp("docs"))
    journal.fill(40, seal_every=10, rotate_every=15)
    old = latest_checkpoint(journal.dir)
    journal.fill(30, seal_every=10)
    journal.writer().append("event", {"kind": "exec"})  # an unsealed tail
    signed = latest_checkpoint(journal.dir)
    assert signed.tail is not None
    proof = prove(journal.dir, 12)
    consistency = prove_consistency(journal.dir, old)
    return {
        "checkpoint": (Checkpoint.from_dict, signed.checkpoint.to_dict()),
        "tail": (Tail.from_dict, signed.tail.to_dict()),
        "signed": (SignedCheckpoint.from_dict, signed.to_dict()),
        "inclusion": (InclusionProof.from_dict, proof.to_dict()),
        "consistency": (ConsistencyProof.from_dict, consistency.to_dict()),
        "record": (Record.from_dict, signed.rotations[0].to_dict()),
        "state": (
            ChainState.from_dict,
            ChainState("h", 1, "ab" * 32, ("cd" * 32,), "b", None, None, None, 0, "seal").to_dict(),
        ),
    }


def _paths(doc: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc[:3]):
            out += _paths(value, (*prefix, i))
    return out


def _judge(parse: Parser, doc: object) -> None:
    try:
        value = parse(doc)  # type: ignore[arg-type]
    except SealtrailError:
        return
    assert value.to_dict() == doc, "accepted a document it does not write back identically"


@pytest.mark.parametrize(
    "name", ["checkpoint", "tail", "signed", "inclusion", "consistency", "record", "state"]
)
def test_valid_documents_round_trip(
    documents: dict[str, tuple[Parser, dict[str, Any]]], name: str
) -> None:
    parse, doc = documents[name]
    assert parse(doc).to_dict() == doc


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_random_json_anywhere_in_any_document(
    documents: dict[str, tuple[Parser, dict[str, Any]]], data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(sorted(documents)))
    parse, doc = documents[name]
    mutated = copy.deepcopy(doc)
    paths = _paths(mutated)
    path = data.draw(st.sampled_from(paths))
    node: Any = mutated
    for key in path[:-1]:
        node = node[key]
    if data.draw(st.booleans()):
        node[path[-1]] = data.draw(_json)
    elif isinstance(node, dict):
        del node[path[-1]]
    _judge(parse, mutated)


@settings(max_examples=300, deadline=None)
@given(doc=_json)
def test_random_json_as_a_whole_document(
    documents: dict[str, tuple[Parser, dict[str, Any]]], doc: object
) -> None:
    for parse, _ in documents.values():
        _judge(parse, doc)
