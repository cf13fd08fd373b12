"""Which mechanism enforces each compiled rule on a host (DESIGN.md section 3).

This is the seam between the policy compiler and the kernel side: the enforcement code loads
the compiled maps, then asks :func:`plan` which hooks to attach for the rules present, and
refuses to start (:func:`require_enforceable`) when a rule in enforce mode has no mechanism and
no ``fallback``. A new mechanism (BPF-LSM) changes only the tables below, never the language or
the compiler. Mechanism names (``agent.kernel.mechanism.Mechanism``, one spelling each, the
journal's; the deny hooks per operation are ``mechanism.DENY_HOOKS``, which doctor plans with):

- ``lsm``: BPF-LSM hook denies with EPERM (bprm_check_security, file_open, path_*/inode_*,
  socket_connect/bind/listen/accept).
- ``fanotify``: FAN_OPEN_EXEC_PERM / FAN_OPEN_PERM answered from userspace with the Evaluator.
- ``cgroup-sock``: cgroup/connect4|6, bind4|6 (post_bind4|6 for a bind to port 0) at the root
  cgroup deny with EPERM; connect rules also judge datagrams sent without connect at
  cgroup/sendmsg4|6, and at cgroup_skb/egress the ones no sock_addr hook sees (a connected
  UDP-Lite socket's, a ping socket's sendto).
- ``<hook>+sigkill``: the deny hook stops the effect and bpf_send_signal(SIGKILL) ends the process.
- ``fanotify+sigkill`` for exec: the exec permission is denied (the new image never runs) and
  the caller is killed.
- ``sigkill-after-the-fact``: no deny hook; the process is killed after the effect happened.
- ``tracepoint``: recorded only (audit, monitor mode, or fallback = "audit").
- ``exec-tracepoint`` (``+sigkill``): exec rules with ``targets.fileless`` on hosts without
  BPF-LSM, judged in the kernel at tp_btf/sched_prepare_exec (fanotify cannot mark a file with
  no name); it cannot deny, only kill before the new image runs (:func:`fileless_exec`).

An ``open`` rule whose access includes ``truncate`` also names truncate(2) and ftruncate(2),
which change the file without an open: they get their own :class:`Enforcement`
(``truncate_call``), since only BPF-LSM (path_truncate, file_truncate) can deny them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import MechanismUnavailable
from agent.kernel.mechanism import HostCapabilities as HostCapabilities  # its users' name
from agent.kernel.mechanism import Mechanism, deny_hook
from agent.kernel.procfs import FOREIGN_MOUNTS_MAX
from agent.policy.compile import CompiledPolicySet, CompiledRule
from agent.policy.evaluate import effective_action


def host_capabilities() -> HostCapabilities:
    """What this host can enforce with, measured by ``sealtrail doctor``'s probes (each
    capability is tried for real: a program loaded, a fanotify mark placed)."""
    from agent.kernel.host import probe_host  # loads BPF: only when asked

    return probe_host().capabilities


@dataclass(frozen=True)
class Enforcement:
    """How one rule is enforced on one host; ``error`` set means it cannot be, as written."""

    rule: CompiledRule
    mechanism: Mechanism | None
    after_the_fact: bool = False  # the effect happens before the action: recorded as such
    note: str = ""
    error: str | None = None
    #: open rules guarding truncate: how truncate(2) and ftruncate(2) are enforced
    truncate_call: Enforcement | None = None
    #: ways to the rule's objects this mechanism does not see (``fanotify_gaps``)
    gaps: tuple[str, ...] = ()

    def for_event(self, kind: str) -> Enforcement:
        """How an event of ``kind`` under this rule is enforced (a truncate event: by the
        truncate hook, not the open's)."""
        return self.truncate_call if kind == "truncate" and self.truncate_call else self

    def to_dict(self) -> dict[str, Any]:
        out = self._fields()
        if self.truncate_call is not None:
            out["truncate_call"] = self.truncate_call._fields()
        return out

    def _fields(self) -> dict[str, Any]:
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
            "open_on_host": list(self.gaps),
        }


#: what an operation's notes and errors call it when it is not the rule's own operation
_CALL_NAMES = {"truncate": "truncate(2)/ftruncate(2)"}


def enforcement_for(rule: CompiledRule, host: HostCapabilities) -> Enforcement:
    main = _by_exe(_kills_by_pid(_enforcement(rule, rule.operation, host), host))
    if (
        rule.operation == "connect"
        and not host.cgroup_egress
        and main.mechanism is not None
        and main.mechanism.hook == Mechanism.CGROUP_SOCK
    ):
        main = dataclasses.replace(main, gaps=(*main.gaps, _NO_EGRESS))
    if rule.operation != "open" or "truncate" not in rule.access:
        return main
    call = _kills_by_pid(_enforcement(rule, "truncate", host), host)
    how = call.mechanism or "NONE"
    flag = " after the fact" if call.after_the_fact else ""
    note = f"{_CALL_NAMES['truncate']}: {how}{flag}, {call.note or call.error}"
    return dataclasses.replace(
        main,
        note="; ".join(n for n in (main.note, note) if n),
        error="; ".join(e for e in (main.error, call.error) if e) or None,
        truncate_call=call,
    )


def _userns_for_all() -> bool:
    """Whether any user may make a user namespace here (user.max_user_namespaces, Debian's
    kernel.unprivileged_userns_clone, Ubuntu's kernel.apparmor_restrict_unprivileged_userns);
    True where a setting cannot be read."""

    def value(name: str, default: int) -> int:
        try:
            return int(Path(f"/proc/sys/{name}").read_text())
        except (OSError, ValueError):
            return default

    return (
        value("user/max_user_namespaces", 1) > 0
        and value("kernel/unprivileged_userns_clone", 1) == 1
        and value("kernel/apparmor_restrict_unprivileged_userns", 0) == 0
    )


def _by_exe(how: Enforcement) -> Enforcement:
    """Every hook names a process's binary by its mm's exe file, which the process itself may
    replace (tests/kernel/test_bypass_reported.py)."""
    if not how.rule.by_exe:
        return how
    who = "any user here (user namespaces are open to all)" if _userns_for_all() else "root here"
    gap = (
        "a process can make the kernel name another binary as its exe (prctl PR_SET_MM_MAP "
        "or PR_SET_MM_EXE_FILE after unmapping its own, which needs CAP_SYS_ADMIN in a user "
        f"namespace of its own: {who}): the rule's exe subjects and exceptions then judge the "
        "binary it names"
    )
    note = "; ".join(n for n in (how.note, gap) if n)
    return dataclasses.replace(how, note=note, gaps=(*how.gaps, gap))


def _enforcement(rule: CompiledRule, op: str, host: HostCapabilities) -> Enforcement:
    if rule.fileless and not host.lsm:
        return fileless_exec(rule, host)
    hook = deny_hook(op, host)
    if rule.action == "audit":
        return Enforcement(rule, Mechanism.TRACEPOINT, note="recorded, not stopped")
    if rule.action == "allow":
        where = Mechanism.TRACEPOINT if rule.mode == "monitor" else (hook or Mechanism.TRACEPOINT)
        return Enforcement(rule, where, note="exception, judged where the rules it exempts are")
    if rule.mode == "monitor":
        missing = "" if hook else f"; in enforce mode it would need a fallback ({op}: no deny hook)"
        return Enforcement(
            rule,
            Mechanism.TRACEPOINT,
            note=f"monitor: records {effective_action(rule.mode, rule.action)}{missing}",
        )
    if rule.action == "kill" and host.send_signal and hook:
        note = "denied, then killed: the exec never runs" if op == "exec" else "denied, then killed"
        how = Enforcement(rule, hook.killing(), note=_hook_note(rule, op, hook, host) or note)
        return _residual(how, op, hook)
    if rule.action == "deny" and hook:
        return _residual(Enforcement(rule, hook, note=_hook_note(rule, op, hook, host)), op, hook)
    return _fallback(rule, op, host)


#: What the syscall tracepoints (the event stream, so every after-the-fact judgement) never
#: see: no tracepoint runs for io_uring's operations, nor for 32-bit (ia32) system calls,
#: which the kernel's syscall events skip (tests/kernel/test_bypass_pathfilter.py).
UNSEEN = (
    "io_uring (no syscall tracepoint runs; sysctl kernel.io_uring_disabled=2 closes that) or "
    "a 32-bit program's system call (ia32: syscall tracepoints skip them; a kernel without "
    "IA32 emulation, or booted with ia32_emulation=0, has none)"
)


def fanotify_gaps(rule: CompiledRule) -> tuple[str, ...]:
    """The ways to a fanotify-enforced rule's objects that the kernel does not ask the agent
    about (hosts without BPF-LSM; measured, docs in policies/README.md). What gets through one
    is seen afterwards in the event stream and handled by the rule's ``fallback``."""
    op = rule.operation
    if rule.paths is None:
        what = "a filesystem mounted after the policy loaded"
    else:
        what = "a directory on a rule path that is created, renamed or mounted over later"
    gaps = [
        f"{what} is marked when the agent sees the change (inotify, mountinfo): an {op} "
        "there before that is not stopped"
        # an exec is seen afterwards whatever made it (sched_process_exec, not a syscall's)
        + ("" if op == "exec" else f", and one made through {UNSEEN} is not seen afterwards either")
    ]
    if op == "open" and (rule.paths is None or any(
        p.endswith(("*", "/")) or p.startswith("/proc/") for p in rule.paths
    )):  # fmt: skip
        gaps.append(
            "a file on procfs (the /proc of a chroot or a container mounted below a rule's "
            "directory, or a rule path in /proc): procfs refuses fanotify permission events, so "
            "an open there is not stopped"
        )
    if op == "open" and {"write", "truncate"} & set(rule.access):
        gaps.append(
            "a file opened for writing before the policy loaded (or while the agent was down) "
            "stays writable through that descriptor: opens are judged when they happen"
        )
    if op == "exec" and (rule.paths is None or any(p.endswith(("*", "/")) for p in rule.paths)):
        gaps.append(
            "a program under a prefix started through the dynamic loader (ld.so PROGRAM) is "
            "opened, not exec'd, and not stopped"
        )
    gaps += without_an_open(rule, lsm=False)
    gaps.append(
        f"a file reached through a mount that another mount namespace has past its first "
        f"{FOREIGN_MOUNTS_MAX:,} mounts is judged by the path that namespace shows (the agent "
        "reads that many of another namespace's mounts, and logs a namespace that has more)"
    )
    if rule.paths is None or any(p.endswith(("*", "/")) for p in rule.paths):
        # the agent names the file when it answers, by its name then
        gaps.append(
            f"a file renamed out of the rule's path while its {op} waits for the agent's answer "
            "is judged as if still in each of the rule's trees and prefixes, but one renamed "
            "into another directory marked for the same kind of event (another rule's) is "
            "judged by its new name there (then renamed back): whoever may rename it"
        )
    if rule.paths is not None and any(p.endswith(("*", "/")) for p in rule.paths):
        gaps.append(_HARD_LINK)
        # directory marks: the kernel reports an open to the directory the file's dentry
        # hangs from (tests/kernel/test_bypass_reported.py tries both)
        gaps.append(
            f"a file below a prefix or tree opened by handle (open_by_handle_at, "
            "CAP_DAC_READ_SEARCH) while its directory entry is not in the kernel's cache has no "
            f"parent directory the kernel reports to: the {op} is not stopped, and the event "
            'stream gives its path as "/", so it is not caught afterwards either'
        )
        gaps.append(
            "a directory whose path is longer than PATH_MAX (4096 bytes) below a prefix or tree "
            f"is not marked (marks are planned by path name; the agent logs it as not marked): "
            f"an {op} of a file there is not stopped, nor caught afterwards"
        )
    return tuple(gaps)


#: Prefix and tree rules match names (policies/README.md "Hard links"): on every host
_HARD_LINK = (
    "a hard link made outside the rule's path (by the file's owner where "
    "fs.protected_hardlinks allows, or by root) is another name of the file, judged by that "
    "name, as policy test judges it"
)


def without_an_open(rule: CompiledRule, lsm: bool) -> list[str]:
    """What an open rule names that happens without an open (policies/README.md, "Files
    that appear without an open"); with BPF-LSM, path_mknod judges mknod(2) like an O_CREAT
    open."""
    gaps: list[str] = []
    if rule.operation != "open":
        return gaps
    if "create" in rule.access:
        how = "link(2)" if lsm else "mknod(2), link(2)"
        gaps.append(
            f"a file also appears without an open: {how} or rename(2) into the rule's path, "
            "or an O_TMPFILE file linked in with linkat(2); none is judged by this rule"
        )
    if "write" in rule.access:
        gaps.append(
            "whoever may write a file's directory can replace the file at its name (rename(2) "
            "over it, renameat2 RENAME_EXCHANGE): no open of it is judged by this rule"
        )
    if "truncate" in rule.access and "write" not in rule.access:
        gaps.append(
            "fallocate(2) (FALLOC_FL_PUNCH_HOLE, FALLOC_FL_COLLAPSE_RANGE) on a descriptor "
            "opened for writing (this rule does not guard write) empties or shortens the file "
            "without a truncate"
        )
    return gaps


def _residual(how: Enforcement, op: str, hook: Mechanism) -> Enforcement:
    """fanotify leaves gaps (``fanotify_gaps``): in enforce mode the rule must say what is done
    with what gets through, never a silent difference from ``policy test``."""
    if hook == Mechanism.LSM:
        no_open = without_an_open(how.rule, lsm=True)
        lsm_gaps = list(no_open)
        if any(p.endswith(("*", "/")) for p in how.rule.paths or ()):
            lsm_gaps.append(_HARD_LINK)
            # the LSM hooks judge the path of the mount the caller used
            lsm_gaps.insert(0, (
                "a bind mount or another mount namespace shows these files under another path, "
                "which the kernel judges as that path: an exec there is caught afterwards "
                f"({how.rule.fallback or 'audited'}), another operation is not"
            ))  # fmt: skip
        if not lsm_gaps:
            return how
        note = "; ".join(n for n in (how.note, *no_open) if n)
        return dataclasses.replace(how, note=note, gaps=tuple(lsm_gaps))
    if op == "bind" and _ephemeral_overlap(how.rule.ports):  # no bind hook sees an autobind
        note = "; ".join(n for n in (how.note, _AUTOBIND) if n)
        return dataclasses.replace(how, note=note, gaps=(_AUTOBIND,))
    if hook != Mechanism.FANOTIFY or op not in ("exec", "open"):
        return how
    gaps = fanotify_gaps(how.rule)
    fallback = how.rule.fallback
    if fallback is None:
        error = (
            f"fanotify cannot stop every way to this {op} on this host ({'; '.join(gaps)}): "
            'set fallback = "kill" or "audit" for what gets through (detected afterwards)'
        )
        return dataclasses.replace(how, error=error, gaps=gaps)
    then = "killed" if fallback == "kill" else "audited"
    note = f"open on this host, detected afterwards and {then}: {'; '.join(gaps)}"
    return dataclasses.replace(how, note="; ".join(n for n in (how.note, note) if n), gaps=gaps)


def _kills_by_pid(how: Enforcement, host: HostCapabilities) -> Enforcement:
    """A kill after the fact is sent from userspace to the pid the kernel reported. Outside the
    host's PID namespace (the agent in a container) that number names another process or none:
    such a rule cannot be enforced as written (``probe.check_host_pid_namespace``)."""
    if host.host_pids or how.error or how.rule.mode == "monitor":
        return how
    after = how.mechanism == Mechanism.SIGKILL_AFTER_THE_FACT
    # what fanotify misses is killed afterwards by pid (the autobind gap of a bind rule is
    # not judged afterwards at all: nothing is killed for it)
    fanotify = how.mechanism is not None and how.mechanism.hook == Mechanism.FANOTIFY
    residual = how.rule.fallback == "kill" and bool(how.gaps) and fanotify
    if not (after or residual):
        return how
    return dataclasses.replace(
        how,
        error="the agent is not in the host's PID namespace (a container): a kill after the "
        "fact by the kernel's pid would reach another process; run the agent with the host's "
        'PID namespace, or set fallback = "audit"',
    )


def judged_in_kernel_at_exec(mechanism: Mechanism | None) -> bool:
    """Does the guard judge (and report) this rule's execs in the kernel, at sched_prepare_exec?
    Then the enforcer neither judges those exec events again nor needs fanotify for them."""
    return mechanism is not None and mechanism.hook == Mechanism.EXEC_TRACEPOINT


def fileless_exec(rule: CompiledRule, host: HostCapabilities) -> Enforcement:
    """A ``targets.fileless`` exec rule on a host without BPF-LSM. fanotify cannot mark a file
    that has no name, so the guard judges these execs at sched_prepare_exec (caller still
    current, bprm->file the memfd). That hook cannot deny: a SIGKILL sent there ends the caller
    before one instruction of the new image runs, so deny needs ``fallback = "kill"``. Without
    the hook (kernels before 6.10) only the exec event is left: after the fact."""
    if not host.fileless_exec_hook:
        if rule.action in ("audit", "allow") or rule.mode == "monitor":
            note = "fileless exec: recorded from the event"
            return Enforcement(rule, Mechanism.TRACEPOINT, note=note)
        return _fallback(rule, "exec", host)
    where = "judged in the kernel at sched_prepare_exec"
    if rule.action == "allow":
        return Enforcement(rule, Mechanism.EXEC_TRACEPOINT, note=f"exception, {where}")
    if rule.action == "audit" or rule.mode == "monitor":
        what = (
            "recorded, not stopped"
            if rule.action == "audit"
            else effective_action(rule.mode, rule.action)
        )
        return Enforcement(rule, Mechanism.EXEC_TRACEPOINT, note=f"{where}: {what}")
    if not host.send_signal:
        return _fallback(rule, "exec", host)
    if rule.action == "kill" or rule.fallback == "kill":
        return Enforcement(
            rule,
            Mechanism.EXEC_TRACEPOINT_SIGKILL,
            note=f"{where}: the caller is killed before the new image runs (no EPERM without "
            "BPF-LSM)",
        )
    if rule.fallback == "audit":
        note = "fallback: audited, exec not stopped"
        return Enforcement(rule, Mechanism.EXEC_TRACEPOINT, after_the_fact=True, note=note)
    return Enforcement(
        rule,
        None,
        error='no hook denies a fileless exec without BPF-LSM: set fallback = "kill" (the '
        'caller is killed before the new image runs) or "audit"',
    )


def _hook_note(rule: CompiledRule, op: str, hook: Mechanism, host: HostCapabilities) -> str:
    """What the deny hook leaves open or covers beyond the operation's name: never hidden."""
    if op == "exec" and hook == Mechanism.LSM:
        return (
            "code mapped executable from a named file (the dynamic loader's `ld.so PROGRAM`, "
            "dlopen) is judged as its exec at mmap_file/file_mprotect"
        )
    if op == "open" and hook == Mechanism.FANOTIFY and "create" in rule.access:
        return "a new file is created empty before its open is denied (no create hook without LSM)"
    if op == "connect" and hook == Mechanism.CGROUP_SOCK:
        egress = (
            "UDP-Lite on a connected socket and ICMP echo from a ping socket as they leave (egress)"
            if host.cgroup_egress
            else f"but not {_NO_EGRESS}"
        )
        return (
            f"UDP datagrams sent without connect are judged at sendmsg too, {egress}; raw "
            "sockets (CAP_NET_RAW) are not judged, nor where an IPv4 source-route option "
            "(IP_OPTIONS or an IP_RETOPTS message, CAP_NET_RAW) sends the packet first: the "
            "hook judges the address given, not the first hop"
        )
    return ""


#: What the connect hooks miss where cgroup_skb programs cannot name their task (6.1)
_NO_EGRESS = (
    "UDP-Lite on a connected socket (its connect runs no hook) nor ICMP echo sent with an "
    "address from a ping socket (open to the groups in net.ipv4.ping_group_range): this kernel "
    "refuses the egress judge (doctor: cgroup_egress), so those reach the address unjudged"
)


def _port_span(port: int | str) -> tuple[int, int]:
    if isinstance(port, int):
        return port, port
    low, _, high = port.partition("-")
    return int(low), int(high or low)


def _ephemeral_overlap(ports: tuple[int | str, ...] | None) -> bool:
    """Whether a bind rule names a port the kernel may pick itself: one in the host's
    net.ipv4.ip_local_port_range (read here; 32768-60999, the kernel's default, if it
    cannot be)."""
    try:
        low, high = (int(x) for x in Path(_PORT_RANGE).read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return ports is None or any(a <= high and b >= low for a, b in (_port_span(p) for p in ports))


_PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
#: The bind hooks see the port a bind(2) asks for, and post_bind the one the kernel picks for a
#: bind to port 0; a port picked at listen, connect or sendto runs none of them
#: (tests/kernel/test_bypass_reported.py).
_AUTOBIND = (
    "a port the kernel picks itself outside bind(2) is not judged: listen, connect or sendto "
    "on a socket not bound yet takes a port of net.ipv4.ip_local_port_range without a bind "
    "hook (and IP_LOCAL_PORT_RANGE narrows the pick to one port), so a rule port in that "
    "range can be taken that way, not stopped and not judged afterwards (a bind to port 0 "
    "is judged on the port picked)"
)


def _fallback(rule: CompiledRule, operation: str, host: HostCapabilities) -> Enforcement:
    """Enforce mode, no mechanism for the action as written: only an explicit fallback."""
    op = _CALL_NAMES.get(operation, operation)
    # what the syscall tracepoints never see is not judged afterwards either (an exec is seen
    # at sched_process_exec, whatever made it)
    unseen = () if operation == "exec" else (f"a {op} made through {UNSEEN} is not seen",)
    if rule.fallback == "audit":
        return Enforcement(
            rule,
            Mechanism.TRACEPOINT,
            after_the_fact=True,
            note="; ".join((f"fallback: audited, {op} not stopped", *unseen)),
            gaps=unseen,
        )
    if rule.fallback == "kill" and host.send_signal:
        return Enforcement(
            rule,
            Mechanism.SIGKILL_AFTER_THE_FACT,
            after_the_fact=True,
            note="; ".join(
                (f"fallback: the {op} takes effect, then the process is killed", *unseen)
            ),
            gaps=unseen,
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
