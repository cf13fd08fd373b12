"""Which mechanism enforces each compiled rule on a host (DESIGN.md section 3).

This is the seam between the policy compiler and the kernel side: the enforcement code loads
the compiled maps, then asks :func:`plan` which hooks to attach for the rules present, and
refuses to start (:func:`require_enforceable`) when a rule in enforce mode has no mechanism and
no ``fallback``. A new mechanism (BPF-LSM) changes only the tables below, never the language or
the compiler. Mechanism names:

- ``lsm``: BPF-LSM hook denies with EPERM (bprm_check_security, file_open, path_*/inode_*,
  socket_connect/bind/listen/accept).
- ``fanotify``: FAN_OPEN_EXEC_PERM / FAN_OPEN_PERM answered from userspace with the Evaluator.
- ``cgroup-sock``: cgroup/connect4|6, bind4|6 at the root cgroup deny with EPERM.
- ``<hook>+sigkill``: the deny hook stops the effect and bpf_send_signal(SIGKILL) ends the process.
- ``fanotify+sigkill`` for exec: the exec permission is denied (the new image never runs) and
  the caller is killed.
- ``sigkill-after-the-fact``: no deny hook; the process is killed after the effect happened.
- ``tracepoint``: recorded only (audit, monitor mode, or fallback = "audit").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.errors import MechanismUnavailable
from agent.policy.compile import CompiledPolicySet, CompiledRule


@dataclass(frozen=True)
class HostCapabilities:
    lsm: bool  # BPF-LSM programs load and attach
    cgroup_sock: bool  # cgroup v2 + cgroup sock_addr programs
    fanotify: bool  # fanotify permission events
    send_signal: bool  # bpf_send_signal


def host_capabilities() -> HostCapabilities:
    """What this host can enforce with, measured by ``sealtrail doctor``'s probes (each
    capability is tried for real: a program loaded, a fanotify mark placed)."""
    from agent.kernel.host import probe_host  # loads BPF: only when asked

    checks = probe_host().checks
    return HostCapabilities(
        lsm=checks["bpf_lsm"].ok,
        cgroup_sock=checks["cgroup2"].ok and checks["cgroup_bpf"].ok,
        fanotify=checks["fanotify_perm"].ok,
        send_signal=checks["send_signal"].ok,
    )


#: Hooks that can deny each operation, best first.
DENY_HOOKS: dict[str, tuple[str, ...]] = {
    "exec": ("lsm", "fanotify"),
    "open": ("lsm", "fanotify"),
    "unlink": ("lsm",),
    "rename": ("lsm",),
    "chmod": ("lsm",),
    "chown": ("lsm",),
    "connect": ("cgroup-sock", "lsm"),
    "bind": ("cgroup-sock", "lsm"),
    "listen": ("lsm",),
    # the LSM accept hook runs before the peer is known, so an address rule cannot be judged
    # there: accept rules need a fallback everywhere
    "accept": (),
}
_CAPABILITY = {"lsm": "lsm", "fanotify": "fanotify", "cgroup-sock": "cgroup_sock"}


def deny_hook(operation: str, host: HostCapabilities) -> str | None:
    for hook in DENY_HOOKS[operation]:
        if getattr(host, _CAPABILITY[hook]):
            return hook
    return None


@dataclass(frozen=True)
class Enforcement:
    """How one rule is enforced on one host; ``error`` set means it cannot be, as written."""

    rule: CompiledRule
    mechanism: str | None
    after_the_fact: bool = False  # the effect happens before the action: recorded as such
    note: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.rule_id,
            "policy": self.rule.policy_name,
            "operation": self.rule.operation,
            "action": self.rule.action,
            "mode": self.rule.mode,
            "mechanism": self.mechanism,
            "after_the_fact": self.after_the_fact,
            "note": self.note,
            "error": self.error,
        }


def enforcement_for(rule: CompiledRule, host: HostCapabilities) -> Enforcement:
    hook = deny_hook(rule.operation, host)
    op = rule.operation
    if rule.action == "audit":
        return Enforcement(rule, "tracepoint", note="recorded, not stopped")
    if rule.action == "allow":
        where = "tracepoint" if rule.mode == "monitor" else (hook or "tracepoint")
        return Enforcement(rule, where, note="exception, judged where the rules it exempts are")
    if rule.mode == "monitor":
        missing = "" if hook else f"; in enforce mode it would need a fallback ({op}: no deny hook)"
        return Enforcement(
            rule, "tracepoint", note=f"monitor: records would-{rule.action}{missing}"
        )
    if rule.action == "kill" and host.send_signal and hook:
        note = "denied, then killed: the exec never runs" if op == "exec" else "denied, then killed"
        return Enforcement(rule, f"{hook}+sigkill", note=_create_note(rule, hook) or note)
    if rule.action == "deny" and hook:
        return Enforcement(rule, hook, note=_create_note(rule, hook))
    return _fallback(rule, host)


def _create_note(rule: CompiledRule, hook: str) -> str:
    """fanotify's permission event comes after a new file is created: say so, never hide it."""
    if hook == "fanotify" and "create" in rule.access:
        return "a new file is created empty before its open is denied (no create hook without LSM)"
    return ""


def _fallback(rule: CompiledRule, host: HostCapabilities) -> Enforcement:
    """Enforce mode, no mechanism for the action as written: only an explicit fallback."""
    op = rule.operation
    if rule.fallback == "audit":
        return Enforcement(
            rule, "tracepoint", after_the_fact=True, note=f"fallback: audited, {op} not stopped"
        )
    if rule.fallback == "kill" and host.send_signal:
        return Enforcement(
            rule,
            "sigkill-after-the-fact",
            after_the_fact=True,
            note=f"fallback: the {op} takes effect, then the process is killed",
        )
    if not host.send_signal and (rule.action == "kill" or rule.fallback == "kill"):
        error = (
            f"no bpf_send_signal on this host: {rule.action} cannot be enforced: "
            'set fallback = "audit"'
        )
    else:
        error = f'no deny mechanism for {op} on this host: set fallback = "kill" or "audit"'
    return Enforcement(rule, None, error=error)


def plan(compiled: CompiledPolicySet, host: HostCapabilities) -> tuple[Enforcement, ...]:
    """The mechanism for every rule, in file order."""
    return tuple(enforcement_for(rule, host) for rule in compiled.rules_by_no)


def require_enforceable(enforcements: tuple[Enforcement, ...]) -> None:
    """Raise MechanismUnavailable naming every rule that cannot be enforced as written."""
    errors = [e for e in enforcements if e.error]
    if errors:
        raise MechanismUnavailable(
            "\n".join(f"{e.rule.file}: rule {e.rule.rule_id!r}: {e.error}" for e in errors)
        )
