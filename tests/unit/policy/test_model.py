"""Parsing: every error names file:line:column and the field; from_dict/to_dict are inverses."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent.errors import PolicyFieldError, PolicyInvalid
from agent.policy.check import check
from agent.policy.model import Policy, Rule, Subject, Target, parse_address, parse_port

from .conftest import POLICIES, Write

BASE = """\
name = "p"
mode = "enforce"

[[rules]]
id = "r"
operation = "open"
action = "deny"
"""


def errors(path: Path) -> list[str]:
    return [str(f) for f in check([path]).findings]


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.toml")), ids=lambda p: p.name)
def test_examples_round_trip(path: Path) -> None:
    data = tomllib.loads(path.read_text())
    policy = Policy.from_dict(data)
    assert policy.to_dict() == data
    assert Policy.from_dict(policy.to_dict()) == policy


@pytest.mark.parametrize(
    ("tail", "where", "words"),
    [
        ('targets.paths = ["etc/shadow"]\n', ":8:18:", ["rules[0].targets.paths[0]", "absolute"]),
        ('targets.paths = ["/a/../b"]\n', ":8:18:", ["paths[0]", "'..'"]),
        ('targets.paths = ["/a*b"]\n', ":8:18:", ["paths[0]", "trailing '*'"]),
        ("targets.paths = []\n", ":8:17:", ["rules[0].targets.paths", "empty"]),
        ('targets.paths = ["/x"]\ncolour = 1\n', ":9:1:", ["unknown key 'colour'", "allowed keys"]),
        ('targets.paths = ["/x"]\nsubjects.who = 1\n', ":9:10:", ["subjects.who", "exe, desc"]),
        ('targets.paths = ["/x"]\nsubjects = {}\n', ":9:1:", ["subjects", "empty"]),
        ("targets.ports = [22]\n", ":8:9:", ["targets.ports", "targets.paths"]),
        ('targets.paths = ["/x"]\nfallback = "deny"\n', ":9:12:", ["fallback", "kill, audit"]),
        ('targets.paths = ["/x"]\naccess = ["exec"]\n', ":9:11:", ["access[0]", "read, write"]),
        ('targets.paths = ["/x"]\nsubjects.uid = [-1]\n', ":9:17:", ["uid[0]", "0-4294967294"]),
        ('targets.paths = ["/x"]\nsubjects.descendants = true\n', ":9:24:", ["descendants"]),
    ],
)
def test_errors_are_located(write: Write, tail: str, where: str, words: list[str]) -> None:
    path = write(BASE + tail)
    [message] = errors(path)
    assert message.startswith(f"{path}{where} error: "), message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("table", "words"),
    [
        (
            'operation = "connect"\naction = "deny"\ntargets.addresses = ["10.0.0.1/8"]',
            ["host bits", "10.0.0.0/8"],
        ),
        (
            'operation = "connect"\naction = "deny"\ntargets.ports = [70000]',
            ["70000 is out of range", "0-65535"],
        ),
        ('operation = "bind"\naction = "deny"\ntargets.ports = ["9-1"]', ["empty (low > high)"]),
        ('operation = "bind"\naction = "deny"\ntargets.protocol = "icmp"', ["tcp, udp"]),
        (
            'operation = "exec"\naction = "nuke"\ntargets.paths = ["/x"]',
            ["allow, audit, deny, kill"],
        ),
        ('operation = "mount"\naction = "deny"\ntargets.paths = ["/x"]', ["exec, open, unlink"]),
        (
            'operation = "exec"\naction = "audit"\nfallback = "kill"\ntargets.paths = ["/x"]',
            ["deny and kill"],
        ),
    ],
)
def test_value_errors_name_what_is_allowed(write: Write, table: str, words: list[str]) -> None:
    path = write(f'name = "p"\nmode = "enforce"\n[[rules]]\nid = "r"\n{table}\n')
    [message] = errors(path)
    assert f"{path}:" in message and "(rule 'r')" in message
    for word in words:
        assert word in message


def test_every_bad_rule_is_reported_at_once(write: Write) -> None:
    path = write(
        """\
        name = "p"
        mode = "sometimes"
        [[rules]]
        id = "a"
        operation = "open"
        action = "deny"
        targets.paths = ["x"]
        [[rules]]
        id = "b"
        operation = "open"
        action = "deny"
        targets.paths = ["/ok"]
        [[rules]]
        id = "Bad Id"
        operation = "open"
        action = "deny"
        targets.paths = ["/ok"]
        """
    )
    found = errors(path)
    assert [m.split(": error")[0] for m in found] == [f"{path}:2:8", f"{path}:7:18", f"{path}:14:6"]


def test_syntax_error_has_tomllib_position(write: Write) -> None:
    path = write('name = "p"\nmode = \n')
    [message] = errors(path)
    assert message.startswith(f"{path}:2:8: error: TOML:")


def test_locator_handles_inline_tables_and_multiline_arrays(write: Write) -> None:
    path = write(
        """\
        name = "p"   # comment with "quotes" and [brackets]
        mode = "enforce"
        [[rules]]
        id = "r"
        operation = "exec"
        action = "deny"
        targets = { paths = [
            "/ok",  # fine
            '''/also/ok''',
            "rel",
        ] }
        """
    )
    [message] = errors(path)
    assert message.startswith(f"{path}:10:5: error: rules[0].targets.paths[2]")


def test_constructors_refuse_invalid_values() -> None:
    with pytest.raises(PolicyFieldError, match="not absolute"):
        Target(paths=("relative",))
    with pytest.raises(PolicyFieldError, match="targets is empty"):
        Target()
    with pytest.raises(PolicyFieldError, match="another except"):
        Subject(except_=Subject(exe=("/a",), except_=Subject(uid=(1,))))
    with pytest.raises(PolicyFieldError, match="does not apply to operation 'open'"):
        Rule("r", "open", "deny", Target(protocol="tcp"))
    with pytest.raises(PolicyInvalid):
        Policy.from_dict({"name": "p", "mode": "enforce", "rules": [{"id": "x"}]})


def test_value_grammar() -> None:
    assert parse_address("169.254.169.254") == (bytes(10) + b"\xff\xff\xa9\xfe\xa9\xfe", 128)
    assert parse_address("::ffff:169.254.169.254/128") == parse_address("169.254.169.254/32")
    assert parse_address("10.0.0.0/8") == (bytes(10) + b"\xff\xff\x0a\0\0\0", 104)
    assert parse_port(22) == (22, 22)
    assert parse_port("1-1023") == (1, 1023)
