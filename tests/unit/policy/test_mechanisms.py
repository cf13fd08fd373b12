"""The mechanism per rule and host (DESIGN.md section 3): never a silent downgrade."""

from __future__ import annotations

import pytest

from agent.errors import MechanismUnavailable
from agent.policy.compile import CompiledRule
from agent.policy.mechanisms import HostCapabilities, enforcement_for, require_enforceable

DEV = HostCapabilities(lsm=False, cgroup_sock=True, fanotify=True, send_signal=True)
STOCK = HostCapabilities(lsm=True, cgroup_sock=True, fanotify=True, send_signal=True)
BARE = HostCapabilities(lsm=False, cgroup_sock=False, fanotify=False, send_signal=False)


def rule(op: str, action: str, fallback: str | None = None, mode: str = "enforce") -> CompiledRule:
    return CompiledRule(op, 0, 0, "r", 0, "p", mode, action, fallback, "p.toml", 0)


@pytest.mark.parametrize(
    ("host", "op", "action", "fallback", "mechanism", "after"),
    [
        (DEV, "exec", "deny", None, "fanotify", False),
        (DEV, "exec", "kill", None, "fanotify+sigkill", False),
        (STOCK, "exec", "kill", None, "lsm+sigkill", False),
        (DEV, "open", "deny", None, "fanotify", False),
        (DEV, "open", "kill", None, "fanotify+sigkill", False),
        (STOCK, "open", "deny", None, "lsm", False),
        (DEV, "connect", "deny", None, "cgroup-sock", False),
        (DEV, "bind", "kill", None, "cgroup-sock+sigkill", False),
        (STOCK, "listen", "deny", None, "lsm", False),
        (STOCK, "unlink", "deny", None, "lsm", False),
        (DEV, "unlink", "deny", "kill", "sigkill-after-the-fact", True),
        (DEV, "chmod", "kill", "kill", "sigkill-after-the-fact", True),
        (DEV, "rename", "deny", "audit", "tracepoint", True),
        (BARE, "exec", "deny", "kill", "None", False),
        (BARE, "exec", "deny", "audit", "tracepoint", True),
        (DEV, "chown", "audit", None, "tracepoint", False),
        (DEV, "connect", "allow", None, "cgroup-sock", False),
        (DEV, "unlink", "deny", None, "tracepoint", False),  # monitor below
    ],
)
def test_mechanism_table(
    host: HostCapabilities, op: str, action: str, fallback: str | None, mechanism: str, after: bool
) -> None:
    mode = (
        "monitor"
        if host is DEV and (op, action, fallback) == ("unlink", "deny", None)
        else "enforce"
    )
    got = enforcement_for(rule(op, action, fallback, mode), host)
    assert (str(got.mechanism), got.after_the_fact) == (mechanism, after)


@pytest.mark.parametrize(
    ("host", "op", "action", "message"),
    [
        (
            DEV,
            "unlink",
            "deny",
            'no deny mechanism for unlink on this host: set fallback = "kill" or "audit"',
        ),
        (
            DEV,
            "chmod",
            "kill",
            'no deny mechanism for chmod on this host: set fallback = "kill" or "audit"',
        ),
        (
            DEV,
            "listen",
            "deny",
            'no deny mechanism for listen on this host: set fallback = "kill" or "audit"',
        ),
        (
            BARE,
            "exec",
            "kill",
            'no bpf_send_signal on this host: kill cannot be enforced: set fallback = "audit"',
        ),
    ],
)
def test_no_mechanism_is_an_error(
    host: HostCapabilities, op: str, action: str, message: str
) -> None:
    got = enforcement_for(rule(op, action), host)
    assert got.mechanism is None and got.error == message
    with pytest.raises(MechanismUnavailable, match="rule 'r'"):
        require_enforceable((got,))
