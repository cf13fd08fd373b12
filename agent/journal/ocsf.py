"""Journal records as OCSF 1.5.0 events (Open Cybersecurity Schema Framework).

``to_ocsf(record, line)`` maps one record to one OCSF event (a JSON object), or None for a
record type OCSF has no class for here (seals, key rotations, the agent's own lifecycle):

- event ``exec``, ``fork``, ``exit``: Process Activity (1007), Launch (1), Other "Fork" (99),
  Terminate (2);
- event ``open`` (Open 14, or Create 1 with O_CREAT), ``unlink`` (Delete 4), ``rename``
  (Rename 5), ``chmod`` and ``chown`` (Set Security 7), ``truncate`` (Update 3): File System
  Activity (1001);
- event ``connect`` (Open 1, Refuse 5, Fail 4), ``accept`` (Open 1), ``listen`` (Listen 7),
  ``bind`` (Other "Bind" 99): Network Activity (4001);
- ``verdict``: Detection Finding (2004), Create (1); ``action_id`` and ``disposition_id`` from
  the action, ``policy`` the policy set's digest and name, ``finding_info.analytic`` the rule,
  the mechanism in ``finding_info.desc`` and ``unmapped.sealtrail.mechanism``.

Profiles used (``metadata.profiles``): ``host`` (``actor``, ``device``), ``security_control``
(``action_id``, ``disposition_id``, ``policy``), ``linux/linux_users`` (``process.auid``).

Tracing an event back to its proof: ``metadata.sequence`` is the record's ``seq`` and
``metadata.uid`` its record hash (hex, docs/journal-format.md section 5), so ``sealtrail journal
prove SEQ`` gives the inclusion proof of exactly that record; ``unmapped.sealtrail`` repeats
both with the host, boot id and the nanosecond times (OCSF ``time`` is in milliseconds: ``ts``
is when the record was written, ``event_ts_ns`` when the kernel saw the event).

Who: the acting task's login uid (auditd's ``auid``) is ``process.auid`` and ``actor.user.uid``
(with ``actor.user.name`` where the journal names it), its audit session id
``actor.session.uid``; ``process.user.uid`` is the task's uid.
"""

from __future__ import annotations

import errno
import posixpath
from collections.abc import Mapping
from typing import Any

import orjson

from agent import __version__
from agent.journal.canonical import JsonValue
from agent.journal.record import Record, record_hash

OCSF_VERSION = "1.5.0"
PROFILES = ("host", "security_control", "linux/linux_users")
_AUID_UNSET = 0xFFFFFFFF

PROCESS_ACTIVITY, FILE_ACTIVITY, NETWORK_ACTIVITY, DETECTION_FINDING = 1007, 1001, 4001, 2004
_CATEGORY = {PROCESS_ACTIVITY: 1, FILE_ACTIVITY: 1, NETWORK_ACTIVITY: 4, DETECTION_FINDING: 2}
_CLASS_NAME = {
    PROCESS_ACTIVITY: "Process Activity",
    FILE_ACTIVITY: "File System Activity",
    NETWORK_ACTIVITY: "Network Activity",
    DETECTION_FINDING: "Detection Finding",
}
_CATEGORY_NAME = {1: "System Activity", 2: "Findings", 4: "Network Activity"}
_ACTIVITY_NAME = {
    PROCESS_ACTIVITY: {1: "Launch", 2: "Terminate"},
    FILE_ACTIVITY: {1: "Create", 3: "Update", 4: "Delete", 5: "Rename", 7: "Set Security",
                    14: "Open"},
    NETWORK_ACTIVITY: {1: "Open", 4: "Fail", 5: "Refuse", 7: "Listen"},
    DETECTION_FINDING: {1: "Create"},
}  # fmt: skip
_FILE_ACTIVITY = {"unlink": 4, "rename": 5, "chmod": 7, "chown": 7, "truncate": 3}
#: verdict action -> (action_id, disposition_id, severity_id): Allowed 1 / Denied 2 /
#: Observed 3; Allowed 1, Blocked 2, Detected 15, Logged 17; Informational 1 ... High 4.
_VERDICT = {
    "allow": (1, 1, 1),
    "audit": (3, 17, 2),
    "deny": (2, 2, 4),
    "kill": (2, 2, 4),
    "would_deny": (3, 15, 3),
    "would_kill": (3, 15, 3),
}


def dumps(event: Mapping[str, Any]) -> str:
    """One event as a line of JSON (keys in a stable order)."""
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS).decode("utf-8")


def to_ocsf(record: Record, line: bytes) -> dict[str, Any] | None:
    """The OCSF event of one record; ``line`` is its stored bytes (hashed for the trace)."""
    f = record.fields
    if record.type == "verdict":
        return _finding(record, line)
    if record.type != "event":
        return None
    kind = f.get("kind")
    if kind in ("exec", "fork", "exit"):
        return _process(record, line, str(kind))
    if kind in ("open", "unlink", "rename", "chmod", "chown", "truncate"):
        return _file(record, line, str(kind))
    if kind in ("connect", "accept", "listen", "bind"):
        return _network(record, line, str(kind))
    return None


# ----------------------------------------------------------------------------- common
def _int(f: Mapping[str, JsonValue], name: str) -> int | None:
    value = f.get(name)
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isdigit():  # ns values and cgroup ids are strings
        return int(value)
    return None


def _str(f: Mapping[str, JsonValue], name: str) -> str | None:
    value = f.get(name)
    return value if isinstance(value, str) else None


def _base(record: Record, line: bytes, class_uid: int, activity_id: int) -> dict[str, Any]:
    """What every event carries: class, activity, time, metadata with the trace, device."""
    f = record.fields
    names = _ACTIVITY_NAME[class_uid]
    activity = names.get(activity_id, "Other")
    digest = record_hash(line).hex()
    event_ns = _int(f, "ts_ns")
    trace: dict[str, Any] = {
        "seq": record.seq,
        "record_hash": digest,
        "host": record.host,
        "boot_id": record.boot_id,
        "record_type": record.type,
        "ts_ns": str(record.ts),
    }
    if event_ns is not None:
        trace["event_ts_ns"] = str(event_ns)
    event: dict[str, Any] = {
        "class_uid": class_uid,
        "class_name": _CLASS_NAME[class_uid],
        "category_uid": _CATEGORY[class_uid],
        "category_name": _CATEGORY_NAME[_CATEGORY[class_uid]],
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{_CLASS_NAME[class_uid]}: {activity}",
        "time": (event_ns if event_ns is not None else record.ts) // 1_000_000,
        "severity_id": 1,
        "severity": "Informational",
        "metadata": {
            "version": OCSF_VERSION,
            "profiles": list(PROFILES),
            "product": {"name": "sealtrail", "vendor_name": "sealtrail", "version": __version__},
            "uid": digest,
            "sequence": record.seq,
            "logged_time": record.ts // 1_000_000,
            "log_name": "sealtrail journal",
        },
        "device": {"type_id": 0, "hostname": record.host, "boot_uid": record.boot_id},
        "unmapped": {"sealtrail": trace},
    }
    return event


def _status(event: dict[str, Any], result: int | None) -> None:
    if result is None:
        return
    if result < 0:
        event.update(
            status_id=2,
            status="Failure",
            status_code=errno.errorcode.get(-result, str(-result)),
            status_detail=f"the call returned -{errno.errorcode.get(-result, str(-result))}",
        )
    else:
        event.update(status_id=1, status="Success")


def _user(uid: int | None, name: str | None = None) -> dict[str, Any] | None:
    if uid is None:
        return None
    user: dict[str, Any] = {"uid": str(uid)}
    if name:
        user["name"] = name
    return user


def _process_object(f: Mapping[str, JsonValue]) -> dict[str, Any]:
    """The acting task as an OCSF process: pid, tid, name (comm), binary, users, parent."""
    proc: dict[str, Any] = {}
    for src, dst in (("pid", "pid"), ("tid", "tid")):
        if (n := _int(f, src)) is not None:
            proc[dst] = n
    if (comm := _str(f, "comm")) is not None:
        proc["name"] = comm
    if (exe := _str(f, "exe")) is not None:
        proc["file"] = {"name": posixpath.basename(exe) or exe, "path": exe, "type_id": 1}
        proc["path"] = exe
    if (user := _user(_int(f, "uid"))) is not None:
        proc["user"] = user
    if (gid := _int(f, "gid")) is not None:
        proc["group"] = {"uid": str(gid)}
    if (auid := _int(f, "auid")) is not None:
        proc["auid"] = auid
    if (ses := _int(f, "ses")) is not None:
        proc["session"] = {"uid": str(ses)}
    if (ppid := _int(f, "ppid")) is not None:
        proc["parent_process"] = {"pid": ppid}
    return proc


def _actor(f: Mapping[str, JsonValue]) -> dict[str, Any]:
    """Who acted: the process, and the person behind it (login uid and audit session)."""
    actor: dict[str, Any] = {"process": _process_object(f)}
    auid = _int(f, "auid")
    if auid is not None and auid != _AUID_UNSET:
        actor["user"] = _user(auid, _str(f, "auid_name"))
    if (ses := _int(f, "ses")) is not None and ses != _AUID_UNSET:
        actor["session"] = {"uid": str(ses)}
    return actor


# ----------------------------------------------------------------------------- classes
def _process(record: Record, line: bytes, kind: str) -> dict[str, Any]:
    f = record.fields
    activity = {"exec": 1, "fork": 99, "exit": 2}[kind]
    event = _base(record, line, PROCESS_ACTIVITY, activity)
    actor = _actor(f)
    process = dict(actor["process"])
    if kind == "exec":
        argv = f.get("argv")
        if isinstance(argv, list):
            process["cmd_line"] = " ".join(str(a) for a in argv)
        if (cwd := _str(f, "cwd")) is not None:
            process["working_directory"] = cwd
    elif kind == "fork":
        event["activity_name"] = "Fork"
        event["type_name"] = "Process Activity: Other"
        child = _int(f, "child_pid")
        process = {"pid": child} if child is not None else {}
        process["parent_process"] = actor["process"]
    else:
        code = _int(f, "exit_code")
        if code is not None:
            event["exit_code"] = code
        process["terminated_time"] = event["time"]
    event["process"] = process
    event["actor"] = actor
    return event


def _file(record: Record, line: bytes, kind: str) -> dict[str, Any]:
    f = record.fields
    access = f.get("access")
    if kind == "open":
        activity = 1 if isinstance(access, list) and "create" in access else 14
    else:
        activity = _FILE_ACTIVITY[kind]
    event = _base(record, line, FILE_ACTIVITY, activity)
    path = _str(f, "path") or ""
    event["file"] = {"name": posixpath.basename(path) or path, "path": path, "type_id": 0}
    if kind == "rename" and (new := _str(f, "new_path")) is not None:
        event["file_result"] = {"name": posixpath.basename(new) or new, "path": new, "type_id": 0}
    event["actor"] = _actor(f)
    _status(event, _int(f, "result") if type(f.get("result")) is int else None)
    return event


def _endpoint(addr: str | None, port: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if addr:
        out["ip"] = addr
    if port:
        out["port"] = port
    return out


def _network(record: Record, line: bytes, kind: str) -> dict[str, Any]:
    f = record.fields
    result = f.get("result")
    failed = type(result) is int and result < 0
    if kind == "connect":
        refused = failed and result == -errno.ECONNREFUSED
        activity = 5 if refused else 4 if failed else 1
    else:
        activity = {"accept": 1, "listen": 7, "bind": 99}[kind]
    event = _base(record, line, NETWORK_ACTIVITY, activity)
    if kind == "bind":
        event["activity_name"] = "Bind"
    local = _endpoint(_str(f, "local_addr"), _int(f, "local_port"))
    remote = _endpoint(_str(f, "remote_addr"), _int(f, "remote_port"))
    if kind == "accept":
        event["src_endpoint"], event["dst_endpoint"] = remote or {}, local or {}
    else:
        event["src_endpoint"] = local
        if kind == "connect":
            event["dst_endpoint"] = remote
    info: dict[str, Any] = {}
    if (proto := _str(f, "protocol")) is not None:
        info["protocol_name"] = proto
    family = _str(f, "family")
    if family in ("ipv4", "ipv6"):
        info["protocol_ver_id"] = 4 if family == "ipv4" else 6
    info["direction_id"] = {"connect": 2, "accept": 1}.get(kind, 0)  # Outbound, Inbound, Unknown
    event["connection_info"] = info
    event["actor"] = _actor(f)
    _status(event, result if type(result) is int else None)
    return event


def _finding(record: Record, line: bytes) -> dict[str, Any]:
    f = record.fields
    action = str(f["action"])
    action_id, disposition_id, severity_id = _VERDICT[action]
    event = _base(record, line, DETECTION_FINDING, 1)
    rule, digest = str(f["rule"]), str(f["policy"])
    operation = _str(f, "operation") or "operation"
    obj = f.get("object")
    what = ""
    if isinstance(obj, dict):
        what = str(obj.get("path") or obj.get("remote") or obj.get("addr") or "")
    mechanism = _str(f, "mechanism")
    event.update(
        severity_id=severity_id,
        severity={1: "Informational", 2: "Low", 3: "Medium", 4: "High"}[severity_id],
        action_id=action_id,
        action={1: "Allowed", 2: "Denied", 3: "Observed"}[action_id],
        disposition_id=disposition_id,
        disposition={1: "Allowed", 2: "Blocked", 15: "Detected", 17: "Logged"}[disposition_id],
        message=f"{action} {operation} {what}".rstrip() + f" (rule {rule})",
        finding_info={
            "uid": record_hash(line).hex(),
            "title": f"{action} {operation} by rule {rule}",
            "types": [operation],
            "analytic": {"uid": rule, "name": rule, "type_id": 1, "type": "Rule"},
        },
        policy={"uid": digest, "name": _str(f, "policy_name") or digest, "is_applied": True},
        actor=_actor(f),
    )
    if mechanism is not None:
        event["finding_info"]["desc"] = f"enforced by {mechanism}"
    trace = event["unmapped"]["sealtrail"]
    trace.update(action=action, rule=rule, policy=digest, mechanism=mechanism)
    if isinstance(obj, dict):
        trace["object"] = obj
    if type(f.get("after_the_fact")) is bool:
        trace["after_the_fact"] = f["after_the_fact"]
    return event
