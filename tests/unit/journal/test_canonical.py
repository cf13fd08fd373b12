"""Our canonical encoder is byte-identical to the rfc8785 library on the record domain."""

from __future__ import annotations

import random

import orjson
import pytest
import rfc8785

from agent.errors import FormatError
from agent.journal.canonical import MAX_SAFE_INT, JsonValue, canonical

ALPHABET = (
    'abcXYZ019 _-/.:"\\\n\r\t\b\f\x00\x01\x1f\x7f\x80\u00e9\u2028\u2029\ud7ff\ue000\uffff'
    "\U0001f600\U00010000\U0010ffff"
)


def random_string(rnd: random.Random) -> str:
    return "".join(rnd.choice(ALPHABET) for _ in range(rnd.randrange(0, 8)))


def random_value(rnd: random.Random, depth: int = 0) -> JsonValue:
    kind = rnd.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return random_string(rnd)
    if kind == 1:
        return rnd.choice([0, 1, -1, MAX_SAFE_INT, -MAX_SAFE_INT, rnd.randrange(-(10**12), 10**12)])
    if kind == 2:
        return rnd.choice([True, False])
    if kind == 3:
        return None
    if kind == 4:
        return [random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    return {random_string(rnd): random_value(rnd, depth + 1) for _ in range(rnd.randrange(5))}


def test_byte_equal_to_rfc8785_on_random_values() -> None:
    rnd = random.Random(8785)
    for _ in range(5000):
        value = random_value(rnd)
        assert canonical(value) == rfc8785.dumps(value), value


def test_keys_above_bmp_sort_by_utf16_code_units() -> None:
    # U+1F600 is D83D DE00 in UTF-16, which sorts before U+E000 although its code point is larger.
    value: JsonValue = {"\ue000": 1, "\U0001f600": 2}
    assert canonical(value) == rfc8785.dumps(value)
    assert canonical(value).index("\U0001f600".encode()) < canonical(value).index("\ue000".encode())


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        [1e300],
        {"a": -0.0},
        MAX_SAFE_INT + 1,
        -MAX_SAFE_INT - 1,
        2**64,
        {1: "x"},
        "\ud800",
        {"k": "\udc00"},
        b"x",
        {"a": {1.0}},
    ],
)
def test_outside_the_record_domain_is_refused(value: object) -> None:
    with pytest.raises(FormatError):
        canonical(value)  # type: ignore[arg-type]


def test_parse_rejects_floats_and_noncanonical_numbers() -> None:
    from agent.journal.record import parse_line

    good = canonical(
        {"boot_id": "b", "host": "h", "prev": "0" * 64, "seq": 0, "ts": "1", "type": "start"}
    )
    parse_line(good)
    for bad in (
        good.replace(b'"seq":0', b'"seq":0.0'),
        good.replace(b'"seq":0', b'"seq":0e0'),
        good.replace(b'"seq":0', b'"seq":-0'),
        good.replace(b'"seq":0', b'"seq":NaN'),
        good.replace(b'"ts":"1"', b'"ts":"1","x":12345678901234567890'),
    ):
        with pytest.raises(FormatError):
            parse_line(bad)


def test_hostile_nesting_is_a_format_error_not_a_recursion_error() -> None:
    from agent.journal.canonical import load_json, parse_canonical

    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(FormatError, match="nested too deeply"):
        parse_canonical(deep)
    with pytest.raises(FormatError, match="nested too deeply"):
        load_json(deep)
    nested: object = []
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(FormatError):
        canonical({"a": nested})  # type: ignore[dict-item]


@pytest.mark.parametrize("action", [[], ["deny"], {}, {"deny": 1}, 1, None, True])
def test_a_verdict_action_of_another_type_is_a_format_error(action: object) -> None:
    from agent.journal.record import parse_line

    line = canonical(
        {
            "action": action,  # type: ignore[dict-item]
            "boot_id": "b",
            "host": "h",
            "policy": "p",
            "prev": "0" * 64,
            "rule": "r",
            "seq": 0,
            "ts": "1",
            "type": "verdict",
        }
    )
    with pytest.raises(FormatError, match="verdict action"):
        parse_line(line)


def test_only_the_utf16_key_order_parses() -> None:
    """Above U+FFFF code-point order (orjson's) and UTF-16 order (RFC 8785's) differ."""
    from agent.journal.canonical import parse_canonical

    value = {"\uffff": 1, "\U00010000": 2}
    codepoint = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    assert codepoint != rfc8785.dumps(value)
    with pytest.raises(FormatError, match="not canonical"):
        parse_canonical(codepoint)
    assert parse_canonical(rfc8785.dumps(value)) == value
    nested = {"a": [{"\uffff": 1, "\U00010000": 2}]}
    with pytest.raises(FormatError, match="not canonical"):
        parse_canonical(orjson.dumps(nested, option=orjson.OPT_SORT_KEYS))
    assert parse_canonical(rfc8785.dumps(nested)) == nested
