"""The verdict record: the journal's fields, and the object built from each kind of event."""

from __future__ import annotations

from typing import Any

from agent.enforce.verdict import VerdictRecord, event_object, guard_object
from agent.events import model
from agent.kernel.mechanism import Mechanism
from agent.policy.evaluate import Effect

PROC: dict[str, Any] = dict(ts_ns=1, pid=10, tid=10, ppid=1, uid=0, gid=0, cgroup_id=1,
                            comm="x", exe="/usr/bin/x")  # fmt: skip


def test_fields_are_the_journal_verdict_record() -> None:
    record = VerdictRecord(Effect.WOULD_DENY, "r", "p", "sha256:d", Mechanism.CGROUP_SOCK,
                           "connect", False, 10, "/usr/bin/x", {"port": 1})  # fmt: skip
    assert record.fields() == {
        "action": "would_deny",
        "rule": "r",
        "policy": "sha256:d",  # the digest of the set; the name goes in policy_name
        "policy_name": "p",
        "mechanism": "cgroup-sock",
        "operation": "connect",
        "after_the_fact": False,
        "pid": 10,
        "exe": "/usr/bin/x",
        "object": {"port": 1},
    }
    # the journal takes exact types: no str subclass reaches it
    assert type(record.action) is str and type(record.mechanism) is str


def test_file_objects_name_path_result_and_what_else_the_call_says() -> None:
    common = dict(PROC, path="/a", path_source="kernel", result=0)
    rename = model.RenameEvent(**common, new_path="/b", new_path_source="kernel", flags=0)
    truncate = model.TruncateEvent(**common, length=5)
    unlink = model.UnlinkEvent(**common)
    assert event_object(rename) == {"path": "/a", "result": 0, "new_path": "/b"}
    assert event_object(truncate) == {"path": "/a", "result": 0, "call": "truncate", "length": 5}
    assert event_object(unlink) == {"path": "/a", "result": 0}


def test_net_and_exec_objects() -> None:
    connect = model.ConnectEvent(**PROC, family="ipv4", protocol="tcp", local_addr="10.0.0.1",
                                 local_port=4000, remote_addr="10.0.0.2", remote_port=22,
                                 result=-1)  # fmt: skip
    assert event_object(connect) == {
        "protocol": "tcp", "local": "10.0.0.1:4000", "remote": "10.0.0.2:22", "result": -1,
    }  # fmt: skip
    exec_ = model.ExecEvent(**PROC, filename="x", argv=("x", "-y"), argc=2, cwd="/")
    assert event_object(exec_) == {"path": "/usr/bin/x", "argv": ["x", "-y"]}
    fork = model.ForkEvent(**PROC, child_pid=11)
    assert event_object(fork) == {}


def _guard(**fields: Any) -> model.GuardEvent:
    base = dict(PROC, op="connect", action="deny", rule_action="deny", mechanism="cgroup-sock",
                generation=1, rule_index=0, family="ipv4", protocol="udp", addr="::1",
                port=53)  # fmt: skip
    return model.GuardEvent(**(base | fields))


def test_guard_objects_are_the_address_or_the_path_and_the_call() -> None:
    assert guard_object(_guard()) == {"family": "ipv4", "protocol": "udp", "addr": "::1",
                                      "port": 53}  # fmt: skip
    assert guard_object(_guard(call="sendmsg"))["call"] == "sendmsg"
    assert guard_object(_guard(op="open", path="/etc/shadow", call="truncate")) == {
        "path": "/etc/shadow", "call": "truncate",
    }  # fmt: skip
