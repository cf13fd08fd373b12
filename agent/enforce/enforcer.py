"""Enforcement on a host without BPF-LSM: one compiled policy, three mechanisms, one evaluator.

- connect/bind: the in-kernel guard (cgroup sock hooks, ``agent.enforce.guard``) judges every
  rule (deny, kill, audit, monitor) and reports its verdicts through the ring buffer.
- exec/open: fanotify permission events (``agent.enforce.fanotify``) on the rule targets, each
  answered by the Evaluator over the same compiled tables; deny and kill are answered there
  (kill = deny + SIGKILL: the exec or open never happens, then the process dies).
- everything else (audit rules, monitor mode, ``fallback`` rules of operations without a deny
  hook: unlink, rename, chmod, chown, listen, accept) is judged from the event stream, after
  the fact, and recorded as such.

``install`` is a transaction: every new fanotify mark and the guard's new tables go in beside
the old ones, then one assignment switches the userspace state, then what only the old policy
needed is taken away. If any step before the switch fails, what it added is undone and the old
policy stays whole. After every install the enforcer compares what the kernel holds (fanotify
marks from fdinfo, the guard's live maps, its attached programs) with the plan, and reports
each difference (``InstallResult.errors``): the daemon records them as errors, never as loaded.

fanotify cannot close every path to an object on its own (directories created after the marks,
other mounts; ``mechanisms.fanotify_gaps``). What gets through is seen after the fact in the
event stream (a successful open or exec that the policy denies) and handled by the rule's
``fallback``: recorded always, killed if it says so.

Beside this module: the verdict record (``verdict``), cgroup ids to paths (``cgroups``), the
acting process from /proc (``process``), mark planning (``marks``, pure); the event stream is
reached only through ``EventSource``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from agent.enforce.cgroups import CgroupPaths
from agent.enforce.dirwatch import DirWatch, NewDir
from agent.enforce.fanotify import FanotifyGuard, MarkTable, PermissionRequest, name_here
from agent.enforce.guard import GUARDED_OPS, LSM_OPS, Guard, RuleRef, SavedRule
from agent.enforce.handover import Handover, private_chain, startup_files
from agent.enforce.marks import (
    MarkKey,
    MarkPlan,
    MarkRule,
    OsView,
    extend_plan,
    plan_marks,
    too_long,
)
from agent.enforce.mounts import MountView
from agent.enforce.process import RECYCLED, kill_process, process_of
from agent.enforce.verdict import VerdictRecord, event_object, guard_object
from agent.errors import KernelError
from agent.events import model
from agent.events.decode import open_access
from agent.events.loader import is_dynamic_loader, is_loader_process
from agent.journal.canonical import JsonValue
from agent.kernel.fanotify import FAN_EVENT_ON_CHILD, FAN_OPEN_EXEC_PERM, FAN_OPEN_PERM
from agent.kernel.mechanism import HostCapabilities, Mechanism
from agent.kernel.pins import GUARD
from agent.native.fanfilter import FilterSpec, own_mount_ns
from agent.policy.compile import CompiledPolicySet, compile_policy_set, path_patterns
from agent.policy.evaluate import (
    Effect,
    Evaluator,
    Process,
    Request,
    Verdict,
    effective_action,
    judged_kinds,
    request_from_event,
)
from agent.policy.mechanisms import (
    Enforcement,
    judged_in_kernel_at_exec,
    plan,
    require_enforceable,
)
from agent.policy.source import PolicySet

log = logging.getLogger(__name__)

FANOTIFY_MECHANISMS = frozenset({Mechanism.FANOTIFY, Mechanism.FANOTIFY_SIGKILL})


class ExeHistory(Protocol):
    """The binaries the stream saw each process run (``agent.events.proctable.ProcTable``)."""

    def previous_exe(self, pid: int) -> str | None: ...

    def lookup(self, pid: int, comm: str) -> str | None: ...


@functools.lru_cache(maxsize=4096)
def _real_place(place: str) -> str:
    """A planned mark's place as the kernel names it (the plan keeps the rule's spelling)."""
    return os.path.realpath(place)


class EventSource(Protocol):
    """What the enforcer asks of the event stream (``agent.events.stream.EventStream``)."""

    @property
    def proctable(self) -> ExeHistory: ...

    def shared_maps(self) -> dict[str, int]:
        """Maps the guard's object shares (its verdicts go to the same ring buffer)."""
        ...

    def reconfigure(
        self, extra_kinds: frozenset[str], path_patterns: tuple[str, ...], open_flags: bool = False
    ) -> None:
        """Stream these kinds too, file kinds only under these rule paths; opens' flags too."""
        ...

    def pending_open_flags(self, tid: int) -> int | None:
        """The flags of the open(2) syscall thread ``tid`` is inside, if the probes saw it."""
        ...

    def boot_ns(self, wall_ns: int) -> int:
        """The probes' CLOCK_BOOTTIME stamp of an event whose ``ts_ns`` is ``wall_ns``."""
        ...


@dataclass(frozen=True)
class InstallResult:
    """What ``install`` put in force; ``errors``: where the kernel does not hold the plan."""

    enforcements: tuple[Enforcement, ...]
    errors: tuple[str, ...] = ()
    #: places rules need marked on a filesystem that refuses permission events (procfs),
    #: judged after the fact there: ``marks.MarkPlan.unmarkable``, one line per place
    not_marked: tuple[str, ...] = ()


@dataclass
class _State:
    compiled: CompiledPolicySet
    evaluator: Evaluator
    enforcements: dict[tuple[str, str], Enforcement]  # (policy, rule id) -> how
    #: (device, inode, operation) of a file an exact rule names -> that rule path
    identities: dict[tuple[int, int, str], str] = field(default_factory=dict)
    lineage: bool = False
    operations: frozenset[str] = frozenset()  # the operations some rule guards
    #: operation -> the paths its exact rules name (a hard link made to one since the plan
    #: is found by asking them: ``_identity_target``)
    exact_paths: dict[str, tuple[str, ...]] = field(default_factory=dict)


class Enforcer:
    """Holds the live policy and its mechanisms; the daemon feeds it events and drains verdicts."""

    def __init__(
        self,
        stream: EventSource,
        caps: HostCapabilities,
        cgroup: Path | None = None,
        handover: Handover | None = None,
    ) -> None:
        self.stream = stream
        self.caps = caps
        #: what outlives this agent and what an earlier one left (agent.enforce.handover)
        self.handover = handover or Handover()
        self.pins = self.handover.pins  # where the guard is pinned, None: not pinned
        #: the guard an earlier agent pinned, taken over at the first install (for the journal)
        self.takeover: dict[str, JsonValue] | None = None
        self.verdicts: collections.deque[VerdictRecord] = collections.deque()
        #: where the kernel stopped holding the live plan since the last install (from the
        #: directory watcher's thread); the daemon journals them as policy_mismatch
        self.problems: collections.deque[str] = collections.deque()
        self._state: _State | None = None
        self._guard: Guard | None = None
        self._fanotify: FanotifyGuard | None = None
        self._cgroup = cgroup
        self._cgroups = CgroupPaths()
        self._lock = threading.RLock()  # install and the directory watcher's mark updates
        self._table: MarkTable | None = None
        self._mark_rules: tuple[MarkRule, ...] = ()
        self._mark_plan = MarkPlan()
        self._dirwatch: DirWatch | None = None
        self._policy_set: PolicySet | None = None
        self._mounts = MountView()
        self._installing = False
        self._exempted: set[str] = set()  # the agent's own exec chain (handover.private_chain)
        self._reported_unmarked: tuple[str, ...] = ()  # _not_marked's last lines
        self._stored = False  # the group is in the service manager's fd store
        self._started_ns = time.time_ns()  # verdicts from before: judged while no agent ran
        self._startup: tuple[set[tuple[int, int]], set[tuple[int, int]]] | None = None
        #: "held": the group waits for the next agent through a restart; else why it does not
        self.restart_hold: str | None = None
        #: the inherited group's marks and the unanswered events denied (for the journal)
        self.fanotify_takeover: dict[str, JsonValue] | None = None

    @property
    def digest(self) -> str | None:
        return self._state.compiled.digest if self._state else None

    @property
    def mark_count(self) -> int:
        """fanotify marks the kernel holds for the live policy."""
        return len(self._table.masks) if self._table else 0

    # ---- install (start and reload) ----
    def install(
        self, policy_set: PolicySet, compiled: CompiledPolicySet | None = None
    ) -> InstallResult:
        """Put ``policy_set`` in force as one transaction (module doc); raises, with the old
        policy still whole, if it cannot be; ``compiled`` is that of ``policy_set`` if given."""
        compiled = compiled or compile_policy_set(policy_set)
        enforcements = plan(compiled, self.caps)
        require_enforceable(enforcements)
        mark_rules = tuple(
            MarkRule((e.rule.policy_name, e.rule.rule_id), e.rule.operation, e.rule.paths)
            for e in enforcements
            if e.mechanism in FANOTIFY_MECHANISMS
        )
        self._installing = True  # the directory watcher yields: this plan includes its change
        try:
            return self._install(policy_set, compiled, enforcements, mark_rules)
        finally:
            self._installing = False

    def _install(
        self,
        policy_set: PolicySet,
        compiled: CompiledPolicySet,
        enforcements: tuple[Enforcement, ...],
        mark_rules: tuple[MarkRule, ...],
    ) -> InstallResult:
        with self._lock:
            marks = plan_marks(mark_rules, OsView()) if mark_rules else MarkPlan()
            state = _State(
                compiled,
                Evaluator(compiled),
                {(e.rule.policy_name, e.rule.rule_id): e for e in enforcements},
                identities=dict(marks.identities),
                exact_paths={
                    op: tuple(
                        text.decode("utf-8", "surrogateescape")
                        for text, exact in path_patterns(compiled, (op,))
                        if exact
                    )
                    for op in ("open", "exec")
                },
                lineage=compiled.follows_descendants,
                operations=frozenset().union(
                    *(judged_kinds(e.rule.operation, e.rule.access) for e in enforcements)
                ),
            )
            # an inherited group is adopted whatever the plan: what waits in it is answered,
            # and the earlier agent's marks it holds are pruned to this plan
            inherited = self.handover.fanotify_fd is not None
            table = self._mark_table() if mark_rules or inherited else self._table
            # an object replaced between planning and marking (someone renaming files in a
            # loop) must not keep a policy from loading: it is left out and reported below
            added = table.add(marks, strict=False) if table is not None else []
            try:
                self._update_stream(policy_set, mark_rules)
                try:
                    self._install_guard(compiled, enforcements)
                except BaseException:
                    if self._policy_set is not None:
                        self._update_stream(self._policy_set, self._mark_rules)
                    raise
            except BaseException:
                if table is not None:
                    table.undo(added)
                raise
            self._set_filter(None)  # no answer in C by the old plan once the new one holds
            self._state = state  # the switch
            self._policy_set, self._mark_rules, self._mark_plan = policy_set, mark_rules, marks
            self._hold(marks)
            errors = table.prune(marks) if table is not None else []
            for place in table.skipped if table is not None else []:
                if not os.path.lexists(place):  # removed since planned: nothing to mark there
                    continue
                errors.append(f"{place} changed while it was being marked: not marked until "
                              "the next change (judged after the fact)")  # fmt: skip
            errors += self._watch(marks)
            errors += self.verify()
            errors += self._exempt(marks)
            self._set_filter(self._filter_spec(state, marks))
        if marks.truncated:
            errors.append(f"more than {len(marks.marks)} objects to mark: marked that many")
        return InstallResult(enforcements, tuple(errors), self._not_marked(marks))

    def _not_marked(self, marks: MarkPlan) -> tuple[str, ...]:
        """``marks.unmarkable`` as lines, logged when they change (an install, or a refresh
        after a mount): not errors, the host's limit, which ``policy check --host`` names."""
        lines = tuple(
            (
                f"{place}: longer than PATH_MAX, not marked (marks are placed by path name); "
                f"{', '.join(f'{p}/{r}' for p, r in sorted(refs))}: an open or exec there is "
                "not stopped, nor caught afterwards"
                if too_long(place)
                else f"{place}: on a filesystem that refuses permission events (procfs); "
                f"{', '.join(f'{p}/{r}' for p, r in sorted(refs))} judged after the fact there"
            )
            for place, refs in sorted(marks.unmarkable.items())
        )
        if lines != self._reported_unmarked:
            for line in sorted(set(lines) - set(self._reported_unmarked)):
                log.warning("fanotify: not marked: %s", line)
            self._reported_unmarked = lines
        return lines

    def _set_filter(self, spec: FilterSpec | None) -> None:
        if self._fanotify is not None:
            self._fanotify.set_filter(spec)

    def _filter_spec(self, state: _State, marks: MarkPlan) -> FilterSpec | None:
        """What the native reader may answer ALLOW without asking ``_decide_permission``
        (agent.native.fanfilter): the files directly in a marked directory that no open or
        exec entry of the compiled paths table matches, neither by name nor by identity.
        Directories with another name in the agent's namespace (a bind mount, an overlay
        layer) are left to Python, which judges every name (``_judge_aliases``)."""
        if self._fanotify is None or not self._fanotify.has_native:
            return None
        dirs = []
        for key, mask in marks.marks.items():
            if not key.ino or not mask & FAN_EVENT_ON_CHILD:
                continue
            place = os.path.realpath(marks.places[key])
            if self._mounts.aliases(os.path.join(place, "x"), None, key.dev):
                continue
            dirs.append((place, key.dev, key.ino))
        try:
            mount_ns = own_mount_ns()
        except OSError:
            return None
        return FilterSpec(
            mount_ns,
            tuple(dirs),
            tuple(path_patterns(state.compiled, ("open", "exec"))),
            frozenset((dev, ino) for dev, ino, _ in state.identities),
            {op: state.evaluator.id_screen(op) for op in ("open", "exec")},
        )

    def _mark_table(self) -> MarkTable:
        """The group and its marks: made, or inherited (its marks adopted). Its reader starts
        only once a policy is in force (``_hold``): an inherited group's waiting events must
        be judged by this agent's policy, never allowed for want of one."""
        if self._fanotify is None:
            group = FanotifyGuard(self._decide_permission, fd=self.handover.fanotify_fd)
            self._table = MarkTable(group)
            if group.inherited:
                marks = self._table.adopt()
                denied = group.deny_unanswered()
                log.info("fanotify: took over the group an earlier agent stored: %d marks, %d "
                         "events it read and never answered denied", marks, denied)  # fmt: skip
                self.fanotify_takeover = {"marks": marks, "denied_unanswered": denied}
                self._stored = True  # the store has it: systemd passed it back
            self._fanotify = group
        assert self._table is not None
        return self._table

    def _hold(self, marks: MarkPlan) -> None:
        """After a switch: start answering, and keep the group through a restart where that is
        safe (agent.enforce.handover), else take it out of the store; ``restart_hold`` says
        which, and why."""
        group, h = self._fanotify, self.handover
        if group is None:
            return
        if h.managed:
            chain, problem = private_chain()
            problem = problem or self._startup_conflict(marks)
            for path in chain if problem is None else ():
                try:
                    group.ignore_exec(path)  # the restarted agent's exec must not wait
                    self._exempted.add(path)
                except KernelError as exc:
                    problem = f"cannot exempt {path} from the group: {exc}"
            if problem is None:
                if not self._stored and h.store is not None and h.store(group.fd):
                    log.info("fanotify: the group is held by the service manager through a "
                             "restart of the agent")  # fmt: skip
                    self._stored = True
                self.restart_hold = "held"
            else:
                if self._stored and h.unstore is not None:
                    h.unstore()
                self._stored = False
                if self.restart_hold != problem:
                    log.warning("fanotify enforcement ends with the agent (not held through a "
                                "restart): %s", problem)  # fmt: skip
                self.restart_hold = problem
        if not group.started:
            group.start()

    def _startup_conflict(self, marks: MarkPlan) -> str | None:
        """Why a held group would hang the next agent's start: a mark of ``marks`` that asks
        for an open it makes as it starts (None: no such mark)."""
        if self._startup is None:
            self._startup = startup_files(self.handover.startup_paths)
        files, dirs = self._startup
        devs = {dev for dev, _ in files | dirs}
        for key, mask in sorted(marks.marks.items()):
            if not mask & FAN_OPEN_PERM:
                continue
            place = marks.places[key]
            if (
                (key.filesystem and key.dev in devs)
                or (key.dev, key.ino) in files
                or (mask & FAN_EVENT_ON_CHILD and (key.dev, key.ino) in dirs)
            ):
                return (f"an open rule marks {place}, which the agent itself opens (or a "
                        "file in it) as it starts: a restarted agent would wait on its own "
                        "group")  # fmt: skip
        return None

    def _exempt(self, marks: MarkPlan) -> list[str]:
        """Exec rules fanotify cannot enforce: on the agent's own exec chain (ignore marks)."""
        errors = []
        exempt = set()
        for path in self._exempted:
            with contextlib.suppress(OSError):
                st = os.stat(path)
                exempt.add((st.st_dev, st.st_ino))
        for key, mask in sorted(marks.marks.items()):
            if mask & FAN_OPEN_EXEC_PERM and (key.dev, key.ino) in exempt:
                errors.append(f"exec of {marks.places[key]} is not asked of the agent: it is the "
                              "agent's own exec chain (exempt so that it can restart)")  # fmt: skip
        return errors

    def _install_guard(
        self, compiled: CompiledPolicySet, enforcements: tuple[Enforcement, ...]
    ) -> None:
        in_kernel = GUARDED_OPS | (LSM_OPS if self.caps.lsm else frozenset())
        # a guard an earlier agent pinned is taken over even if this policy needs none: its
        # policy must be replaced, not left enforcing behind this one's back
        pinned = self.pins is not None and self.pins.holds(GUARD)
        if self._guard is None and (pinned or any(
            e.rule.operation in in_kernel or judged_in_kernel_at_exec(e.mechanism)
            for e in enforcements
        )):  # fmt: skip
            self._guard = Guard(
                self._cgroup, shared_maps=self.stream.shared_maps(), lsm=self.caps.lsm,
                pins=self.pins,
            )  # fmt: skip
            if self._guard.taken_over and self.pins is not None:
                gen = self._guard.generation
                earlier = self._guard.earlier.get(gen)
                self.takeover = {"pin_dir": str(self.pins.path), "generation": gen,
                                 "digest": earlier.digest if earlier else None}  # fmt: skip
        if self._guard is not None:
            self._guard.install(compiled)

    def _watch(self, marks: MarkPlan) -> list[str]:
        """Watch the plan's directories so that marks follow them (dirwatch)."""
        if not marks.watch and self._dirwatch is None:
            return []
        if self._dirwatch is None:
            self._dirwatch = DirWatch(self.refresh_marks, self._mounts.snapshot)
        return [f"cannot watch {failed}" for failed in self._dirwatch.watch(marks.watch)]

    def refresh_marks(self, new_dirs: list[NewDir] | None = None) -> None:
        """Mark what watched directories or the mounts changed (the directory watcher's
        thread): the new directories' subtrees if that is all that changed, else the whole plan
        made again; then apply the difference."""
        if self._installing:
            return  # an install is waiting for the lock, and plans everything anew
        with self._lock:
            state = self._state
            if state is None or self._table is None or not self._mark_rules:
                return
            marks = None
            if new_dirs is not None:
                changes = [(d.parent, d.name, d.gone) for d in new_dirs]
                marks = extend_plan(self._mark_plan, self._mark_rules, OsView(), changes)
            if marks is None:
                marks = plan_marks(self._mark_rules, OsView())
            errors: list[str] = []
            # a directory filled before its watch was in place (mkdir -p, tar x, a storm) has
            # subdirectories no event will name: each pass looks into the newly watched ones
            for _ in range(16):
                watched = self._dirwatch.watched if self._dirwatch is not None else frozenset()
                try:
                    self._table.add(marks, strict=False)
                except KernelError as exc:
                    log.error("fanotify marks: %s; trying again at the next change", exc)
                    return
                self._set_filter(None)  # the identities and directories change
                self._state = state = replace(state, identities=dict(marks.identities))
                self._mark_plan = marks
                errors = self._table.prune(marks) + self._watch(marks)
                self._not_marked(marks)
                self._set_filter(self._filter_spec(state, marks))
                unseen = _unmarked_subdirs(marks, set(marks.watch) - watched)
                if not unseen or marks.truncated:
                    break
                grown = extend_plan(marks, self._mark_rules, OsView(), unseen)
                marks = grown if grown is not None else plan_marks(self._mark_rules, OsView())
            if marks.truncated:
                errors.append(
                    f"more than {len(marks.marks)} objects to mark after a directory change: "
                    "marked that many; the rest is judged after the fact"
                )
            for error in errors:
                log.error("%s", error)
                self.problems.append(error)

    def verify(self) -> list[str]:
        """Every difference between what the kernel holds and the live plan."""
        errors: list[str] = []
        if self._table is not None:
            errors += self._table.verify(self._mark_plan)
        if self._guard is not None and self._state is not None:
            errors += self._guard.verify(self._state.compiled)
            if self.caps.cgroup_egress and not self._guard.egress:
                # the kernel takes the egress judge's helpers (doctor), yet it did not load:
                # what policy check --host promises is not in force (a regression, not a host)
                errors.append(
                    "guard: st_guard_egress did not load although this kernel offers its "
                    "helpers (doctor: cgroup_egress): connected UDP-Lite and ping datagrams "
                    "are not judged"
                )
        return errors

    def _update_stream(self, policy_set: PolicySet, mark_rules: tuple[MarkRule, ...]) -> None:
        """Ask the kernel for the file events rules target (and only those), and for opens'
        flags where fanotify judges open rules (``_decide_permission`` needs them)."""
        kinds: set[str] = set()
        patterns: set[str] = set()
        for _, _, rule in policy_set.rules():
            if rule.operation in model.FILE_KINDS:
                kinds.update(judged_kinds(rule.operation, rule.access_set))
                if rule.targets.paths is None:
                    patterns.add("/")
                else:
                    patterns.update(rule.targets.paths)
            elif rule.operation in ("listen", "accept", "exec"):
                kinds.add(rule.operation)
        self.stream.reconfigure(
            extra_kinds=frozenset(kinds),
            path_patterns=tuple(sorted(patterns)),
            open_flags=any(rule.operation == "open" for rule in mark_rules),
        )

    # ---- fanotify decisions (its own thread) ----
    def _decide_permission(self, req: PermissionRequest) -> bool:
        state = self._state
        if state is None:
            return True
        operation = "exec" if req.is_exec else "open"
        identity = _identity_target(state, req.fd, operation)
        loader_target = None if req.is_exec else _identity_target(state, req.fd, "exec")
        # the names this file has here, if the caller reached it through another mount
        try:
            st: os.stat_result | None = os.fstat(req.fd)
        except OSError:
            st = None
        aliases = self._mounts.aliases_checked(req.path, req.tid, st.st_dev if st else None)
        paths = [req.path, *aliases.names]
        if not _names(req.path, st):
            # the name the event gives leads elsewhere, or nowhere, here (a detached mount's
            # "/f"): the file's own name in this namespace is judged too
            here = name_here(req.fd)
            if here is not None and here not in paths:
                paths.append(here)
        left: list[str] = []
        if (
            identity is None
            and loader_target is None
            and not any(state.evaluator.targets(operation, p) for p in paths)
        ):
            # renamed out of a marked directory while the event waited (and back, later), or
            # its directory renamed out: judged by the names it had (fail closed)
            left = self._names_left(req, st, operation, aliases.ours)
            if aliases.stale:  # the caller's mounts change faster than the agent reads them
                left += self._places_left(operation, req.path)
            if not left:
                return True  # a sibling of a marked file that no rule names: no need to ask /proc
            paths += [p for p in dict.fromkeys(left) if p not in paths]
        process, pid = process_of(req.tid, state.lineage)
        requests: list[Request] = []
        if req.is_exec:
            requests.append(Request("exec", process, path=req.path))
        else:
            flags = self.stream.pending_open_flags(req.tid)
            # unknown flags (openat2, an open outside an open syscall: io_uring, a core
            # dump; the open began before the probes): judge every access (fail closed)
            access = (
                open_access(flags) if flags is not None else ("read", "write", "create", "truncate")
            )
            requests.append(Request("open", process, path=req.path, access=access))
            if loader_target is not None and (
                is_dynamic_loader(process.exe or "") or is_loader_process(req.tid)
            ):
                # ld.so PROGRAM: the loader maps PROGRAM without an exec; judge it as one
                requests.append(Request("exec", process, path=loader_target))
        if identity is not None and identity != req.path:
            # a hard link to a file an exact rule names is the same inode: judge it by that name
            requests.append(replace(requests[0], path=identity))
        requests += [replace(requests[0], path=alias) for alias in paths[1:]]
        verdict, decided = max(
            ((state.evaluator.decide(r), r) for r in requests),
            key=lambda judged: judged[0].effective.severity,
        )
        if not verdict.effective.stops:
            return True
        if verdict.effective == Effect.KILL:
            kill_process(pid)
        obj: dict[str, Any] = {"path": req.path}
        if decided.path != req.path:
            obj["judged_as"] = decided.path
        if decided.path in left:
            obj["moved_while_judged"] = True
        if not (process.exe_known and process.ancestry_known):
            obj["exe_unknown"] = True  # judged fail-closed: /proc/PID/exe could not be read
        self._record(state, verdict, decided.operation, pid, process.exe, obj,
                     after_the_fact=False)  # fmt: skip
        return False

    def _names_left(
        self, req: PermissionRequest, st: os.stat_result | None, operation: str, ours: bool
    ) -> list[str]:
        """The names the file of a permission event had, if it is no longer where the marks
        put it (red team 2026-12-08), else []: renamed out of a marked directory while the
        event waited for the agent (no mark of the event's kind on its inode, its directory
        or its filesystem any more: each tree and prefix a rule marks, ``_places_left``), or
        its marked directory renamed away (the directory's name in the plan). Only for a
        caller in the agent's mount namespace (``ours``), whose names the agent's are;
        another's are mapped by ``MountView.aliases``."""
        if st is None or not ours:
            return []
        bit = FAN_OPEN_EXEC_PERM if req.is_exec else FAN_OPEN_PERM
        plan = self._mark_plan
        if (
            plan.marks.get(MarkKey(st.st_dev, 0), 0)
            | plan.marks.get(MarkKey(st.st_dev, st.st_ino), 0)
        ) & bit:
            return []
        where, name = os.path.split(req.path)
        try:
            parent = os.stat(where)
        except OSError:
            return self._places_left(operation, req.path)
        key = MarkKey(parent.st_dev, parent.st_ino)
        if not plan.marks.get(key, 0) & bit:
            return self._places_left(operation, req.path)
        place = plan.places.get(key)
        if place is None or place == where or _real_place(place) == where:
            return []
        return [os.path.join(_real_place(place), name)]

    def _places_left(self, operation: str, path: str) -> list[str]:
        """The names a file renamed out of a marked directory is judged by: its name in each
        tree a rule of ``operation`` names, and each prefix itself (the name it had there is
        not known)."""
        name = os.path.basename(path)
        out: list[str] = []
        for rule in self._mark_rules:
            if rule.operation != operation or rule.paths is None:
                continue
            for p in rule.paths:
                if p.endswith("/"):
                    out.append(p + name)
                elif p.endswith("*"):
                    out.append(p[:-1])
        return list(dict.fromkeys(out))

    # ---- events from the stream (main loop) ----
    def needs(self, kind: str) -> bool:
        """False if ``handle`` would ignore every event of this kind (no rule guards it, or
        the in-kernel guard judges it): such events need no Python object."""
        if self._state is None or kind not in self._state.operations:
            return False
        if kind == "exec":
            return True  # judged in the kernel too, but an exec through another mount is not
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
        in_kernel = self._guard is not None and (
            ev.kind in GUARDED_OPS or (self._guard.lsm and ev.kind in LSM_OPS)
        )
        if in_kernel and not isinstance(ev, model.ExecEvent):
            return  # the guard judged it in the kernel and reported any verdict itself
        # an exec is judged for its caller: the image before the exec, not the new one
        exe = self._caller_exe(ev) if isinstance(ev, model.ExecEvent) else ev.exe
        process = Process(exe=exe, uid=ev.uid, gid=ev.gid, cgroup=self._cgroups.path(ev.cgroup_id))
        request = request_from_event(ev, process)
        if request is None:
            return
        verdict = state.evaluator.decide(request)
        if in_kernel:
            # the LSM judged this exec by the path it saw; through another mount that is not
            # the name a rule uses: an exec that got through that way is caught here
            if verdict.rule_id is None or verdict.action == "allow":
                self._missed_through_a_mount(state, ev, request, verdict, Mechanism.LSM)
            return
        seen_as: str | None = None
        if verdict.rule_id is None or verdict.action == "allow":
            verdict, seen_as = self._judge_aliases(state, request, ev.pid, verdict)
        if verdict.rule_id is None or verdict.action == "allow":
            return
        how = state.enforcements.get((verdict.policy_name or "", verdict.rule_id))
        how = how.for_event(ev.kind) if how else None  # truncate(2): not the open's hook
        mechanism = how.mechanism if how and how.mechanism else Mechanism.TRACEPOINT
        if judged_in_kernel_at_exec(mechanism):
            return  # fileless exec: the guard judged it at sched_prepare_exec and reported it
        if mechanism in FANOTIFY_MECHANISMS and verdict.effective.stops:
            if not _succeeded(ev):
                return  # answered (and recorded) at the permission event
            # the kernel never asked (a path fanotify cannot see: module doc): the fallback
            self._record_missed(state, verdict, ev, request, Mechanism.FANOTIFY, seen_as)
            return
        after = bool(how and how.after_the_fact)
        if mechanism == Mechanism.SIGKILL_AFTER_THE_FACT and verdict.effective.stops:
            obj = event_object(ev)
            if not self._kill_reported(ev.pid, self._boot_ns(ev)):
                obj["not_killed"] = "the process exited; its pid is a newer process's"
            self._record(state, verdict, request.operation, ev.pid, ev.exe, obj,
                         after_the_fact=True, action=Effect.KILL, mechanism=mechanism)  # fmt: skip
            return
        action = Effect.AUDIT if after and verdict.effective.stops else None
        self._record(state, verdict, request.operation, ev.pid, ev.exe, event_object(ev),
                     after_the_fact=after, action=action, mechanism=mechanism)  # fmt: skip

    def _judge_aliases(
        self, state: _State, request: Request, pid: int, verdict: Verdict
    ) -> tuple[Verdict, str | None]:
        """The strictest verdict over the names, in the agent's namespace, of the file the
        process reached through another mount (a bind mount, another namespace), and the name
        that gave it."""
        seen_as = None
        if request.path is None:
            return verdict, None
        for alias in self._mounts.aliases(request.path, pid, recent=True):
            judged = state.evaluator.decide(replace(request, path=alias))
            if judged.effective.severity > verdict.effective.severity:
                verdict, seen_as = judged, alias
        return verdict, seen_as

    def _missed_through_a_mount(
        self,
        state: _State,
        ev: model.Event,
        request: Request,
        verdict: Verdict,
        missed_by: Mechanism,
    ) -> None:
        verdict, seen_as = self._judge_aliases(state, request, ev.pid, verdict)
        if seen_as is not None and verdict.effective.stops:
            self._record_missed(state, verdict, ev, request, missed_by, seen_as)

    def _record_missed(
        self,
        state: _State,
        verdict: Verdict,
        ev: model.Event,
        request: Request,
        missed_by: Mechanism,
        seen_as: str | None,
    ) -> None:
        """What a deny mechanism let through, seen afterwards: the rule's fallback (killed if
        it says ``kill``), journaled as after the fact with what missed it."""
        how = state.enforcements.get((verdict.policy_name or "", verdict.rule_id or ""))
        kill = (
            how is not None
            and how.rule.fallback == "kill"
            and self._kill_reported(ev.pid, self._boot_ns(ev))
        )
        obj = {**event_object(ev), "missed_by": str(missed_by)}
        if seen_as is not None:
            obj["judged_as"] = seen_as
        self._record(state, verdict, request.operation, ev.pid, ev.exe, obj,
                     after_the_fact=True, action=Effect.KILL if kill else Effect.AUDIT,
                     mechanism=Mechanism.SIGKILL_AFTER_THE_FACT if kill
                     else Mechanism.TRACEPOINT)  # fmt: skip

    def _boot_ns(self, ev: model.Event) -> int:
        """The CLOCK_BOOTTIME stamp the probes gave ``ev`` (a wall clock stepped since the
        agent started must not shift it: red team 2026-12-08)."""
        return self.stream.boot_ns(ev.ts_ns)

    def _kill_reported(self, pid: int, acted_at_ns: int) -> bool:
        """SIGKILL to a pid the kernel reported (an event's; a fanotify request's is already in
        the agent's PID namespace) for what it did at ``acted_at_ns``; False if not sent to
        it: the pid is a process started since (the actor exited and its pid was taken:
        ``kill_process``; a task simply gone is no error, the kill was the verdict). From a
        container's PID namespace that number names another process: never sent
        (``mechanisms._kills_by_pid`` refuses such rules in enforce mode; this is the last
        line)."""
        if not self.caps.host_pids:
            log.error("not killing pid %d: the agent is not in the host's PID namespace", pid)
            return False
        if kill_process(pid, acted_at_ns) == RECYCLED:
            log.warning("not killing pid %d: it is a process started after the act", pid)
            return False
        return True

    def _caller_exe(self, ev: model.ExecEvent) -> str | None:
        # the exec event names the new image; rules judge the caller: its parent's image if
        # this pid's previous image is gone from the table
        return self.stream.proctable.previous_exe(ev.pid) or self.stream.proctable.lookup(
            ev.ppid, ""
        )

    def _guard_verdict(self, ev: model.GuardEvent) -> None:
        assert self._guard is not None
        compiled = self._guard.policy_of(ev.generation)
        try:
            rule: RuleRef = compiled.rule(ev.op, ev.rule_index) if compiled else _unknown(ev)
        except KeyError:
            rule = _unknown(ev)
        if compiled is None:  # journaled all the same: the kernel decided, it is evidence
            log.error("guard verdict from unknown generation %d", ev.generation)
        action = ev.action
        if rule.mode == "monitor" and rule.action in ("deny", "kill"):
            action = effective_action(rule.mode, rule.action)
        killed = ev.action == Effect.KILL
        if (
            killed
            and ev.mechanism == Mechanism.CGROUP_SOCK
            and not self._guard.kernel_kills_at_cgroup
        ):
            if ev.ts_ns >= self._started_ns:
                # the kernel denied; this kernel cannot signal from there
                killed = self._kill_reported(ev.pid, self._boot_ns(ev))
            else:  # judged while no agent ran: by now the pid may be another process's
                killed = False
                log.warning("guard: not killing pid %d, denied before this agent started",
                            ev.pid)  # fmt: skip
        mechanism = ev.mechanism + ("+sigkill" if killed else "")
        self.verdicts.append(
            VerdictRecord(
                action, rule.rule_id, rule.policy_name, compiled.digest if compiled else "",
                mechanism, ev.op,
                False, ev.pid, ev.exe, guard_object(ev),
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
        action: Effect | None = None,
        mechanism: Mechanism | None = None,
    ) -> None:
        how = state.enforcements.get((verdict.policy_name or "", verdict.rule_id or ""))
        self.verdicts.append(
            VerdictRecord(
                action or verdict.effective,
                verdict.rule_id or "",
                verdict.policy_name or "",
                verdict.digest,
                mechanism or (how.mechanism if how and how.mechanism else Mechanism.TRACEPOINT),
                operation,
                after_the_fact,
                pid,
                exe,
                obj,
            )
        )

    def close(self) -> None:
        if self._dirwatch is not None:
            self._dirwatch.close()
            self._dirwatch = None
        if self._fanotify is not None:
            self._fanotify.close()
            self._fanotify = None
        if self._table is not None:
            self._table.close()
            self._table = None
        if self._guard is not None:
            self._guard.close()
            self._guard = None


def _unknown(ev: model.GuardEvent) -> SavedRule:
    """The rule of a verdict whose policy generation is not known here (its rule table was
    lost with an earlier agent): named by its number, taken as the kernel took it."""
    return SavedRule(f"#{ev.rule_index}@{ev.generation}", "", "enforce", ev.rule_action)


def _names(path: str, file: os.stat_result | None) -> bool:
    """Does ``path`` lead, in this namespace, to the file whose ``fstat`` is ``file``?"""
    if file is None:
        return False
    try:
        here = os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (file.st_dev, file.st_ino)


def _identity_target(state: _State, fd: int, operation: str) -> str | None:
    """The path an exact ``operation`` rule names for this very file (same device and inode).
    A file with more than one name whose identity the plan lacks (a hard link made to a rule's
    path since the directory watcher last looked) is compared with each exact path at once."""
    if not state.identities and not state.exact_paths.get(operation):
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    path = state.identities.get((st.st_dev, st.st_ino, operation))
    if path is None and st.st_nlink > 1:
        for candidate in state.exact_paths.get(operation, ()):
            try:
                other = os.stat(candidate)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                return candidate
    if path is None:
        return None
    # only while the rule's path still names this inode: a file replaced since (renamed over)
    # is another file, and once the old one is gone its inode number can be a new file's
    try:
        now = os.stat(path)
    except OSError:
        return None
    return path if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) else None


def _unmarked_subdirs(marks: MarkPlan, directories: set[str]) -> list[tuple[str, str, bool]]:
    """Subdirectories of ``directories`` that ``marks`` has not placed (created before the
    directory's watch was added), as extend_plan changes."""
    placed = set(marks.places.values())
    out: list[tuple[str, str, bool]] = []
    for directory in sorted(directories):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and entry.path not in placed:
                out.append((directory, entry.name, False))
    return out


def _succeeded(ev: model.Event) -> bool:
    """The operation took effect: an exec event is only sent for an exec that happened."""
    if isinstance(ev, model.ExecEvent):
        return True
    result = getattr(ev, "result", None)
    return isinstance(result, int) and result >= 0
