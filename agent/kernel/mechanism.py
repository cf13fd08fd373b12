"""The enforcement mechanisms, each spelled once, and which of them can deny each operation.

A ``Mechanism`` is what a verdict's ``mechanism`` says in the journal (docs/journal-format.md),
what ``policy check --host`` prints for each rule and what ``sealtrail doctor`` plans for each
operation: the deny hooks come from one table (``DENY_HOOKS``, DESIGN.md section 3) for both,
so the two never disagree about a host.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.kernel.probe import Check

_KILLED = "+sigkill"


class Mechanism(enum.StrEnum):
    """How a rule is enforced (``<hook>+sigkill``: the hook denies, then the process is killed)."""

    LSM = "lsm"  # a BPF-LSM hook denies with EPERM
    FANOTIFY = "fanotify"  # a permission event, answered from userspace by the Evaluator
    CGROUP_SOCK = "cgroup-sock"  # cgroup sock_addr hooks at the root cgroup deny with EPERM
    #: tp_btf/sched_prepare_exec judges fileless execs without BPF-LSM: it can only kill
    EXEC_TRACEPOINT = "exec-tracepoint"
    LSM_SIGKILL = LSM + _KILLED
    FANOTIFY_SIGKILL = FANOTIFY + _KILLED
    CGROUP_SOCK_SIGKILL = CGROUP_SOCK + _KILLED
    EXEC_TRACEPOINT_SIGKILL = EXEC_TRACEPOINT + _KILLED
    SIGKILL_AFTER_THE_FACT = "sigkill-after-the-fact"  # no deny hook: killed after the effect
    TRACEPOINT = "tracepoint"  # recorded from the event stream, not stopped

    def killing(self) -> Mechanism:
        """This hook's deny followed by SIGKILL (``lsm`` -> ``lsm+sigkill``)."""
        return Mechanism(self.hook + _KILLED)

    @property
    def hook(self) -> Mechanism:
        """The hook that judges (``lsm+sigkill`` -> ``lsm``)."""
        return Mechanism(self.value.removesuffix(_KILLED))


@dataclass(frozen=True)
class HostCapabilities:
    lsm: bool  # BPF-LSM programs load and attach
    cgroup_sock: bool  # cgroup v2 + cgroup sock_addr programs
    fanotify: bool  # fanotify permission events
    send_signal: bool  # bpf_send_signal
    fileless_exec_hook: bool = False  # tp_btf/sched_prepare_exec (6.10+): fileless kill w/o LSM
    #: cgroup_skb/egress programs may name the sending task (the guard judges UDP-Lite on a
    #: connected socket and ping sockets' datagrams there): newer kernels, not 6.1
    cgroup_egress: bool = True
    #: the agent is in the host's PID namespace: a pid the kernel reports names the same
    #: process here, so userspace may kill by it (after-the-fact kills); not in a container
    host_pids: bool = True

    @classmethod
    def from_checks(
        cls, checks: Mapping[str, Check], fileless_exec_hook: bool = False
    ) -> HostCapabilities:
        """What ``sealtrail doctor``'s checks (``probe.run_checks``) found usable."""

        def ok(name: str) -> bool:
            return name in checks and checks[name].ok

        return cls(
            lsm=ok("bpf_lsm"),
            cgroup_sock=ok("cgroup2") and ok("cgroup_bpf"),
            fanotify=ok("fanotify_perm"),
            send_signal=ok("send_signal"),
            fileless_exec_hook=fileless_exec_hook,
            cgroup_egress=ok("cgroup_egress"),
            # a check report without the namespace check (older JSON, unit tests): the host's
            host_pids=checks["host_pid_namespace"].ok if "host_pid_namespace" in checks else True,
        )

    def has(self, hook: Mechanism) -> bool:
        return bool(getattr(self, _CAPABILITY[hook]))


#: Hooks that can deny each operation, best first.
DENY_HOOKS: dict[str, tuple[Mechanism, ...]] = {
    "exec": (Mechanism.LSM, Mechanism.FANOTIFY),
    "open": (Mechanism.LSM, Mechanism.FANOTIFY),
    "unlink": (Mechanism.LSM,),
    "rename": (Mechanism.LSM,),
    "chmod": (Mechanism.LSM,),
    "chown": (Mechanism.LSM,),
    "connect": (Mechanism.CGROUP_SOCK, Mechanism.LSM),
    "bind": (Mechanism.CGROUP_SOCK, Mechanism.LSM),
    "listen": (Mechanism.LSM,),
    "truncate": (Mechanism.LSM,),  # truncate(2)/ftruncate(2) under open rules: path_/file_truncate
    # the LSM accept hook runs before the peer is known, so an address rule cannot be judged
    # there: accept rules need a fallback everywhere
    "accept": (),
}
_CAPABILITY = {
    Mechanism.LSM: "lsm",
    Mechanism.FANOTIFY: "fanotify",
    Mechanism.CGROUP_SOCK: "cgroup_sock",
}


def deny_hook(operation: str, host: HostCapabilities) -> Mechanism | None:
    """The best hook this host has that denies ``operation``, if any."""
    return next((hook for hook in DENY_HOOKS[operation] if host.has(hook)), None)
