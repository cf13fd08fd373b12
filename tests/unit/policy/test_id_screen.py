"""``Evaluator.id_screen``: what the caller's uid and gid alone prove of an operation's rules.

The native fanotify filter answers ALLOW without Python where the screen says the caller's ids
admit no rule of the operation (native/stfanotify.c). That is sound only if no request of such
a caller, whatever its object, binary, cgroup, ancestry or access, matches a rule: proved here
on generated policies against the evaluator itself.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st

from agent.policy.compile import compile_policy_set
from agent.policy.evaluate import Evaluator, Process, Request
from agent.policy.source import load_policy_set

from .conftest import Write, compiled_from

IDS = [0, 33, 1000, 65534]
PATHS = ["/usr/bin/curl", "/bin/", "/tmp/", "/etc/shadow", "/etc/sudoers*"]
EXES = ["/usr/bin/python3", "/usr/sbin/nginx", "/usr/bin/apt"]
CGROUPS = ["/system.slice/", "/user.slice/user-1000.slice/"]
ACCESS = ["read", "write", "create", "truncate"]


def _list(values: list[object]) -> str:
    return json.dumps(values)


@st.composite
def subjects(draw: st.DrawFn, table: str) -> str:
    """A ``[rules.subjects]`` (or ``.except``) table: any mix of uid, gid, exe, cgroup."""
    lines = []
    for key, pool in (("uid", IDS), ("gid", IDS), ("exe", EXES), ("cgroup", CGROUPS)):
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
            lines.append(f"{key} = {_list(chosen)}")
    if table == "rules.subjects" and draw(st.booleans()):
        lines.append("descendants = true")
    return f"[{table}]\n" + "\n".join(lines) + "\n" if lines else ""


@st.composite
def rule(draw: st.DrawFn, n: int) -> str:
    operation = draw(st.sampled_from(["exec", "open"]))
    paths = draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3, unique=True))
    action = draw(st.sampled_from(["deny", "kill", "audit", "allow"]))
    text = f'[[rules]]\nid = "r{n}"\noperation = "{operation}"\ntargets.paths = {_list(paths)}\n'
    if operation == "open":
        access = draw(st.lists(st.sampled_from(ACCESS), min_size=1, max_size=4, unique=True))
        text += f"access = {_list(access)}\n"
    text += f'action = "{action}"\n'
    return text + draw(subjects("rules.subjects")) + draw(subjects("rules.subjects.except"))


@st.composite
def policy(draw: st.DrawFn) -> str:
    mode = draw(st.sampled_from(["enforce", "monitor"]))
    rules = [draw(rule(i)) for i in range(draw(st.integers(1, 6)))]
    return f'name = "p"\nmode = "{mode}"\n' + "\n".join(rules)


@st.composite
def request(draw: st.DrawFn, operation: str) -> Request:
    process = Process(
        exe=draw(st.sampled_from([*EXES, "/usr/bin/x", None])),
        uid=draw(st.sampled_from([*IDS, 7])),
        gid=draw(st.sampled_from([*IDS, 7])),
        cgroup=draw(st.sampled_from([*CGROUPS, "/init.scope", None])),
        ancestors=tuple(draw(st.lists(st.sampled_from(EXES), max_size=2))),
        exe_known=draw(st.booleans()),
        ancestry_known=draw(st.booleans()),
    )
    path = draw(st.sampled_from(["/usr/bin/curl", "/bin/sh", "/tmp/x", "/etc/shadow", "/x"]))
    access: tuple[str, ...] = ()
    if operation == "open":
        access = tuple(draw(st.lists(st.sampled_from(ACCESS), min_size=1, unique=True)))
    fileless = operation == "exec" and draw(st.booleans())
    return Request(operation, process, path=path, access=access, fileless=fileless)


@settings(max_examples=300, deadline=None)
@given(policy(), st.data())
def test_a_caller_the_screen_rules_out_matches_no_rule(text: str, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.toml"
        path.write_text(text)
        policy_set, findings = load_policy_set([path])
    if findings:  # a combination the language refuses (the loader says why): not a policy
        return
    evaluator = Evaluator(compile_policy_set(policy_set))
    for operation in ("exec", "open"):
        screen = evaluator.id_screen(operation)
        for _ in range(8):
            req = data.draw(request(operation))
            if not screen.admits(req.process.uid, req.process.gid):
                event(f"{operation}: ruled out by ids")
                assert evaluator.matching(req) == 0, (text, req)


def test_the_screen_rules_out_exactly_the_ids_no_rule_can_take(write: Write) -> None:
    compiled = compiled_from(
        write(
            'name = "p"\nmode = "enforce"\n'
            '[[rules]]\nid = "www"\noperation = "exec"\ntargets.paths = ["/bin/sh"]\n'
            'action = "deny"\n[rules.subjects]\nuid = [33]\n'
            '[[rules]]\nid = "staff"\noperation = "exec"\ntargets.paths = ["/usr/bin/gcc"]\n'
            'action = "deny"\n[rules.subjects]\ngid = [50]\nexe = ["/usr/bin/make"]\n'
            '[[rules]]\nid = "w"\noperation = "open"\ntargets.paths = ["/etc/shadow"]\n'
            'access = ["write"]\naction = "deny"\n'
        )
    )
    evaluator = Evaluator(compiled)
    exec_screen = evaluator.id_screen("exec")
    assert not exec_screen.admits(0, 0)  # root: neither uid 33 nor gid 50
    assert exec_screen.admits(33, 0) and exec_screen.admits(0, 50)
    sh = Request("exec", Process("/usr/bin/bash", 33, 33), path="/bin/sh")
    assert evaluator.decide(sh).rule_id == "www"  # what the screen lets through is judged
    # an open rule with no subject admits everyone: the screen proves nothing there
    assert evaluator.id_screen("open").admits(0, 0)
    assert not evaluator.id_screen("connect").admits(0, 0)  # no connect rule at all
