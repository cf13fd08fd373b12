"""Enforcement on a host without BPF-LSM: one compiled policy, three mechanisms, one evaluator.

- connect/bind: the in-kernel guard (cgroup sock hooks, ``agent.enforce.guard``) judges every
  rule (deny, kill, audit, monitor) and reports its verdicts through the ring buffer.
- exec/open: fanotify permission events (``agent.enforce.fanotify``) on the rule targets, each
  answered by the Evaluator over the same compiled tables; deny and kill are answered there
  (kill = deny + SIGKILL: the exec or open never happens, then the process dies).
- everything else (audit rules, monitor mode, ``fallback`` rules of operations without a deny
  hook: unlink, rename, chmod, chown, listen, accept) is judged from the event stream, after
  the fact, and recorded as such.

``install`` swaps the whole state in one assignment after everything new is in place, so a
reload never leaves a moment without a policy, and a policy that cannot be installed leaves the
old one in force.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.enforce import fanotify as fan
from agent.enforce.fanotify import FanotifyGuard, PermissionRequest
from agent.enforce.guard import GUARDED_OPS, LSM_OPS, Guard, cgroup2_root, cgroup_dirs
from agent.errors import KernelError
from agent.events import model
from agent.events.decode import open_access
from agent.events.stream import EventStream
from agent.policy.compile import CompiledPolicySet, compile_policy_set
from agent.policy.evaluate import Evaluator, Process, Request, Verdict, request_from_event
from agent.policy.mechanisms import (
    Enforcement,
    HostCapabilities,
    plan,
    require_enforceable,
)
from agent.policy.source import PolicySet

log = logging.getLogger(__name__)

FANOTIFY_MECHANISMS = frozenset({"fanotify", "fanotify+sigkill"})
MAX_DIR_MARKS = 20000


@dataclass(frozen=True)
class VerdictRecord:
    """One decision for the journal."""

    action: str  # allow | audit | deny | kill | would_deny | would_kill
    rule: str
    policy: str
    digest: str
    mechanism: str
    operation: str
    after_the_fact: bool
    pid: int
    exe: str | None
    object: dict[str, Any]

    def fields(self) -> dict[str, Any]:
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


def journal_action(effective: str) -> str:
    return effective.replace("-", "_")


@dataclass
class _State:
    compiled: CompiledPolicySet
    evaluator: Evaluator
    enforcements: dict[tuple[str, str], Enforcement]  # (policy, rule id) -> how
    inode_targets: dict[tuple[int, int], str] = field(default_factory=dict)
    lineage: bool = False
    operations: frozenset[str] = frozenset()  # the operations some rule guards


def process_of(tid: int, with_ancestors: bool) -> tuple[Process, int]:
    """The acting process as /proc tells it (exe, real uid/gid, cgroup v2 path, ancestry), and
    the thread's process id (tgid)."""
    uid = gid = ppid = -1
    tgid = tid
    with open(f"/proc/{tid}/status") as f:
        for line in f:
            if line.startswith("Tgid:"):
                tgid = int(line.split()[1])
            elif line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
            elif line.startswith("PPid:"):
                ppid = int(line.split()[1])
    exe = _readlink(f"/proc/{tid}/exe")
    cgroup = None
    with contextlib.suppress(OSError), open(f"/proc/{tid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                cgroup = line[3:].strip()
    ancestors: list[str] = []
    if with_ancestors:
        if exe:
            ancestors.append(exe)
        pid, hops = ppid, 0
        while pid > 1 and hops < 64:
            parent_exe = _readlink(f"/proc/{pid}/exe")
            if parent_exe:
                ancestors.append(parent_exe)
            pid = _ppid(pid)
            hops += 1
    process = Process(exe=exe, uid=uid, gid=gid, cgroup=cgroup, ancestors=tuple(ancestors))
    return process, tgid


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path).removesuffix(" (deleted)")
    except OSError:
        return None


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def kill_process(pid: int) -> bool:
    """SIGKILL through a pidfd (no signal to a recycled pid once the fd is open)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class Enforcer:
    """Holds the live policy and its mechanisms; the daemon feeds it events and drains verdicts."""

    def __init__(
        self,
        stream: EventStream,
        caps: HostCapabilities,
        cgroup: Path | None = None,
    ) -> None:
        self.stream = stream
        self.caps = caps
        self.verdicts: collections.deque[VerdictRecord] = collections.deque()
        self._state: _State | None = None
        self._guard: Guard | None = None
        self._fanotify: FanotifyGuard | None = None
        self._cgroup = cgroup
        self._cgroups = CgroupPaths()
        self._marks: set[tuple[str, str]] = set()

    @property
    def digest(self) -> str | None:
        return self._state.compiled.digest if self._state else None

    # ---- install (start and reload) ----
    def install(
        self, policy_set: PolicySet, compiled: CompiledPolicySet | None = None
    ) -> tuple[Enforcement, ...]:
        """Compile (unless ``compiled`` is that of ``policy_set`` already), check every rule has
        a mechanism, install; the old policy stays on error."""
        compiled = compiled or compile_policy_set(policy_set)
        enforcements = plan(compiled, self.caps)
        require_enforceable(enforcements)
        state = _State(
            compiled,
            Evaluator(compiled),
            {(e.rule.policy_name, e.rule.rule_id): e for e in enforcements},
            lineage=compiled.follows_descendants,
            operations=frozenset(e.rule.operation for e in enforcements),
        )
        in_kernel = GUARDED_OPS | (LSM_OPS if self.caps.lsm else frozenset())
        if self._guard is None and any(e.rule.operation in in_kernel for e in enforcements):
            self._guard = Guard(
                self._cgroup, shared_maps=self.stream.shared_maps(), lsm=self.caps.lsm
            )
        if self._guard is not None:
            self._guard.install(compiled)
        self._update_stream(policy_set)
        fan_rules = [e for e in enforcements if e.mechanism in FANOTIFY_MECHANISMS]
        if fan_rules and self._fanotify is None:
            self._fanotify = FanotifyGuard(self._decide_permission)
            self._fanotify.start()
        if self._fanotify is not None:
            state.inode_targets = self._update_marks(policy_set, fan_rules)
        self._state = state  # the switch
        return enforcements

    def _update_stream(self, policy_set: PolicySet) -> None:
        """Ask the kernel for the file events rules target (and only those)."""
        kinds: set[str] = set()
        patterns: set[str] = set()
        for _, _, rule in policy_set.rules():
            if rule.operation in model.FILE_KINDS:
                kinds.add(rule.operation)
                if rule.targets.paths is None:
                    patterns.add("/")
                else:
                    patterns.update(rule.targets.paths)
            elif rule.operation in ("listen", "accept", "exec"):
                kinds.add(rule.operation)
        self.stream.reconfigure(extra_kinds=frozenset(kinds), path_patterns=tuple(sorted(patterns)))

    def _update_marks(
        self, policy_set: PolicySet, fan_rules: list[Enforcement]
    ) -> dict[tuple[int, int], str]:
        """fanotify marks for the targets of exec/open rules enforced by fanotify."""
        assert self._fanotify is not None
        fan_ids = {(e.rule.policy_name, e.rule.rule_id) for e in fan_rules}
        wanted: set[tuple[str, str]] = set()
        inode_targets: dict[tuple[int, int], str] = {}
        for source, _, rule in policy_set.rules():
            if (source.policy.name, rule.id) not in fan_ids:
                continue
            for path in rule.targets.paths or ("/",):
                if rule.operation == "exec":
                    wanted.add(("fs-exec", _existing_ancestor(path)))
                    continue
                if path.endswith("*"):
                    wanted.add(("dir", _existing_ancestor(os.path.dirname(path))))
                elif path.endswith("/"):
                    for d in _dirs_below(path):
                        wanted.add(("dir", d))
                else:
                    if os.path.exists(path):
                        wanted.add(("file", path))
                        st = os.stat(path)
                        inode_targets[(st.st_dev, st.st_ino)] = path
                    # the file may be replaced or created: its directory too
                    wanted.add(("dir", _existing_ancestor(os.path.dirname(path) or "/")))
        for kind, path in sorted(wanted - self._marks):
            try:
                if kind == "fs-exec":
                    self._fanotify.mark_filesystem_exec(path)
                elif kind == "dir":
                    self._fanotify.mark_dir(path)
                else:
                    self._fanotify.mark_file(path)
            except OSError as exc:
                log.warning("fanotify mark %s %s: %s", kind, path, exc)
        for kind, path in sorted(self._marks - wanted):
            mask = {
                "fs-exec": fan.FAN_OPEN_EXEC_PERM,
                "dir": fan.FAN_OPEN_PERM | fan.FAN_EVENT_ON_CHILD,
                "file": fan.FAN_OPEN_PERM,
            }[kind]
            with contextlib.suppress(OSError):
                self._fanotify.unmark(path, mask, filesystem=kind == "fs-exec")
        self._marks = wanted
        return inode_targets

    # ---- fanotify decisions (its own thread) ----
    def _decide_permission(self, req: PermissionRequest) -> bool:
        state = self._state
        if state is None:
            return True
        identity = _identity_target(state, req.fd) if not req.is_exec else None
        if not req.is_exec and identity is None and not state.evaluator.targets("open", req.path):
            return True  # a sibling of a marked file that no rule names: no need to ask /proc
        process, pid = process_of(req.tid, state.lineage)
        if req.is_exec:
            requests = [Request("exec", process, path=req.path)]
        else:
            flags = self.stream.pending_open_flags(req.tid)
            # unknown flags (the open began before we looked): judge every access (fail closed)
            access = (
                open_access(flags) if flags is not None else ("read", "write", "create", "truncate")
            )
            requests = [Request("open", process, path=req.path, access=access)]
            if identity is not None and identity != req.path:
                # a hard link to a protected file is the same inode: judge it by that name too
                requests.append(Request("open", process, path=identity, access=access))
        verdict = _strictest(state.evaluator.decide(r) for r in requests)
        if verdict.effective not in ("deny", "kill"):
            return True
        if verdict.effective == "kill":
            kill_process(pid)
        self._record(state, verdict, requests[0].operation, pid, process.exe,
                     {"path": req.path}, after_the_fact=False)  # fmt: skip
        return False

    # ---- events from the stream (main loop) ----
    def needs(self, kind: str) -> bool:
        """False if ``handle`` would ignore every event of this kind (no rule guards it, or
        the in-kernel guard judges it): such events need no Python object."""
        if self._state is None or kind not in self._state.operations:
            return False
        return not (
            self._guard is not None
            and (kind in GUARDED_OPS or (self._guard.lsm and kind in LSM_OPS))
        )

    def handle(self, ev: model.Event) -> None:
        state = self._state
        if state is None:
            return
        if isinstance(ev, model.GuardEvent):
            self._guard_verdict(ev)
            return
        if self._guard is not None and (
            ev.kind in GUARDED_OPS or (self._guard.lsm and ev.kind in LSM_OPS)
        ):
            return  # the guard judged it in the kernel and reported any verdict itself
        # an exec is judged for its caller: the image before the exec, not the new one
        exe = self._caller_exe(ev) if isinstance(ev, model.ExecEvent) else ev.exe
        process = Process(exe=exe, uid=ev.uid, gid=ev.gid, cgroup=self._cgroups.path(ev.cgroup_id))
        request = request_from_event(ev, process)
        if request is None:
            return
        verdict = state.evaluator.decide(request)
        if verdict.rule_id is None or verdict.action == "allow":
            return
        how = state.enforcements.get((verdict.policy_name or "", verdict.rule_id))
        mechanism = how.mechanism if how else "tracepoint"
        if mechanism in FANOTIFY_MECHANISMS and verdict.effective in ("deny", "kill"):
            return  # answered (and recorded) at the permission event
        after = bool(how and how.after_the_fact)
        if mechanism == "sigkill-after-the-fact" and verdict.effective in ("deny", "kill"):
            kill_process(ev.pid)
            self._record(state, verdict, request.operation, ev.pid, ev.exe, _object(ev),
                         after_the_fact=True, action="kill", mechanism=mechanism)  # fmt: skip
            return
        action = "audit" if after and verdict.effective in ("deny", "kill") else None
        self._record(state, verdict, request.operation, ev.pid, ev.exe, _object(ev),
                     after_the_fact=after, action=action, mechanism=mechanism)  # fmt: skip

    def _caller_exe(self, ev: model.ExecEvent) -> str | None:
        # the exec event names the new image; rules judge the caller: its parent's image if
        # this pid's previous image is gone from the table
        return self.stream.proctable.previous_exe(ev.pid) or self.stream.proctable.lookup(
            ev.ppid, ""
        )

    def _guard_verdict(self, ev: model.GuardEvent) -> None:
        assert self._guard is not None
        compiled = self._guard.compiled.get(ev.generation)
        if compiled is None:
            log.error("guard verdict from unknown generation %d", ev.generation)
            return
        rule = compiled.rule(ev.op, ev.rule_index)
        action = ev.action
        if rule.mode == "monitor" and rule.action in ("deny", "kill"):
            action = f"would_{rule.action}"
        obj: dict[str, Any] = (
            {"path": ev.path}
            if ev.path is not None
            else {"family": ev.family, "protocol": ev.protocol, "addr": ev.addr, "port": ev.port}
        )
        mechanism = ev.mechanism + ("+sigkill" if ev.action == "kill" else "")
        if (
            ev.action == "kill"
            and ev.mechanism == "cgroup-sock"
            and not (self._guard.kernel_kills_at_cgroup)
        ):
            kill_process(ev.pid)  # the kernel denied; this kernel cannot signal from there
        self.verdicts.append(
            VerdictRecord(
                action, rule.rule_id, rule.policy_name, compiled.digest, mechanism, ev.op,
                False, ev.pid, ev.exe, obj,
            )
        )  # fmt: skip

    def _record(
        self,
        state: _State,
        verdict: Verdict,
        operation: str,
        pid: int,
        exe: str | None,
        obj: dict[str, Any],
        *,
        after_the_fact: bool,
        action: str | None = None,
        mechanism: str | None = None,
    ) -> None:
        how = state.enforcements.get((verdict.policy_name or "", verdict.rule_id or ""))
        self.verdicts.append(
            VerdictRecord(
                action or journal_action(verdict.effective),
                verdict.rule_id or "",
                verdict.policy_name or "",
                verdict.digest,
                mechanism or (how.mechanism if how and how.mechanism else "tracepoint"),
                operation,
                after_the_fact,
                pid,
                exe,
                obj,
            )
        )

    def close(self) -> None:
        if self._fanotify is not None:
            self._fanotify.close()
            self._fanotify = None
        if self._guard is not None:
            self._guard.close()
            self._guard = None


_SEVERITY = {"allow": 0, "audit": 1, "would-deny": 1, "would-kill": 1, "deny": 2, "kill": 3}


def _strictest(verdicts: Iterable[Verdict]) -> Verdict:
    return max(verdicts, key=lambda v: _SEVERITY.get(v.effective, 0))


class CgroupPaths:
    """cgroup v2 id (what the probes report) -> path below the cgroup2 mount (what rules name).

    An id is a cgroup directory's inode number. Unknown ids trigger a rescan of the tree, at
    most once a second; a cgroup that is gone stays unknown (its rules cannot match).
    """

    RESCAN_S = 1.0

    def __init__(self) -> None:
        self._paths: dict[int, str] = {}
        self._next_scan = 0.0
        try:
            self._root: Path | None = cgroup2_root()
        except KernelError:
            self._root = None

    def path(self, cgroup_id: int) -> str | None:
        found = self._paths.get(cgroup_id)
        if found is not None or self._root is None:
            return found
        now = time.monotonic()
        if now >= self._next_scan:
            self._next_scan = now + self.RESCAN_S
            self._paths.update((cgid, rel) for rel, cgid in cgroup_dirs(self._root))
        return self._paths.get(cgroup_id)


def _identity_target(state: _State, fd: int) -> str | None:
    """The path an exact rule names for this very file (same device and inode), if any."""
    if not state.inode_targets:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return state.inode_targets.get((st.st_dev, st.st_ino))


def _existing_ancestor(path: str) -> str:
    p = Path(path.rstrip("*") or "/")
    while not p.exists() and p != p.parent:
        p = p.parent
    return str(p)


def _dirs_below(prefix: str) -> list[str]:
    root = _existing_ancestor(prefix)
    out = [root]
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            out.append(os.path.join(dirpath, d))
            if len(out) >= MAX_DIR_MARKS:
                log.warning("%s: more than %d directories, marked the first ones", prefix,
                            MAX_DIR_MARKS)  # fmt: skip
                return out
    return out


def _object(ev: model.Event) -> dict[str, Any]:
    if isinstance(ev, model.FileEvent):
        out: dict[str, Any] = {"path": ev.path, "result": ev.result}
        if isinstance(ev, model.RenameEvent):
            out["new_path"] = ev.new_path
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
