"""OCSF export: every event kind and verdict the agent journals, as ``journal export --format
ocsf`` writes it, validates against the published OCSF 1.5.0 schema (the schema export that
``ocsf-json-schema`` ships, turned into JSON Schema by it, checked by ``jsonschema``), with the
profiles the events declare; and each event traces back to its record (seq and hash)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from agent.cli import main
from agent.events import model
from agent.journal import ocsf
from agent.journal.record import record_hash
from agent.journal.segments import list_segments
from agent.journal.writer import JournalWriter
from agent.recorder import event_fields

TS = 1_764_700_800_123_456_789  # 2025-12-02 18:40:00.123456789 UTC
COMMON: dict[str, Any] = dict(
    ts_ns=TS, pid=4242, tid=4243, ppid=1, uid=65534, gid=65534, cgroup_id=9,
    comm="curl", exe="/usr/bin/curl", auid=1000, ses=3,
)  # fmt: skip
FILE: dict[str, Any] = dict(path="/etc/shadow", path_source=model.PATH_KERNEL, result=-13)
NET: dict[str, Any] = dict(family="ipv4", protocol="tcp", local_addr="10.0.0.2",
                           local_port=40000, remote_addr="10.0.0.9", remote_port=443)  # fmt: skip

EVENTS: list[model.Event] = [
    model.ExecEvent(**COMMON, filename="curl", argv=("curl", "-s", "x"), argc=3, cwd="/tmp"),
    model.ForkEvent(**COMMON, child_pid=4300),
    model.ExitEvent(**COMMON, exit_code=0, signal=None, core_dumped=False, duration_ns=5),
    model.OpenEvent(**COMMON, **FILE, flags=0, mode=0, access=("read",)),
    model.OpenEvent(
        **{**COMMON, **FILE, "result": 3}, flags=0o101, mode=0o644, access=("write", "create")
    ),
    model.UnlinkEvent(**COMMON, **FILE),
    model.RenameEvent(**COMMON, **FILE, new_path="/etc/shadow-", new_path_source="arg", flags=0),
    model.ChmodEvent(**COMMON, **FILE, mode=0o600),
    model.ChownEvent(**COMMON, **FILE, owner_uid=0, owner_gid=None),
    model.TruncateEvent(**COMMON, **FILE, length=0),
    model.ConnectEvent(**COMMON, **NET, result=0),
    model.ConnectEvent(**COMMON, **NET, result=-111),  # ECONNREFUSED
    model.AcceptEvent(**COMMON, **NET, result=5),
    model.ListenEvent(
        **COMMON, **{**NET, "remote_addr": "0.0.0.0", "remote_port": 0}, result=0, backlog=16
    ),
    model.BindEvent(**COMMON, **{**NET, "family": "ipv6", "local_addr": "::1"}, result=0),
]
VERDICTS: list[dict[str, Any]] = [
    {"action": action, "policy": "ab" * 32, "policy_name": "base", "rule": f"rule-{action}",
     "mechanism": mechanism, "operation": op, "after_the_fact": False, "pid": 4242,
     "exe": "/usr/bin/curl", "object": obj, "auid": 1000, "ses": 3}
    for action, mechanism, op, obj in (
        ("deny", "lsm", "open", {"path": "/etc/shadow", "result": -1}),
        ("kill", "cgroup-sock+sigkill", "connect",
         {"family": "ipv4", "protocol": "tcp", "addr": "::ffff:10.0.0.9", "port": 443}),
        ("would_deny", "fanotify", "exec", {"path": "/usr/bin/nc", "argv": ["nc"]}),
        ("audit", "tracepoint", "unlink", {"path": "/tmp/x", "result": 0}),
        ("allow", "lsm", "open", {"path": "/etc/hosts", "result": 3}),
        ("would_kill", "exec-tracepoint", "exec", {"path": "memfd:x"}),
    )
]  # fmt: skip


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ocsf")
    w = JournalWriter.open(root / "journal", root / "keys", host="web-01", boot_id="boot-1",
                           protect_files=False, clock=lambda: TS + 1000)  # fmt: skip
    w.append("start", {"version": "0.1.0"})
    for ev in EVENTS:
        w.append("event", event_fields(ev))
    for verdict in VERDICTS:
        w.append("verdict", verdict)
    w.close({"reason": "test"})
    return root / "journal"


@pytest.fixture(scope="module")
def validator() -> Callable[[dict[str, Any]], None]:
    """Validates one event against the published schema of its class, with its profiles."""
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=ocsf.OCSF_VERSION))
    cache: dict[int, jsonschema.Draft202012Validator] = {}

    def check(event: dict[str, Any]) -> None:
        uid = event["class_uid"]
        if uid not in cache:
            name = schema.lookup_class_name_from_uid(uid)
            class_schema = schema.get_class_schema(name, list(event["metadata"]["profiles"]))
            cache[uid] = jsonschema.Draft202012Validator(class_schema)
        errors = sorted(cache[uid].iter_errors(event), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)

    return check


def exported(journal: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> list[Any]:
    assert main(["journal", *argv, "--journal", str(journal)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_every_event_and_verdict_validates_against_the_published_schema(
    journal: Path, capsys: pytest.CaptureFixture[str], validator: Callable[[dict[str, Any]], None]
) -> None:
    events = exported(journal, capsys, "export", "--format", "ocsf")
    assert len(events) == len(EVENTS) + len(VERDICTS)  # start, stop and seals have no class
    for event in events:
        validator(event)
    classes = [e["class_uid"] for e in events]
    assert classes == [1007] * 3 + [1001] * 7 + [4001] * 5 + [2004] * 6
    activities = [e["activity_id"] for e in events[: len(EVENTS)]]
    assert activities == [1, 99, 2, 14, 1, 4, 5, 7, 7, 3, 1, 5, 1, 7, 99]
    assert all(e["type_uid"] == e["class_uid"] * 100 + e["activity_id"] for e in events)


def test_a_validator_that_can_fail(validator: Callable[[dict[str, Any]], None]) -> None:
    """The check above is not vacuous: the schema refuses a wrong type and an unknown field."""
    good = ocsf.to_ocsf(*_record_of(EVENTS[0]))
    assert good is not None
    validator(good)
    for broken in ({**good, "time": "soon"}, {**good, "no_such_attribute": 1}):
        with pytest.raises(AssertionError):
            validator(broken)


def _record_of(ev: model.Event) -> tuple[Any, bytes]:
    from agent.journal.record import GENESIS_PREV, Record

    record = Record(0, TS, "web-01", "boot-1", "event", GENESIS_PREV, event_fields(ev))
    return record, record.to_line()


def test_events_trace_back_to_their_records_with_time_in_ms_and_ns(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = {
        json.loads(line)["seq"]: line
        for _, path in list_segments(journal)
        for line in path.read_bytes().splitlines()
    }
    for event in exported(journal, capsys, "query", "-o", "ocsf"):
        seq = event["metadata"]["sequence"]
        line = stored[seq]
        assert event["metadata"]["uid"] == record_hash(line).hex()
        trace = event["unmapped"]["sealtrail"]
        assert (trace["seq"], trace["record_hash"]) == (seq, record_hash(line).hex())
        assert trace["ts_ns"] == str(TS + 1000)  # when the record was written
        assert event["metadata"]["logged_time"] == (TS + 1000) // 10**6
        if event["class_uid"] != 2004:
            assert trace["event_ts_ns"] == str(TS)  # when the kernel saw it, to the ns
            assert event["time"] == TS // 10**6  # OCSF time: milliseconds


def test_who_what_and_outcome_are_mapped(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = exported(journal, capsys, "export")
    execs = [e for e in events if e["class_uid"] == 1007 and e["activity_id"] == 1]
    (ex,) = execs
    assert ex["process"]["cmd_line"] == "curl -s x" and ex["process"]["pid"] == 4242
    assert ex["process"]["auid"] == 1000 and ex["process"]["user"]["uid"] == "65534"
    assert ex["actor"]["user"]["uid"] == "1000" and ex["actor"]["session"]["uid"] == "3"
    denied_open = next(e for e in events if e["class_uid"] == 1001)
    assert denied_open["status_id"] == 2 and denied_open["status_code"] == "EACCES"
    assert denied_open["file"]["path"] == "/etc/shadow"
    connect = next(e for e in events if e["class_uid"] == 4001)
    assert connect["dst_endpoint"] == {"ip": "10.0.0.9", "port": 443}
    findings = {e["unmapped"]["sealtrail"]["action"]: e for e in events if e["class_uid"] == 2004}
    deny = findings["deny"]
    assert deny["finding_info"]["analytic"]["uid"] == "rule-deny"
    assert deny["policy"] == {"uid": "ab" * 32, "name": "base", "is_applied": True}
    assert (deny["action_id"], deny["disposition_id"]) == (2, 2)  # Denied, Blocked
    assert deny["unmapped"]["sealtrail"]["mechanism"] == "lsm"
    assert (findings["would_deny"]["action_id"], findings["would_deny"]["disposition_id"]) == (
        3, 15)  # fmt: skip
    assert findings["kill"]["unmapped"]["sealtrail"]["mechanism"] == "cgroup-sock+sigkill"
    assert deny["actor"]["user"]["uid"] == "1000"
