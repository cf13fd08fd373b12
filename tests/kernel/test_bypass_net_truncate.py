"""Kernel e2e, attacker's view: the same effect as a guarded operation by another call.

- A ``connect`` rule names "reach this address": a UDP datagram sent without connect(2)
  (sendto, sendmsg with msg_name, sendmmsg, a connected socket sending elsewhere, a v4-mapped
  v6 destination), TCP fast open, and the addresses that mean the same host (0.0.0.0, "::",
  127.0.0.2 inside a /8) must get the verdict ``policy test`` gives. Raw sockets are not judged:
  ``policy check --host`` says so, and a test proves the note true.
- An ``open`` rule guarding ``truncate`` names "truncate the file": truncate(2) and
  ftruncate(2) do it without an open. Without BPF-LSM no hook denies them: they are journaled,
  the rule's ``fallback`` acts after the fact, and without one the rule is an error in enforce
  mode. With BPF-LSM (tests/vm) path_truncate denies them.

One agent for the module, its policy scoped to ports and paths this module created and its
network guard attached to a cgroup this module created; every process it judges is started
here, and only those are killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.enforce.guard import cgroup2_root
from agent.policy.check import check
from agent.policy.evaluate import Evaluator, Process, Request
from agent.policy.mechanisms import host_capabilities
from tests.kernel.test_enforce import PY, SLOW, Env, Listener, free_port

pytestmark = pytest.mark.kernel

NET_POLICY = """
name = "bypass-net"
mode = "enforce"

[[rules]]
id = "udp-deny"
operation = "connect"
targets.addresses = ["127.0.0.1/32", "::1/128"]
targets.ports = [{udp_deny}]
targets.protocol = "udp"
action = "deny"

[[rules]]
id = "udp-kill"
operation = "connect"
targets.addresses = ["127.0.0.0/8"]
targets.ports = [{udp_kill}]
action = "kill"

[[rules]]
id = "udp-audit"
operation = "connect"
targets.ports = [{udp_audit}]
targets.protocol = "udp"
action = "audit"

[[rules]]
id = "tfo-deny"
operation = "connect"
targets.addresses = ["127.0.0.1/32"]
targets.ports = [{tfo}]
targets.protocol = "tcp"
action = "deny"

[[rules]]
id = "host-32"
description = "one loopback address: 0.0.0.0 and :: reach it too, 127.0.0.2 is another address"
operation = "connect"
targets.addresses = ["127.0.0.1/32", "::1/128"]
targets.ports = [{alias32}]
action = "deny"

[[rules]]
id = "host-8"
operation = "connect"
targets.addresses = ["127.0.0.0/8"]
targets.ports = [{alias8}]
action = "deny"

[[rules]]
id = "any-port"
description = "two addresses only this module uses, by any protocol (ICMP too)"
operation = "connect"
targets.addresses = ["127.0.0.9/32", "fd00:5ea1::9/128"]
action = "deny"
"""

NET_MONITOR = """
name = "bypass-net-monitor"
mode = "monitor"

[[rules]]
id = "udp-monitor"
operation = "connect"
targets.ports = [{udp_monitor}]
action = "deny"
"""

FILE_POLICY = """
name = "bypass-truncate"
mode = "enforce"

[[rules]]
id = "truncate-kill"
description = "truncating below trunc-kill/: O_TRUNC opens denied, truncate(2) killed after"
operation = "open"
access = ["truncate"]
targets.paths = ["{work}/trunc-kill/"]
action = "deny"
fallback = "kill"

[[rules]]
id = "truncate-audit"
description = "without BPF-LSM truncate(2) here is audited (fallback)"
operation = "open"
access = ["write", "truncate"]
targets.paths = ["{work}/trunc-audit/"]
action = "deny"
fallback = "audit"

[[rules]]
id = "truncate-watched"
operation = "open"
access = ["truncate"]
targets.paths = ["{work}/watched.txt"]
action = "audit"
"""

NO_FALLBACK = """
name = "truncate-no-fallback"
mode = "enforce"

[[rules]]
id = "truncate-no-fallback"
operation = "open"
access = ["write", "truncate"]
targets.paths = ["{work}/nofallback/"]
action = "deny"
"""

UDP_PORTS = ("udp_deny", "udp_kill", "udp_audit", "udp_monitor", "udp_free", "udp_quiet")
#: files the truncate tests empty, made before the agent starts (the rules guard writing them)
TRUNCATED = ("trunc-kill/truncate.txt", "trunc-kill/ftruncate.txt", "trunc-kill/relative.txt",
             "trunc-kill/open.txt", "trunc-audit/f.txt", "outside/f.txt")  # fmt: skip
TCP_PORTS = ("tfo", "alias32", "alias8", "tcp_free")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("bypass").resolve()
    work = root / "work"
    for sub in ("trunc-kill", "trunc-audit", "outside"):
        (work / sub).mkdir(parents=True)
    (work / "watched.txt").write_text("watched\n")
    for name in TRUNCATED:
        (work / name).write_text("content\n")
    ports = {name: free_udp_port() for name in UDP_PORTS}
    ports.update({name: free_port() for name in TCP_PORTS})
    policies = root / "policies"
    policies.mkdir()
    (policies / "net.toml").write_text(NET_POLICY.format(**ports))
    (policies / "net-monitor.toml").write_text(NET_MONITOR.format(**ports))
    (policies / "truncate.toml").write_text(FILE_POLICY.format(work=work))
    cgroup = cgroup2_root() / f"sealtrail-bypass-{os.getpid()}"
    cgroup.mkdir()
    env = Env(root, work, root / "journal", root / "keys", policies, root / "run", cgroup,
              None, ports, host_capabilities().lsm)  # type: ignore[arg-type]  # fmt: skip
    with env.running():
        yield env


@pytest.fixture(scope="module")
def evaluator(env: Env) -> Evaluator:
    """What ``sealtrail policy test`` judges with: the same compiled set as the agent."""
    report = check([env.policies])
    assert report.compiled is not None, report.findings
    return Evaluator(report.compiled)


def policy_test(evaluator: Evaluator, address: str, port: int, protocol: str) -> str:
    process = Process(exe=os.path.realpath(PY), uid=os.getuid(), gid=os.getgid())
    request = Request("connect", process, address=address, port=port, protocol=protocol)
    return evaluator.decide(request).effective


# ---- UDP without connect ----

SEND = textwrap.dedent(
    """
    import ctypes, socket, struct, sys
    how, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)

    def sockaddr():
        if fam == socket.AF_INET:
            return struct.pack("=H", fam) + struct.pack("!H", port) + socket.inet_aton(host) * 3
        return (struct.pack("=H", fam) + struct.pack("!HI", port, 0)
                + socket.inet_pton(fam, host) + bytes(4))

    def sendmmsg(n):
        class iovec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
        class msghdr(ctypes.Structure):
            _fields_ = [("name", ctypes.c_char_p), ("namelen", ctypes.c_uint32),
                        ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                        ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                        ("flags", ctypes.c_int)]
        class mmsghdr(ctypes.Structure):
            _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
        payload = ctypes.create_string_buffer(b"x")
        iov = iovec(ctypes.cast(payload, ctypes.c_void_p), 1)
        name = sockaddr()
        msgs = (mmsghdr * n)()
        for m in msgs:
            m.hdr.name, m.hdr.namelen = name, len(name)
            m.hdr.iov, m.hdr.iovlen = ctypes.pointer(iov), 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.sendmmsg(s.fileno(), msgs, n, 0) < 0:
            raise OSError(ctypes.get_errno(), "sendmmsg")

    try:
        if how == "sendto":
            s.sendto(b"x", (host, port))
        elif how == "sendmsg":
            s.sendmsg([b"x"], [], 0, (host, port))
        elif how == "sendmmsg":
            sendmmsg(2)
        elif how == "connected":  # connected to an allowed port, then sending elsewhere
            s.connect((host, int(sys.argv[4])))
            s.send(b"ok")
            s.sendto(b"x", (host, port))
        print("sent")
    except OSError as e:
        print("errno", e.errno)
    """
)


class Receiver:
    """A UDP socket on the dual-stack wildcard: it gets what reaches the port by any address."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind(("::", port))
        self.sock.settimeout(0.3)

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(64))
            except (TimeoutError, BlockingIOError):
                return out

    def close(self) -> None:
        self.sock.close()


def send(env: Env, how: str, host: str, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return env.in_cgroup([PY, "-c", SEND, how, host, str(port), *extra])


@pytest.mark.parametrize(
    ("how", "host"),
    [
        ("sendto", "127.0.0.1"),
        ("sendto", "::ffff:127.0.0.1"),  # a v4 destination on an AF_INET6 socket
        ("sendto", "::1"),
        ("sendmsg", "127.0.0.1"),  # msg_name
        ("sendmmsg", "127.0.0.1"),
        ("sendmmsg", "::ffff:127.0.0.1"),
    ],
)
def test_unconnected_udp_to_a_denied_address_is_eperm(
    env: Env, evaluator: Evaluator, how: str, host: str
) -> None:
    port = env.ports["udp_deny"]
    assert policy_test(evaluator, host, port, "udp") == "deny"
    rx = Receiver(port)
    try:
        r = send(env, how, host, port)
        assert r.stdout.strip() == "errno 1", r  # EPERM
        assert rx.received() == []
    finally:
        rx.close()
    v = env.verdict("udp-deny", action="deny")
    assert v["mechanism"] == "cgroup-sock" and v["operation"] == "connect"
    assert v["object"]["call"] == "sendmsg" and v["object"]["port"] == port


def test_connected_udp_socket_sending_elsewhere_is_judged(env: Env, evaluator: Evaluator) -> None:
    allowed, denied = env.ports["udp_free"], env.ports["udp_deny"]
    assert policy_test(evaluator, "127.0.0.1", allowed, "udp") == "allow"
    ok, rx = Receiver(allowed), Receiver(denied)
    try:
        r = send(env, "connected", "127.0.0.1", denied, str(allowed))
        assert r.stdout.strip() == "errno 1", r
        assert ok.received() == [b"ok"] and rx.received() == []
    finally:
        ok.close()
        rx.close()


def test_unconnected_udp_to_other_ports_is_delivered(env: Env, evaluator: Evaluator) -> None:
    port = env.ports["udp_free"]
    assert policy_test(evaluator, "127.0.0.1", port, "udp") == "allow"
    rx = Receiver(port)
    try:
        for how in ("sendto", "sendmsg", "sendmmsg"):
            assert send(env, how, "127.0.0.1", port).stdout.strip() == "sent"
        assert rx.received() == [b"x"] * 4  # sendmmsg sent two
    finally:
        rx.close()


def test_unconnected_udp_to_a_kill_address_kills_and_delivers_nothing(env: Env) -> None:
    port = env.ports["udp_kill"]
    rx = Receiver(port)
    # where cgroup programs cannot signal (6.1) the agent kills just after the kernel's deny
    code = SEND + f"\nimport time; time.sleep({20 * SLOW})\nprint('survived')"
    try:
        r = env.in_cgroup([PY, "-c", code, "sendto", "127.0.0.2", str(port)])
        assert r.returncode == -signal.SIGKILL, r
        assert rx.received() == []
    finally:
        rx.close()
    v = env.verdict("udp-kill", action="kill")
    assert v["mechanism"] == "cgroup-sock+sigkill" and v["object"]["call"] == "sendmsg"


def test_unconnected_udp_audit_and_monitor_are_delivered_and_journaled(env: Env) -> None:
    for name, rule, action in (("udp_audit", "udp-audit", "audit"),
                               ("udp_monitor", "udp-monitor", "would_deny")):  # fmt: skip
        port = env.ports[name]
        rx = Receiver(port)
        try:
            assert send(env, "sendto", "127.0.0.1", port).stdout.strip() == "sent"
            assert rx.received() == [b"x"]
        finally:
            rx.close()
        v = env.verdict(rule, action=action)
        assert v["object"]["call"] == "sendmsg", v


def test_allowed_unconnected_udp_sends_are_not_journaled_one_by_one(env: Env) -> None:
    """The journal policy for datagrams: verdicts always, plain allowed sends not at all."""
    port = env.ports["udp_quiet"]
    denied = len([r for r in env.records() if r.get("rule") == "udp-deny"])
    rx = Receiver(port)
    try:
        assert send(env, "sendmmsg", "127.0.0.1", port).stdout.strip() == "sent"
        assert send(env, "sendto", "127.0.0.1", env.ports["udp_deny"]).stdout.strip() == "errno 1"
        rx.received()
    finally:
        rx.close()
    deadline = time.monotonic() + 15 * SLOW  # the later denied send's verdict is in: so would be
    while len([r for r in env.records() if r.get("rule") == "udp-deny"]) == denied:
        assert time.monotonic() < deadline, "no verdict for the denied send"
        time.sleep(0.1)
    for r in env.records():
        obj = r.get("object") or {}
        assert not (r["type"] == "verdict" and obj.get("port") == port), r
        assert not (r.get("kind") == "connect" and r.get("remote_port") == port), r


def test_raw_socket_is_open_and_check_host_says_so(env: Env, evaluator: Evaluator) -> None:
    """A raw socket (CAP_NET_RAW) builds the datagram itself: no connect or sendmsg hook runs.
    ``policy check --host`` reports that for every connect rule: this proves the note true."""
    report = check([env.policies], host_capabilities())
    assert report.enforcement is not None
    notes = {e.rule.rule_id: e.note for e in report.enforcement}
    assert "raw sockets (CAP_NET_RAW) are not judged" in notes["udp-deny"]
    port = env.ports["udp_deny"]
    assert policy_test(evaluator, "127.0.0.1", port, "udp") == "deny"
    code = textwrap.dedent(
        """
        import socket, struct, sys
        port = int(sys.argv[1])
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        s.sendto(struct.pack("!HHHH", 40000, port, 9, 0) + b"r", ("127.0.0.1", 0))
        print("sent")
        """
    )
    rx = Receiver(port)
    try:
        r = env.in_cgroup([PY, "-c", code, str(port)])
        assert r.stdout.strip() == "sent", r
        assert rx.received() == [b"r"]  # open, as reported
    finally:
        rx.close()


# ---- TCP fast open and address aliases ----

TCP = textwrap.dedent(
    """
    import socket, sys
    how, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        if how == "fastopen":  # connect and send in one call, no connect(2)
            s.sendto(b"x", socket.MSG_FASTOPEN, (host, port))
        else:
            s.connect((host, port))
        print("connected")
    except OSError as e:
        print("errno", e.errno)
    """
)


def tcp(env: Env, how: str, host: str, port: int) -> str:
    return env.in_cgroup([PY, "-c", TCP, how, host, str(port)]).stdout.strip()


def test_tcp_fast_open_is_judged_like_connect(env: Env, evaluator: Evaluator) -> None:
    port = env.ports["tfo"]
    assert policy_test(evaluator, "127.0.0.1", port, "tcp") == "deny"
    listener = Listener(port)
    try:
        assert tcp(env, "fastopen", "127.0.0.1", port) == "errno 1"
        assert listener.accepted() == 0
    finally:
        listener.close()
    v = env.verdict("tfo-deny", action="deny")
    assert "call" not in v["object"]  # the connect hook itself (pre_connect)


#: In the cgroup: a datagram by UDP-Lite (sendto, then connect + send) to argv[1]:argv[2], and
#: an MPTCP connect to argv[1]:argv[3]. Prints "errno N" or "sent"/"connected" for each.
OTHER_PROTOCOLS = textwrap.dedent(
    """
    import socket, sys
    host, udp_port, tcp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    out = []
    for how in ("sendto", "connect"):
        s = socket.socket(fam, socket.SOCK_DGRAM, 136)  # IPPROTO_UDPLITE
        try:
            if how == "sendto":
                s.sendto(b"x", (host, udp_port))
            else:
                s.connect((host, udp_port)); s.send(b"x")
            out.append("sent")
        except OSError as e:
            out.append(f"errno {e.errno}")
    s = socket.socket(fam, socket.SOCK_STREAM, 262)  # IPPROTO_MPTCP
    try:
        s.connect((host, tcp_port)); out.append("connected")
    except OSError as e:
        out.append(f"errno {e.errno}")
    print(",".join(out))
    """
)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_udplite_and_mptcp_are_judged_as_udp_and_tcp(
    env: Env, evaluator: Evaluator, host: str
) -> None:
    """A protocol = "udp" rule stops UDP-Lite to its address and port, sent with an address
    (sendmsg) or on a connected socket (no connect hook runs for UDP-Lite: judged at egress);
    a "tcp" rule MPTCP (the hook sees its first subflow, a TCP connect). Before 2026-12-08
    both UDP-Lite datagrams were delivered."""
    udp, tcp_port = env.ports["udp_deny"], env.ports["tfo"]
    assert policy_test(evaluator, host, udp, "udplite") == "deny"
    assert policy_test(evaluator, "127.0.0.1", tcp_port, "mptcp") == "deny"
    listener = Listener(tcp_port)
    lite = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, 136)
    lite.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    lite.bind(("::", udp))
    lite.settimeout(0.3)

    def tcp_verdicts() -> int:
        return sum(r["type"] == "verdict" and r["rule"] == "tfo-deny" for r in env.records())

    before = tcp_verdicts()
    try:
        r = env.in_cgroup([PY, "-c", OTHER_PROTOCOLS, host, str(udp), str(tcp_port)])
        # connect(2) of UDP-Lite runs no hook: its send is judged as it leaves (egress); the
        # tcp rule names 127.0.0.1 only, and the listener is there only: ::1 is refused
        expect = "errno 1,errno 1," + ("errno 1" if host == "127.0.0.1" else "errno 111")
        assert r.stdout.strip() == expect, r
        with pytest.raises(TimeoutError):
            lite.recv(64)
        assert listener.accepted() == 0
    finally:
        lite.close()
        listener.close()
    family = "ipv6" if ":" in host else "ipv4"
    lite = {"addr": host, "call": "sendmsg", "family": family, "port": udp, "protocol": "udplite"}
    verdicts = [r for r in env.records() if r["type"] == "verdict" and r["object"] == lite]
    assert len(verdicts) >= 2, "the sendto and the connected send are both journaled"
    assert all(v["mechanism"] == "cgroup-sock" and v["action"] == "deny" for v in verdicts)
    if host == "127.0.0.1":  # the hook judges MPTCP's first subflow: a TCP connect
        deadline = time.monotonic() + 10
        while tcp_verdicts() == before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tcp_verdicts() == before + 1


#: In the cgroup, in a network namespace of its own (ping sockets need a group in
#: net.ipv4.ping_group_range, which this host leaves empty; systemd opens it to all): as nobody,
#: an ICMP echo by sendto, then by connect + send, to each address in argv[1:]. Prints
#: "reply", "errno N" or "timeout" for each.
PING = textwrap.dedent(
    """
    import ctypes, os, socket, struct, subprocess, sys
    if ctypes.CDLL(None, use_errno=True).unshare(0x40000000):  # CLONE_NEWNET
        sys.exit("unshare failed")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", "fd00:5ea1::9/128", "dev", "lo", "nodad"], check=True)
    subprocess.run(["ip", "addr", "add", "fd00:5ea1::10/128", "dev", "lo", "nodad"], check=True)
    open("/proc/sys/net/ipv4/ping_group_range", "w").write("0 2147483647")
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    out = []
    for host in sys.argv[1:]:
        fam, proto, echo = ((socket.AF_INET6, 58, 128) if ":" in host
                            else (socket.AF_INET, 1, 8))
        packet = struct.pack("!BBHHH", echo, 0, 0, 0, 1) + b"payload"
        for how in ("sendto", "connect"):
            s = socket.socket(fam, socket.SOCK_DGRAM, proto)
            s.settimeout(1)
            try:
                if how == "sendto":
                    s.sendto(packet, (host, 0))
                else:
                    s.connect((host, 0)); s.send(packet)
                s.recv(64); out.append("reply")
            except TimeoutError:
                out.append("timeout")
            except OSError as e:
                out.append(f"errno {e.errno}")
    print(",".join(out))
    """
)


def test_icmp_echo_from_a_ping_socket_is_judged_by_connect_rules(
    env: Env, evaluator: Evaluator
) -> None:
    """An unprivileged ping socket's sendto runs no sock_addr hook (before 2026-12-08 the echo
    and its payload reached a denied address): judged as it leaves; connect(2) on it was
    already judged. Other addresses get their reply."""
    denied = ("127.0.0.9", "fd00:5ea1::9")
    for host in denied:
        assert policy_test(evaluator, host, 0, "icmp") == "deny"
    r = env.in_cgroup([PY, "-c", PING, *denied, "127.0.0.10", "fd00:5ea1::10"])
    assert r.returncode == 0, r.stderr
    got = r.stdout.strip().split(",")
    # the v6 echo is dropped, but ping_v6_sendmsg does not pass the drop's EPERM back
    assert got[:2] == ["errno 1"] * 2 and got[2] in ("errno 1", "timeout"), r.stdout
    assert got[3:] == ["errno 1"] + ["reply"] * 4, r.stdout
    for host in denied:
        obj = {"addr": host, "call": "sendmsg", "family": "ipv6" if ":" in host else "ipv4",
               "port": 0, "protocol": "icmpv6" if ":" in host else "icmp"}  # fmt: skip
        env.verdict("any-port", action="deny", object=obj)  # the sendto, judged at egress
        env.verdict("any-port", action="deny", object={k: obj[k] for k in obj if k != "call"})


#: In the cgroup, in a network namespace of its own with fd00:5ea1::9 and ::10 on lo, as
#: nobody: UDP-Lite connected to [fd00:5ea1::9]:argv[1], with a sticky segment routing header
#: (IPV6_RTHDR type 4, which any user may set) whose first segment is ::10, then send. Prints
#: "sent" or "errno N".
ROUTED_LITE = textwrap.dedent(
    """
    import ctypes, os, socket, subprocess, sys
    if ctypes.CDLL(None, use_errno=True).unshare(0x40000000):  # CLONE_NEWNET
        sys.exit("unshare failed")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for a in ("fd00:5ea1::9/128", "fd00:5ea1::10/128"):
        subprocess.run(["ip", "addr", "add", a, "dev", "lo", "nodad"], check=True)
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, 136)
    s.connect(("fd00:5ea1::9", int(sys.argv[1])))
    # type 4, two segments: the final one (the kernel fills it in), then the first hop
    srh = bytes([0, 4, 4, 1, 1, 0, 0, 0]) + bytes(16) + socket.inet_pton(socket.AF_INET6,
                                                                         "fd00:5ea1::10")
    s.setsockopt(socket.IPPROTO_IPV6, 57, srh)  # IPV6_RTHDR
    try:
        s.send(b"routed"); print("sent")
    except OSError as e:
        print("errno", e.errno)
    """
)


def test_connected_udplite_is_judged_by_its_peer_whatever_the_routing_header(env: Env) -> None:
    """A sticky segment routing header puts its first segment in the packet's destination: the
    egress judge judged that, so a connected UDP-Lite socket reached a denied peer (red team
    2026-12-08). It judges the peer the socket is connected to."""
    r = env.in_cgroup([PY, "-c", ROUTED_LITE, "5353"])
    assert r.stdout.strip() == "errno 1", r
    env.verdict("any-port", action="deny", object={"addr": "fd00:5ea1::9", "call": "sendmsg",
                "family": "ipv6", "port": 5353, "protocol": "udplite"})  # fmt: skip


class DualListener(Listener):
    """TCP on the dual-stack wildcard: reached through every local address."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind(("::", port))
        self.sock.listen(8)
        self.sock.settimeout(0.3)


@pytest.mark.parametrize(
    ("rule", "host", "expect"),
    [
        ("alias32", "127.0.0.1", "deny"),
        ("alias32", "0.0.0.0", "deny"),  # the kernel sends it to 127.0.0.1
        ("alias32", "::", "deny"),  # to ::1
        ("alias32", "::ffff:0.0.0.0", "deny"),
        ("alias32", "127.0.0.2", "allow"),  # another address: the /32 rule does not name it
        ("alias8", "127.0.0.2", "deny"),
        ("alias8", "0.0.0.0", "deny"),
        ("alias8", "::ffff:127.0.0.2", "deny"),
    ],
)
def test_loopback_aliases_get_the_policy_test_verdict(
    env: Env, evaluator: Evaluator, rule: str, host: str, expect: str
) -> None:
    port = env.ports[rule]
    assert policy_test(evaluator, host, port, "tcp") == expect
    assert policy_test(evaluator, host, port, "udp") == expect
    listener, rx = DualListener(port), Receiver(port)
    try:
        got = tcp(env, "connect", host, port)
        assert got == ("connected" if expect == "allow" else "errno 1"), (host, got)
        assert listener.accepted() == (1 if expect == "allow" else 0)
        sent = send(env, "sendto", host, port).stdout.strip()
        assert sent == ("sent" if expect == "allow" else "errno 1"), (host, sent)
        assert len(rx.received()) == (1 if expect == "allow" else 0)
    finally:
        listener.close()
        rx.close()


# ---- truncate(2) and ftruncate(2) ----

TRUNCATE = textwrap.dedent(
    """
    import os, sys, time
    how, path = sys.argv[1], sys.argv[2]
    try:
        if how == "truncate":
            os.truncate(path, 0)
        elif how == "ftruncate":  # a write open without O_TRUNC, then truncate through the fd
            fd = os.open(path, os.O_WRONLY)
            os.ftruncate(fd, 0)
        elif how == "relative":
            os.chdir(os.path.dirname(path))
            os.truncate(os.path.basename(path), 0)
        elif how == "o_trunc":
            os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
        print("truncated")
    except OSError as e:
        print("errno", e.errno)
    time.sleep(float(sys.argv[3]) if len(sys.argv) > 3 else 0)
    print("survived")
    """
)


def truncate(how: str, path: Path, linger: float = 0.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-c", TRUNCATE, how, str(path), str(linger)],
                          capture_output=True, text=True, timeout=30 * SLOW)  # fmt: skip


def event(env: Env, kind: str, path: Path, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        for r in env.records():
            if r["type"] == "event" and r.get("kind") == kind and r.get("path") == str(path):
                return r
        time.sleep(0.1)
    raise AssertionError(f"no {kind} event for {path}")


def verdict_for(env: Env, rule: str, path: Path, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        for r in env.records():
            if r["type"] == "verdict" and r["rule"] == rule and r["object"]["path"] == str(path):
                return r
        time.sleep(0.1)
    raise AssertionError(f"no verdict of {rule} for {path}")


@pytest.mark.parametrize("how", ["truncate", "ftruncate", "relative"])
def test_truncate_call_is_stopped_or_killed_and_journaled(env: Env, how: str) -> None:
    target = env.work / "trunc-kill" / f"{how}.txt"
    r = truncate(how, target, linger=20 * SLOW)
    if env.lsm:  # path_truncate / file_truncate deny before the effect
        assert r.stdout.split() == ["errno", "1", "survived"], r
        assert target.read_text() == "content\n"
        v = verdict_for(env, "truncate-kill", target)
        assert (v["action"], v["mechanism"], v["object"]["call"]) == ("deny", "lsm", "truncate")
        return
    # no hook denies truncate(2) here: it happens, then the fallback kills the caller
    assert r.returncode == -signal.SIGKILL and "survived" not in r.stdout, r
    assert target.read_text() == ""
    v = verdict_for(env, "truncate-kill", target)
    assert (v["action"], v["mechanism"], v["after_the_fact"]) == (
        "kill", "sigkill-after-the-fact", True,
    )  # fmt: skip
    assert v["object"]["call"] == "truncate" and v["object"]["length"] == 0
    ev = event(env, "truncate", target)
    assert ev["result"] == 0 and ev["length"] == 0
    if how == "ftruncate":
        assert ev["path_source"] == "kernel"  # resolved from the fd in the kernel


def test_o_trunc_open_is_denied_before_the_effect(env: Env) -> None:
    target = env.work / "trunc-kill" / "open.txt"
    r = truncate("o_trunc", target)
    assert r.stdout.split() == ["errno", "1", "survived"], r
    assert target.read_text() == "content\n"


def test_truncate_call_under_audit_fallback_is_recorded(env: Env) -> None:
    target = env.work / "trunc-audit" / "f.txt"
    r = truncate("truncate", target)
    if env.lsm:
        assert r.stdout.split() == ["errno", "1", "survived"], r
        return
    assert r.stdout.split() == ["truncated", "survived"] and target.read_text() == "", r
    v = verdict_for(env, "truncate-audit", target)
    assert (v["action"], v["mechanism"], v["after_the_fact"]) == ("audit", "tracepoint", True)


def test_truncate_of_an_audited_file_is_journaled(env: Env) -> None:
    target = env.work / "watched.txt"
    r = truncate("truncate", target)
    assert r.stdout.split() == ["truncated", "survived"], r
    v = verdict_for(env, "truncate-watched", target)
    assert v["action"] == "audit"
    event(env, "truncate", target)


def test_truncate_outside_every_rule_is_not_sent(env: Env) -> None:
    """The kernel filters truncate events by the rules' path prefixes, like other file ops."""
    outside = env.work / "outside" / "f.txt"
    inside = env.work / "watched.txt"
    assert truncate("truncate", outside).returncode == 0
    assert truncate("ftruncate", outside).returncode == 0
    assert truncate("truncate", inside).returncode == 0
    event(env, "truncate", inside)  # later than the two outside: the journal has them by now
    assert not [r for r in env.records() if r.get("path") == str(outside)]


def test_check_host_names_the_truncate_call_of_each_rule(env: Env) -> None:
    (env.root / "nofallback").mkdir(exist_ok=True)
    bad = env.root / "nofallback" / "p.toml"
    bad.write_text(NO_FALLBACK.format(work=env.work))
    r = env.sealtrail("policy", "check", "--host", str(bad))
    if env.lsm:
        assert r.returncode == 0 and "truncate(2)/ftruncate(2): lsm" in r.stdout, r
    else:
        assert r.returncode == 1, r
        assert (
            'no deny mechanism for truncate(2)/ftruncate(2) on this host: set fallback = "kill" '
            'or "audit"' in r.stdout
        ), r.stdout
    r = env.sealtrail("policy", "check", "--host", str(env.policies / "truncate.toml"))
    assert r.returncode == 0, r
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("truncate-kill "))
    if env.lsm:
        assert "truncate(2)/ftruncate(2): lsm" in line, line
    else:
        assert line.split()[3] == "fanotify", line  # O_TRUNC opens are denied before
        assert "truncate(2)/ftruncate(2): sigkill-after-the-fact after the fact" in line, line
