"""Set-level checks: duplicates, never-matching, shadowed and redundant rules, mechanisms."""

from __future__ import annotations

import pytest

from agent.policy.check import check
from agent.policy.mechanisms import HostCapabilities

from .conftest import Write

HEAD = 'name = "{name}"\nmode = "{mode}"\n'


def rule(rid: str, body: str) -> str:
    return f'[[rules]]\nid = "{rid}"\n{body}\n'


def findings(write: Write, *rules: str, mode: str = "enforce") -> list[str]:
    path = write(HEAD.format(name="p", mode=mode) + "".join(rules))
    return [str(f) for f in check([path]).findings]


OPEN_SHADOW = 'operation = "open"\ntargets.paths = ["/etc/shadow"]\n'


def test_duplicate_ids_across_files(write: Write) -> None:
    a = write(
        HEAD.format(name="a", mode="enforce") + rule("x", OPEN_SHADOW + 'action = "deny"'), "a.toml"
    )
    other = 'operation = "exec"\ntargets.paths = ["/tmp/"]\naction = "deny"'
    b = write(HEAD.format(name="b", mode="enforce") + rule("x", other), "b.toml")
    report = check([a.parent])
    [message] = [str(f) for f in report.findings]
    assert message.startswith(
        f"{b}:4:6: error: rules[0].id (rule 'x'): rule id 'x' is already used in {a}:4"
    )
    assert not report.ok and report.compiled is None


def test_duplicate_policy_names(write: Write) -> None:
    body = HEAD.format(name="same", mode="enforce")
    write(body + rule("a", OPEN_SHADOW + 'action = "deny"'), "1.toml")
    path = write(
        body + rule("b", 'operation = "exec"\ntargets.paths = ["/x"]\naction = "deny"'), "2.toml"
    )
    [message] = [str(f) for f in check([path.parent]).findings]
    assert "policy name 'same' is already used" in message and message.startswith(f"{path}:1:8")


def test_never_matches_when_except_covers_subject(write: Write) -> None:
    [message] = findings(
        write,
        rule(
            "r",
            OPEN_SHADOW
            + 'action = "deny"\n'
            + 'subjects = { exe = ["/usr/bin/a"], except = { exe = ["/usr/bin/"] } }',
        ),
    )
    assert "can never match" in message and "subjects.except" in message


def test_except_with_descendants_not_covered_by_narrower_except(write: Write) -> None:
    body = (
        'subjects = { exe = ["/usr/bin/a"], descendants = true, except = { exe = ["/usr/bin/a"] } }'
    )
    assert findings(write, rule("r", OPEN_SHADOW + 'action = "deny"\n' + body)) == []


def test_udp_listen_never_matches(write: Write) -> None:
    [message] = findings(
        write, rule("r", 'operation = "listen"\ntargets.protocol = "udp"\naction = "deny"')
    )
    assert "TCP only" in message


def test_shadowed_by_earlier_kill(write: Write) -> None:
    [message] = findings(
        write,
        rule("wide", 'operation = "open"\ntargets.paths = ["/etc/"]\naction = "kill"'),
        rule("narrow", OPEN_SHADOW + 'access = ["write"]\naction = "deny"\nsubjects.uid = [1000]'),
    )
    assert message.split(": error: ")[1].startswith(
        "rules[1].id (rule 'narrow'): shadowed by rule 'wide'"
    )


def test_shadowed_even_when_written_first(write: Write) -> None:
    """Precedence, not file order: an allow covering a later deny wins."""
    [message] = findings(
        write,
        rule("deny-it", OPEN_SHADOW + 'action = "deny"'),
        rule("allow-all", 'operation = "open"\ntargets.paths = ["/"]\naction = "allow"'),
    )
    assert "(rule 'deny-it'): shadowed by rule 'allow-all'" in message


def test_redundant_same_action_is_a_warning(write: Write) -> None:
    [message] = findings(
        write,
        rule("a", 'operation = "open"\ntargets.paths = ["/etc/*"]\naction = "deny"'),
        rule("b", OPEN_SHADOW + 'action = "deny"'),
    )
    assert ": warning: " in message and "redundant: rule 'a'" in message


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # narrower subject
        ("subjects.uid = [0]", ""),
        # an except on the first rule that the second does not share
        ("subjects.except.uid = [0]", ""),
        # descendants reach further than the first rule's exe
        ('subjects.exe = ["/a"]', 'subjects = { exe = ["/a"], descendants = true }'),
        # fewer accesses
        ('access = ["read"]', 'access = ["write"]'),
    ],
)
def test_not_shadowed(write: Write, first: str, second: str) -> None:
    assert (
        findings(
            write,
            rule("a", OPEN_SHADOW + 'action = "kill"\n' + first),
            rule("b", OPEN_SHADOW + 'action = "deny"\n' + second),
        )
        == []
    )


def test_network_coverage(write: Write) -> None:
    [message] = findings(
        write,
        rule(
            "a",
            'operation = "connect"\ntargets.addresses = ["10.0.0.0/8"]\n'
            'targets.ports = ["1-100", "101-200"]\naction = "kill"',
        ),
        rule(
            "b",
            'operation = "connect"\ntargets.addresses = ["10.1.0.0/16"]\n'
            'targets.ports = ["50-150"]\ntargets.protocol = "tcp"\naction = "deny"',
        ),
    )
    assert "shadowed by rule 'a'" in message
    assert (
        findings(
            write,
            rule("a", 'operation = "connect"\ntargets.addresses = ["10.0.0.0/8"]\naction = "kill"'),
            rule(
                "b", 'operation = "connect"\ntargets.addresses = ["11.0.0.0/16"]\naction = "deny"'
            ),
        )
        == []
    )


def test_monitor_rule_under_enforcing_rule(write: Write) -> None:
    a = write(
        HEAD.format(name="a", mode="enforce") + rule("a", OPEN_SHADOW + 'action = "deny"'), "a.toml"
    )
    write(
        HEAD.format(name="b", mode="monitor") + rule("b", OPEN_SHADOW + 'action = "kill"'), "b.toml"
    )
    [message] = [str(f) for f in check([a.parent]).findings]
    assert "(rule 'b'): shadowed by rule 'a'" in message


NO_LSM = HostCapabilities(lsm=False, cgroup_sock=True, fanotify=True, send_signal=True)


def test_host_refuses_rule_without_mechanism(write: Write) -> None:
    path = write(
        HEAD.format(name="p", mode="enforce")
        + rule("r", 'operation = "unlink"\ntargets.paths = ["/etc/shadow"]\naction = "deny"')
    )
    report = check([path], NO_LSM)
    [message] = [str(f) for f in report.findings]
    assert message == (
        f"{path}:7:10: error: rules[0].action (rule 'r'): "
        "no deny mechanism for unlink on this host: "
        'set fallback = "kill" or "audit"'
    )
    assert check([path]).ok  # without a host there is nothing to refuse


def test_monitor_mode_needs_no_mechanism(write: Write) -> None:
    path = write(
        HEAD.format(name="p", mode="monitor")
        + rule("r", 'operation = "unlink"\ntargets.paths = ["/x"]\naction = "deny"')
    )
    report = check([path], NO_LSM)
    assert report.ok and report.enforcement is not None
    assert report.enforcement[0].mechanism == "tracepoint"
