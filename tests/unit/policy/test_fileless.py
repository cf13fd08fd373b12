"""``targets.fileless``: the language, the compiled tables, the evaluator, fixtures, and the
mechanism each host gets (issue 9, defect 5)."""

from __future__ import annotations

import dataclasses

import pytest

from agent.errors import PolicyFieldError
from agent.events.model import ExecEvent
from agent.policy.compile import Slot, unpack_masks
from agent.policy.evaluate import Evaluator, Process, request_from_event
from agent.policy.fixtures import load_fixtures, run_fixtures
from agent.policy.mechanisms import HostCapabilities, enforcement_for, judged_in_kernel_at_exec
from agent.policy.model import Rule

from .conftest import Write, compiled_from, judge

FILELESS = """
name = "p"
mode = "{mode}"

[[rules]]
id = "no-fileless"
operation = "exec"
targets.fileless = true
action = "{action}"
{extra}

[[rules]]
id = "no-tmp"
operation = "exec"
targets.paths = ["/tmp/"]
action = "deny"
"""
DEV = HostCapabilities(lsm=False, cgroup_sock=True, fanotify=True, send_signal=True,
                       fileless_exec_hook=True)  # fmt: skip
OLD_DEV = dataclasses.replace(DEV, fileless_exec_hook=False)
STOCK = dataclasses.replace(DEV, lsm=True, fileless_exec_hook=False)


def rule(**targets: object) -> Rule:
    return Rule.from_dict({"id": "r", "operation": targets.pop("operation", "exec"),
                           "action": "deny", "targets": targets})  # fmt: skip


def test_fileless_is_a_target_of_exec_rules_only() -> None:
    assert rule(fileless=True).targets.fileless is True
    assert rule(fileless=True).to_dict()["targets"] == {"fileless": True}
    with pytest.raises(PolicyFieldError, match="applies to operation 'exec' only"):
        rule(operation="open", fileless=True)
    with pytest.raises(PolicyFieldError, match="selects nothing: remove it"):
        rule(fileless=False)
    with pytest.raises(PolicyFieldError, match="a rule of its own, without paths"):
        rule(fileless=True, paths=["/tmp/"])
    with pytest.raises(PolicyFieldError, match="must be true"):
        rule(fileless="yes")


def test_compiled_into_its_own_slot(write: Write) -> None:
    compiled = compiled_from(write(FILELESS.format(mode="enforce", action="kill", extra="")))
    fileless = next(r for r in compiled.rules if r.rule_id == "no-fileless")
    assert fileless.fileless and fileless.paths == ()  # names no file: no fanotify marks
    masks = unpack_masks(next(iter(compiled.maps["masks"].values())))
    assert masks[Slot.EXEC_FILELESS] == 1 << fileless.index
    assert len(masks) == 19


def test_evaluator_matches_fileless_binaries_only(write: Write) -> None:
    compiled = compiled_from(write(FILELESS.format(mode="enforce", action="kill", extra="")))
    assert judge(compiled, "exec", path="memfd:x", fileless=True) == ("kill", "no-fileless")
    assert judge(compiled, "exec", path="/usr/bin/true") == ("allow", None)
    assert judge(compiled, "exec", path="memfd:x") == ("allow", None)  # the name is no path
    # a deleted file under /tmp: both rules match, kill outranks deny
    assert judge(compiled, "exec", path="/tmp/a", fileless=True) == ("kill", "no-fileless")
    assert judge(compiled, "exec", path="/tmp/a") == ("deny", "no-tmp")
    monitor = compiled_from(write(FILELESS.format(mode="monitor", action="deny", extra="")))
    assert judge(monitor, "exec", path="memfd:x", fileless=True) == ("would_deny", "no-fileless")


def test_exec_event_becomes_a_fileless_request(write: Write) -> None:
    event = ExecEvent(ts_ns=1, pid=2, tid=2, ppid=1, uid=0, gid=0, cgroup_id=1, comm="3",
                      exe="memfd:x", filename="/dev/fd/3", argv=("x",), argc=1, cwd="/",
                      fileless=True)  # fmt: skip
    request = request_from_event(event, Process("/usr/bin/python3", 0, 0))
    assert request is not None and request.fileless and request.path == "memfd:x"
    compiled = compiled_from(write(FILELESS.format(mode="enforce", action="kill", extra="")))
    assert Evaluator(compiled).decide(request).rule_id == "no-fileless"


def test_fixture_cases_name_fileless(write: Write) -> None:
    write(FILELESS.format(mode="enforce", action="kill", extra=""), "p.toml")
    fixture = write(
        """
        policies = ["p.toml"]
        [[case]]
        name = "memfd payload"
        process = { exe = "/usr/bin/python3" }
        operation = "exec"
        path = "memfd:payload"
        fileless = true
        expect = "kill"
        rule = "no-fileless"
        [[case]]
        name = "the same name, not fileless"
        process = { exe = "/usr/bin/python3" }
        operation = "exec"
        path = "memfd:payload"
        expect = "allow"
        """,
        "fixtures.toml",
    )
    fixtures = load_fixtures(fixture)
    compiled = compiled_from(*fixtures.policies)
    assert all(o.passed for o in run_fixtures(fixtures, Evaluator(compiled)))


@pytest.mark.parametrize(
    ("host", "action", "extra", "mechanism", "error"),
    [
        (STOCK, "deny", "", "lsm", False),
        (STOCK, "kill", "", "lsm+sigkill", False),
        (DEV, "kill", "", "exec-tracepoint+sigkill", False),
        (DEV, "deny", 'fallback = "kill"', "exec-tracepoint+sigkill", False),
        (DEV, "deny", 'fallback = "audit"', "exec-tracepoint", False),
        (DEV, "deny", "", "None", True),  # no hook denies: the fallback must say what to do
        (DEV, "audit", "", "exec-tracepoint", False),
        (OLD_DEV, "kill", 'fallback = "kill"', "sigkill-after-the-fact", False),
        (OLD_DEV, "audit", "", "tracepoint", False),
    ],
)
def test_mechanism_per_host(
    write: Write, host: HostCapabilities, action: str, extra: str, mechanism: str, error: bool
) -> None:
    compiled = compiled_from(write(FILELESS.format(mode="enforce", action=action, extra=extra)))
    fileless = next(r for r in compiled.rules if r.rule_id == "no-fileless")
    how = enforcement_for(fileless, host)
    assert (str(how.mechanism), how.error is not None) == (mechanism, error), how
    # only the in-kernel tracepoint mechanism makes the enforcer skip the exec events
    assert judged_in_kernel_at_exec(how.mechanism) == mechanism.startswith("exec-tracepoint")
    paths = next(r for r in compiled.rules if r.rule_id == "no-tmp")
    assert not judged_in_kernel_at_exec(enforcement_for(paths, host).mechanism)


def test_lsm_exec_rules_say_the_loader_path_is_judged(write: Write) -> None:
    compiled = compiled_from(write(FILELESS.format(mode="enforce", action="kill", extra="")))
    paths = next(r for r in compiled.rules if r.rule_id == "no-tmp")
    assert "mmap_file" in enforcement_for(paths, STOCK).note
