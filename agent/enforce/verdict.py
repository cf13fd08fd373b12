"""A verdict record: one policy decision, as the journal stores it.

The fields are those of the journal's ``verdict`` record (docs/journal-format.md): ``action``
an ``Effect`` value (``would_deny`` in monitor mode), ``mechanism`` a ``Mechanism`` value,
``object`` what was acted on, built here from the event that showed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.events import model


@dataclass(frozen=True)
class VerdictRecord:
    """One decision for the journal."""

    action: str  # allow | audit | deny | kill | would_deny | would_kill (an Effect)
    rule: str
    policy: str  # the policy's name
    digest: str  # of the policy set that decided
    mechanism: str  # a Mechanism
    operation: str
    after_the_fact: bool
    pid: int
    exe: str | None
    object: dict[str, Any]

    def __post_init__(self) -> None:
        # an Effect or a Mechanism is a str subclass, and a journal record takes exact types
        object.__setattr__(self, "action", str(self.action))
        object.__setattr__(self, "mechanism", str(self.mechanism))

    def fields(self) -> dict[str, Any]:
        """The record's fields, as the journal writes them."""
        return {
            "action": self.action,
            "rule": self.rule,
            "policy": self.digest,  # the policy set that decided (its digest)
            "policy_name": self.policy,
            "mechanism": self.mechanism,
            "operation": self.operation,
            "after_the_fact": self.after_the_fact,
            "pid": self.pid,
            "exe": self.exe,
            "object": self.object,
        }


def event_object(ev: model.Event) -> dict[str, Any]:
    """The ``object`` of a verdict on an event seen in the stream."""
    if isinstance(ev, model.FileEvent):
        out: dict[str, Any] = {"path": ev.path, "result": ev.result}
        if isinstance(ev, model.RenameEvent):
            out["new_path"] = ev.new_path
        if isinstance(ev, model.TruncateEvent):
            out.update(call="truncate", length=ev.length)
        return out
    if isinstance(ev, model.NetEvent):
        return {
            "protocol": ev.protocol,
            "local": f"{ev.local_addr}:{ev.local_port}",
            "remote": f"{ev.remote_addr}:{ev.remote_port}",
            "result": ev.result,
        }
    if isinstance(ev, model.ExecEvent):
        return {"path": ev.exe, "argv": list(ev.argv)}
    return {}


def guard_object(ev: model.GuardEvent) -> dict[str, Any]:
    """The ``object`` of a decision the in-kernel guard reported: the path it resolved (file
    ops, exec) or the address (network), and the call judged when it is not the rule's
    operation (sendmsg, truncate)."""
    obj: dict[str, Any] = (
        {"path": ev.path}
        if ev.path is not None
        else {"family": ev.family, "protocol": ev.protocol, "addr": ev.addr, "port": ev.port}
    )
    if ev.call:
        obj["call"] = ev.call
    return obj
