"""Verdicts from the compiled tables: modes, addresses, ports, subjects, lineage, events."""

from __future__ import annotations

from agent.events.model import ConnectEvent, OpenEvent, TruncateEvent
from agent.policy.compile import CompiledPolicySet
from agent.policy.evaluate import Evaluator, Process, Request, judged_kinds, request_from_event

from .conftest import Write, compiled_from, judge


def one_rule(write: Write, body: str, mode: str = "enforce") -> CompiledPolicySet:
    return compiled_from(write(f'name = "p"\nmode = "{mode}"\n[[rules]]\nid = "r"\n{body}\n'))


def test_monitor_mode_reports_would(write: Write) -> None:
    for action in ("deny", "kill"):
        compiled = one_rule(
            write, f'operation = "exec"\ntargets.paths = ["/tmp/"]\naction = "{action}"', "monitor"
        )
        assert judge(compiled, "exec", path="/tmp/x") == (f"would_{action}", "r")
    compiled = one_rule(
        write, 'operation = "exec"\ntargets.paths = ["/tmp/"]\naction = "audit"', "monitor"
    )
    assert judge(compiled, "exec", path="/tmp/x") == ("audit", "r")


def test_ipv4_mapped_ipv6_matches_ipv4_rule(write: Write) -> None:
    compiled = one_rule(
        write, 'operation = "connect"\ntargets.addresses = ["169.254.169.254/32"]\naction = "deny"'
    )
    for address in ("169.254.169.254", "::ffff:169.254.169.254", "::FFFF:A9FE:A9FE"):
        assert judge(compiled, "connect", address=address, port=80) == ("deny", "r")
    assert judge(compiled, "connect", address="169.254.169.255", port=80) == ("allow", None)
    assert judge(compiled, "connect", address="::169.254.169.254", port=80) == ("allow", None)


def test_cidr_port_range_and_protocol(write: Write) -> None:
    compiled = one_rule(
        write,
        'operation = "connect"\naction = "deny"\n'
        'targets = { addresses = ["10.0.0.0/8", "2001:db8::/32"], ports = [22, "8000-8999"], '
        'protocol = "tcp" }',
    )
    hit = {"port": 8500, "protocol": "tcp"}
    assert judge(compiled, "connect", address="10.255.0.1", **hit) == ("deny", "r")
    assert judge(compiled, "connect", address="2001:db8:1::5", **hit) == ("deny", "r")
    assert judge(compiled, "connect", address="11.0.0.1", **hit)[0] == "allow"
    assert judge(compiled, "connect", address="10.0.0.1", port=9000, protocol="tcp")[0] == "allow"
    assert judge(compiled, "connect", address="10.0.0.1", port=22, protocol="udp")[0] == "allow"
    assert judge(compiled, "connect", address="10.0.0.1", port=22, protocol="tcp")[0] == "deny"


def test_tcp_names_mptcp_and_udp_names_udplite(write: Write) -> None:
    """MPTCP falls back to TCP with a TCP peer, UDP-Lite reaches the same port numbers: a rule's
    protocol names both (as the kernel guard's proto_family does; tests/kernel/test_bypass.py)."""
    for protocol, also, other in (("tcp", "mptcp", "udplite"), ("udp", "udplite", "mptcp")):
        compiled = one_rule(
            write,
            'operation = "connect"\naction = "deny"\n'
            f'targets = {{ addresses = ["10.0.0.0/8"], ports = [53], protocol = "{protocol}" }}',
        )
        for name in (protocol, also):
            assert judge(compiled, "connect", address="10.0.0.1", port=53, protocol=name)[0] == (
                "deny"
            ), name
        assert judge(compiled, "connect", address="10.0.0.1", port=53, protocol=other)[0] == (
            "allow"
        )
        assert judge(compiled, "connect", address="10.0.0.1", port=53, protocol="sctp")[0] == (
            "allow"
        )


def test_subjects_descendants_except_cgroup_ids(write: Write) -> None:
    compiled = one_rule(
        write,
        'operation = "open"\ntargets.paths = ["/data/"]\naction = "deny"\n'
        '[rules.subjects]\nexe = ["/usr/sbin/nginx"]\ndescendants = true\ngid = [33]\n'
        '[rules.subjects.except]\nexe = ["/usr/bin/logrotate"]\ncgroup = ["/system.slice/"]\n',
    )
    req = {"path": "/data/x", "access": ("read",), "gid": 33}
    assert judge(compiled, "open", exe="/usr/sbin/nginx", **req)[0] == "deny"
    assert (
        judge(compiled, "open", exe="/usr/bin/dash", ancestors=("/usr/sbin/nginx",), **req)[0]
        == "deny"
    )
    assert judge(compiled, "open", exe="/usr/bin/dash", **req)[0] == "allow"
    assert judge(compiled, "open", exe="/usr/sbin/nginx", **{**req, "gid": 0})[0] == "allow"
    # except needs both its fields: logrotate AND inside /system.slice/
    excepted = {"exe": "/usr/bin/logrotate", "ancestors": ("/usr/sbin/nginx",)}
    assert (
        judge(compiled, "open", cgroup="/system.slice/cron.service", **excepted, **req)[0]
        == "allow"
    )
    assert (
        judge(compiled, "open", cgroup="/user.slice/user-0.slice", **excepted, **req)[0] == "deny"
    )


def test_everyone_except(write: Write) -> None:
    compiled = one_rule(
        write,
        'operation = "open"\naccess = ["write"]\ntargets.paths = ["/etc/shadow"]\naction = "deny"\n'
        'subjects.except.exe = ["/usr/sbin/chpasswd"]',
    )
    assert (
        judge(compiled, "open", exe="/usr/bin/vi", path="/etc/shadow", access=("write",))[0]
        == "deny"
    )
    assert (
        judge(compiled, "open", exe="/usr/sbin/chpasswd", path="/etc/shadow", access=("write",))[0]
        == "allow"
    )
    assert (
        judge(compiled, "open", exe="/usr/bin/vi", path="/etc/shadow", access=("read",))[0]
        == "allow"
    )


def test_rename_matches_source_or_destination(write: Write) -> None:
    compiled = one_rule(
        write,
        'operation = "rename"\ntargets.paths = ["/etc/shadow"]\n'
        'action = "deny"\nfallback = "audit"',
    )
    assert judge(compiled, "rename", path="/tmp/a", new_path="/etc/shadow")[0] == "deny"
    assert judge(compiled, "rename", path="/etc/shadow", new_path="/tmp/a")[0] == "deny"
    assert judge(compiled, "rename", path="/tmp/a", new_path="/tmp/b")[0] == "allow"


def test_long_paths_hit_prefixes_not_exact_entries(write: Write) -> None:
    long_dir = "/d/" + "x" * 240 + "/"
    compiled = one_rule(
        write, f'operation = "unlink"\ntargets.paths = ["{long_dir}", "/d/"]\naction = "audit"'
    )
    assert judge(compiled, "unlink", path=long_dir + "y" * 300) == ("audit", "r")


def test_verdict_carries_digest_and_policy(write: Write) -> None:
    compiled = one_rule(write, 'operation = "unlink"\ntargets.paths = ["/x"]\naction = "audit"')
    event = OpenEvent(
        ts_ns=0,
        pid=1,
        tid=1,
        ppid=0,
        uid=0,
        gid=0,
        cgroup_id=0,
        comm="x",
        path="/x",
        path_source="kernel",
        result=0,
        flags=0,
        mode=0,
        access=("read",),
    )
    request = request_from_event(event, Process("/usr/bin/cat", 0, 0))
    assert request is not None and request.operation == "open" and request.access == ("read",)
    verdict = Evaluator(compiled).decide(request)
    assert verdict.rule_id is None and verdict.digest == compiled.digest
    connect = ConnectEvent(
        ts_ns=0,
        pid=1,
        tid=1,
        ppid=0,
        uid=0,
        gid=0,
        cgroup_id=0,
        comm="x",
        family="ipv4",
        protocol="tcp",
        local_addr="10.0.0.2",
        local_port=40000,
        remote_addr="1.2.3.4",
        remote_port=443,
        result=0,
    )
    request = request_from_event(connect, Process("/usr/bin/curl", 0, 0))
    assert request is not None and (request.address, request.port) == ("1.2.3.4", 443)


def test_the_unspecified_peer_is_judged_as_the_loopback_it_reaches(write: Write) -> None:
    """The kernel sends a connect to 0.0.0.0 to 127.0.0.1, and to "::" to ::1 (or to
    ::ffff:127.0.0.1 from a socket bound v4-mapped): the guard judges those, so must this."""
    rule = 'operation = "connect"\ntargets.addresses = ["127.0.0.1"]\naction = "deny"'
    v4 = one_rule(write, rule)
    for address in ("0.0.0.0", "::ffff:0.0.0.0", "::", "127.0.0.1"):
        assert judge(v4, "connect", address=address, port=1) == ("deny", "r"), address
    assert judge(v4, "connect", address="127.0.0.2", port=1) == ("allow", None)
    v6 = one_rule(write, 'operation = "connect"\ntargets.addresses = ["::1"]\naction = "deny"')
    assert judge(v6, "connect", address="::", port=1) == ("deny", "r")
    assert judge(v6, "connect", address="0.0.0.0", port=1) == ("allow", None)
    # bind to the unspecified address means every local address, not the loopback
    bind = one_rule(write, 'operation = "bind"\ntargets.addresses = ["127.0.0.1"]\naction = "deny"')
    assert judge(bind, "bind", address="0.0.0.0", port=1) == ("allow", None)


def test_truncate_events_are_judged_by_open_rules_guarding_truncate(write: Write) -> None:
    compiled = one_rule(
        write, 'operation = "open"\naccess = ["truncate"]\ntargets.paths = ["/d/"]\naction = "deny"'
    )
    common = dict(ts_ns=0, pid=1, tid=1, ppid=0, uid=0, gid=0, cgroup_id=0, comm="c")
    ev = TruncateEvent(path="/d/f", path_source="kernel", result=0, length=0, **common)
    request = request_from_event(ev, Process("/usr/bin/x", 0, 0))
    assert request is not None and (request.operation, request.access) == ("open", ("truncate",))
    assert Evaluator(compiled).decide(request).effective == "deny"
    assert judged_kinds("open", ("write", "truncate")) == {"open", "truncate"}
    assert judged_kinds("open", ("write",)) == {"open"}
    assert judged_kinds("unlink", ()) == {"unlink"}


def test_an_unreadable_binary_is_judged_fail_closed(write: Write) -> None:
    """/proc/PID/exe refused (agent without CAP_SYS_PTRACE): the binary may be any binary, so
    deny rules scoped to a binary hold, their exceptions do not exempt, and no allow rule scoped
    to a binary lets it through."""
    compiled = compiled_from(
        write(
            'name = "p"\nmode = "enforce"\n'
            '[[rules]]\nid = "apt-may"\noperation = "open"\ntargets.paths = ["/etc/apt/"]\n'
            'action = "allow"\nsubjects.exe = ["/usr/bin/apt"]\n'
            '[[rules]]\nid = "vim-not"\noperation = "open"\ntargets.paths = ["/etc/"]\n'
            'action = "deny"\nsubjects.exe = ["/usr/bin/vim"]\n'
            '[[rules]]\nid = "all-but-sshd"\noperation = "open"\n'
            'targets.paths = ["/srv/ssh/"]\naction = "deny"\n'
            'subjects.except.exe = ["/usr/sbin/sshd"]\n'
            '[[rules]]\nid = "anyone-tmp"\noperation = "open"\ntargets.paths = ["/tmp/"]\n'
            'action = "allow"\n'
        )
    )
    evaluator = Evaluator(compiled)

    def verdict(path: str, exe: str | None, known: bool) -> tuple[str, str | None]:
        process = Process(exe, 1000, 1000, exe_known=known)
        v = evaluator.decide(Request("open", process, path=path, access=("read",)))
        return v.effective, v.rule_id

    # known binaries: as written
    assert verdict("/etc/passwd", "/usr/bin/cat", True) == ("allow", None)
    assert verdict("/etc/apt/sources.list", "/usr/bin/apt", True) == ("allow", "apt-may")
    assert verdict("/etc/apt/sources.list", "/usr/bin/vim", True) == ("deny", "vim-not")
    assert verdict("/srv/ssh/sshd_config", "/usr/sbin/sshd", True) == ("allow", None)
    # unknown binary: every deny's exe condition holds, no exception or exe-scoped allow helps
    assert verdict("/etc/passwd", None, False) == ("deny", "vim-not")
    assert verdict("/etc/apt/sources.list", None, False) == ("deny", "vim-not")
    assert verdict("/srv/ssh/sshd_config", None, False) == ("deny", "all-but-sshd")
    # what no rule scoped to a binary decides is unchanged
    assert verdict("/tmp/x", None, False) == ("allow", "anyone-tmp")
    assert verdict("/var/log/x", None, False) == ("allow", None)
    # no binary at all (a kernel thread) is known to be none: judged as such
    assert verdict("/etc/passwd", None, True) == ("allow", None)


def test_an_unreadable_ancestor_is_judged_fail_closed(write: Write) -> None:
    compiled = one_rule(
        write,
        'operation = "open"\ntargets.paths = ["/data/"]\naction = "deny"\n'
        '[rules.subjects]\nexe = ["/usr/sbin/nginx"]\ndescendants = true\n',
    )
    evaluator = Evaluator(compiled)
    known = Process("/bin/sh", 0, 0, ancestors=("/bin/sh", "/usr/bin/bash"))
    unknown = Process("/bin/sh", 0, 0, ancestors=("/bin/sh",), ancestry_known=False)
    for process, expected in ((known, "allow"), (unknown, "deny")):
        request = Request("open", process, path="/data/x", access=("read",))
        assert evaluator.decide(request).effective == expected, process
