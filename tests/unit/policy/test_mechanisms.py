"""The mechanism per rule and host (DESIGN.md section 3): never a silent downgrade."""

from __future__ import annotations

from pathlib import Path

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


def open_rule(action: str, access: tuple[str, ...], fallback: str | None = None,
              mode: str = "enforce") -> CompiledRule:  # fmt: skip
    return CompiledRule("open", 0, 0, "r", 0, "p", mode, action, fallback, "p.toml", 0, access)


@pytest.mark.parametrize(
    ("host", "action", "fallback", "mode", "main", "call", "after"),
    [
        (DEV, "deny", "kill", "enforce", "fanotify", "sigkill-after-the-fact", True),
        (DEV, "kill", "kill", "enforce", "fanotify+sigkill", "sigkill-after-the-fact", True),
        (DEV, "deny", "audit", "enforce", "fanotify", "tracepoint", True),
        (STOCK, "deny", None, "enforce", "lsm", "lsm", False),
        (STOCK, "kill", None, "enforce", "lsm+sigkill", "lsm+sigkill", False),
        (DEV, "audit", None, "enforce", "tracepoint", "tracepoint", False),
        (DEV, "deny", None, "monitor", "tracepoint", "tracepoint", False),
    ],
)
def test_truncate_call_of_an_open_rule_has_its_own_mechanism(
    host: HostCapabilities, action: str, fallback: str | None, mode: str, main: str, call: str,
    after: bool,
) -> None:  # fmt: skip
    got = enforcement_for(open_rule(action, ("write", "truncate"), fallback, mode), host)
    assert got.error is None and got.mechanism == main
    assert got.truncate_call is not None and got.for_event("open") is got
    truncate = got.for_event("truncate")
    assert (truncate.mechanism, truncate.after_the_fact) == (call, after)
    assert f"truncate(2)/ftruncate(2): {call}" in got.note
    assert got.to_dict()["truncate_call"]["mechanism"] == call


def test_truncate_without_a_deny_hook_is_an_error_without_fallback() -> None:
    got = enforcement_for(open_rule("deny", ("truncate",)), DEV)
    assert got.mechanism == "fanotify"  # the O_TRUNC open is still denied before the effect
    assert (
        got.error is not None
        and (
            'no deny mechanism for truncate(2)/ftruncate(2) on this host: set fallback = "kill" or '
            '"audit"'
        )
        in got.error
    )
    with pytest.raises(MechanismUnavailable, match="truncate"):
        require_enforceable((got,))


def test_open_rules_not_guarding_truncate_have_no_truncate_call() -> None:
    got = enforcement_for(open_rule("deny", ("write", "create")), DEV)
    assert got.truncate_call is None and got.for_event("truncate") is got


def test_connect_rules_say_what_the_cgroup_hooks_judge_and_what_they_do_not() -> None:
    for action in ("deny", "kill"):
        got = enforcement_for(rule("connect", action), DEV)
        assert "judged at sendmsg" in got.note and "raw sockets" in got.note, got.note


def test_in_a_container_a_kill_by_the_kernels_pid_is_refused_not_aimed_elsewhere() -> None:
    """Outside the host's PID namespace a kernel pid names another process: every rule that
    needs a kill sent from userspace is an error in enforce mode; in-kernel kills, denies and
    audit fallbacks are not affected."""
    contained = HostCapabilities(
        lsm=False, cgroup_sock=True, fanotify=True, send_signal=True, host_pids=False
    )
    for op, action, fallback in (("unlink", "deny", "kill"), ("exec", "deny", "kill"),
                                 ("open", "deny", "kill")):  # fmt: skip
        got = enforcement_for(rule(op, action, fallback), contained)
        assert got.error and "not in the host's PID namespace" in got.error, (op, got)
        assert enforcement_for(rule(op, action, fallback), DEV).error is None
        assert enforcement_for(rule(op, action, fallback, "monitor"), contained).error is None
    unaffected = (("exec", "deny", "audit"), ("connect", "kill", None),
                  ("unlink", "deny", "audit"), ("exec", "kill", "audit"))  # fmt: skip
    for op, action, fallback in unaffected:
        assert enforcement_for(rule(op, action, fallback), contained).error is None, op


def net_rule(
    op: str, ports: tuple[int | str, ...] | None, protocol: str | None = None
) -> CompiledRule:
    return CompiledRule(op, 0, 0, "r", 0, "p", "enforce", "deny", None, "p.toml", 0,
                        ports=ports, protocol=protocol)  # fmt: skip


def test_a_bind_rule_on_ports_the_kernel_may_pick_says_so_and_a_privileged_one_does_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """listen/connect/sendto on an unbound socket take a port of
    ip_local_port_range without the bind hook (tests/kernel/test_bypass_reported.py)."""
    from agent.policy import mechanisms

    sysctl = tmp_path / "range"
    sysctl.write_text("32768\t60999\n")
    monkeypatch.setattr(mechanisms, "_PORT_RANGE", str(sysctl))
    for ports in ((40000,), ("30000-33000",), None):
        got = enforcement_for(net_rule("bind", ports), DEV)
        assert any("ip_local_port_range" in g for g in got.gaps), (ports, got)
        assert "port the kernel picks" in got.note and not got.error, got
    for ports in (("1-1023",), (8080, "20000-32767")):
        got = enforcement_for(net_rule("bind", ports), DEV)
        assert not got.gaps and "kernel picks" not in got.note, (ports, got)
    sysctl.write_text("1024 65535\n")
    assert enforcement_for(net_rule("bind", (8080,)), DEV).gaps


def test_a_connect_rule_names_the_source_route_it_cannot_see() -> None:
    assert "source-route" in enforcement_for(net_rule("connect", None), DEV).note


def test_prefix_and_tree_rules_name_the_handle_and_path_max_gaps() -> None:
    """Directory marks miss an open by handle of an uncached dentry and directories deeper
    than PATH_MAX (tests/kernel/test_bypass_reported.py); an exact file's inode mark does not."""
    for op in ("open", "exec"):
        for paths in (("/srv/a/",), ("/srv/b*",)):
            r = CompiledRule(op, 0, 0, "r", 0, "p", "enforce", "deny", "kill", "p.toml", 0,
                             access=("write",) if op == "open" else (), paths=paths)  # fmt: skip
            gaps = enforcement_for(r, DEV).gaps
            assert any("open_by_handle_at" in g for g in gaps), gaps
            assert any("PATH_MAX" in g for g in gaps), gaps
        access = ("write",) if op == "open" else ()
        exact = CompiledRule(op, 0, 0, "r", 0, "p", "enforce", "deny", "kill", "p.toml", 0,
                             access=access, paths=("/srv/f",))  # fmt: skip
        gaps = enforcement_for(exact, DEV).gaps
        assert not any("open_by_handle_at" in g or "PATH_MAX" in g for g in gaps), gaps


def _open_rule(
    access: tuple[str, ...], paths: tuple[str, ...], by_exe: bool = False
) -> CompiledRule:
    return CompiledRule("open", 0, 0, "r", 0, "p", "enforce", "deny", "kill", "p.toml", 0,
                        access=access, paths=paths, by_exe=by_exe)  # fmt: skip


def test_open_rules_name_what_happens_without_an_open() -> None:
    """Red team 2026-12-08: mknod, link, rename and O_TMPFILE+linkat make files in a
    create-guarded tree, a rename replaces a write-guarded file, fallocate shortens a file
    whose rule guards only truncate; with BPF-LSM path_mknod judges mknod."""

    def gaps(rule: CompiledRule, host: HostCapabilities) -> str:
        return " ".join(enforcement_for(rule, host).gaps)

    create = _open_rule(("create",), ("/srv/t/",))
    assert "mknod(2), link(2)" in gaps(create, DEV) and "O_TMPFILE" in gaps(create, DEV)
    assert "mknod" not in gaps(create, STOCK) and "link(2)" in gaps(create, STOCK)
    assert "RENAME_EXCHANGE" in gaps(_open_rule(("write",), ("/srv/f",)), STOCK)
    assert "fallocate" in gaps(_open_rule(("truncate",), ("/srv/f",)), DEV)
    assert "fallocate" not in gaps(_open_rule(("write", "truncate"), ("/srv/f",)), DEV)
    assert not enforcement_for(_open_rule(("read",), ("/srv/f",)), STOCK).gaps


def test_prefix_rules_name_a_rename_while_judged_and_exact_ones_do_not() -> None:
    for paths, named in ((("/srv/t/",), True), (("/srv/p*",), True), (("/srv/f",), False)):
        got = " ".join(enforcement_for(_open_rule(("read",), paths), DEV).gaps)
        assert ("renamed out of the rule's path" in got) is named, (paths, got)


def test_a_rule_that_names_an_exe_names_the_forged_exe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every hook reads the exe from the process's mm, which PR_SET_MM_MAP replaces
    (tests/kernel/test_bypass_reported.py); who can do it depends on user namespaces."""
    from agent.policy import mechanisms

    for host in (DEV, STOCK):
        got = enforcement_for(_open_rule(("write",), ("/srv/f",), by_exe=True), host)
        assert any("PR_SET_MM" in g for g in got.gaps) and "PR_SET_MM" in got.note, got
        plain = enforcement_for(_open_rule(("write",), ("/srv/f",)), host)
        assert not any("PR_SET_MM" in g for g in plain.gaps)
    for open_to_all, who in ((True, "any user here"), (False, "root here")):
        monkeypatch.setattr(mechanisms, "_userns_for_all", lambda v=open_to_all: v)
        got = enforcement_for(_open_rule(("write",), ("/srv/f",), by_exe=True), DEV)
        assert any(who in g for g in got.gaps), got.gaps


def test_a_connect_rule_names_what_a_kernel_without_the_egress_judge_leaves_open() -> None:
    """Where cgroup_skb programs cannot name their task (Debian 12's 6.1), the guard loads
    without its egress judge: a connected UDP-Lite socket and a ping socket's sendto reach
    the address unjudged, and policy check --host says so."""
    import dataclasses

    old = dataclasses.replace(DEV, cgroup_egress=False)
    got = enforcement_for(net_rule("connect", None), old)
    assert any("UDP-Lite" in g and "ping socket" in g for g in got.gaps), got.gaps
    assert "but not UDP-Lite" in got.note
    assert not any("UDP-Lite" in g for g in enforcement_for(net_rule("connect", None), DEV).gaps)


def test_prefix_rules_name_hard_links_made_outside_them() -> None:
    """A hard link outside a tree is another name (policies/README "Hard links"), on every
    host: named for prefix and tree rules (red team 2026-12-08), not for exact ones, which
    match the inode."""
    for host in (DEV, STOCK):
        tree = " ".join(enforcement_for(_open_rule(("write",), ("/srv/t/",)), host).gaps)
        exact = " ".join(enforcement_for(_open_rule(("write",), ("/srv/f",)), host).gaps)
        assert "hard link made outside" in tree and "hard link made outside" not in exact
