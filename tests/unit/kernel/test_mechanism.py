"""One spelling per mechanism, one deny-hook table: doctor and ``policy check --host`` agree."""

from __future__ import annotations

import itertools

import pytest

from agent.events.decode import MECHANISMS
from agent.kernel import abi, host, probe
from agent.kernel.mechanism import DENY_HOOKS, HostCapabilities, Mechanism, deny_hook
from agent.kernel.probe import Check
from agent.policy.compile import CompiledRule
from agent.policy.mechanisms import enforcement_for


def test_killing_and_hook_are_inverse() -> None:
    for hook in (Mechanism.LSM, Mechanism.FANOTIFY, Mechanism.CGROUP_SOCK):
        assert hook.killing() == f"{hook}+sigkill" and hook.killing().hook is hook
    assert Mechanism.EXEC_TRACEPOINT.killing() is Mechanism.EXEC_TRACEPOINT_SIGKILL
    assert Mechanism.TRACEPOINT.hook is Mechanism.TRACEPOINT


def test_the_mechanisms_the_guard_reports_decode_to_their_spelling() -> None:
    for code in (abi.Mechanism.CGROUP_SOCK, abi.Mechanism.LSM, abi.Mechanism.EXEC_TRACEPOINT):
        assert Mechanism(MECHANISMS[code]).name == code.name


def test_every_deny_hook_is_a_host_capability() -> None:
    caps = HostCapabilities(lsm=True, cgroup_sock=True, fanotify=True, send_signal=True)
    assert all(caps.has(hook) for hooks in DENY_HOOKS.values() for hook in hooks)


@pytest.mark.parametrize(
    "failed", [dict(zip(("bpf_lsm", "cgroup_bpf", "fanotify_perm"), f, strict=True))
               for f in itertools.product((False, True), repeat=3)],
)  # fmt: skip
def test_doctor_plans_the_hook_policy_check_reports(failed: dict[str, bool]) -> None:
    """A deny rule of each operation is enforced by what doctor's plan names for it."""
    checks = {name: Check(not failed.get(name, False), "") for name in probe.CHECKS}
    plan = host.derive_plan(checks)
    caps = HostCapabilities.from_checks(checks)
    for operation in ("exec", "open", "unlink", "rename", "chmod", "chown", "connect"):
        planned = plan.enforcement["network" if operation == "connect" else operation]
        rule = CompiledRule(operation, 0, 0, "r", 0, "p", "enforce", "deny", "audit", "p.toml", 0)
        how = enforcement_for(rule, caps)
        assert planned == (deny_hook(operation, caps) or host.NO_MECHANISM)
        if planned != host.NO_MECHANISM:
            assert how.mechanism == planned, (operation, how)
