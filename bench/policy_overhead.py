"""Policy enforcement overhead: 10 vs 1,000 rules, measured with the C load generator.

    .venv/bin/python bench/policy_overhead.py [--rounds N] [--quick]

Everything a policy targets was made by this benchmark: a temp tree under build/bench/policy,
loopback ports and a cgroup of its own (the guard attaches there, and the load generator joins
it with `loadgen -g`), so nothing else on the machine is denied. Exec rules do put a
filesystem-wide FAN_OPEN_EXEC_PERM mark on the root filesystem while a policy is installed:
every exec on the host is then answered (allowed) by this process, as with the real agent.

Scenarios (rounds interleaved, rotated each round):
  a  none     no agent
  b  10       Enforcer + EventStream with 10 rules (connect 4, bind 1, open 3, exec 2)
  c  1000     the same with 1,000 rules (connect 400, bind 100, open 300, exec 200)
The stream starts with no record kinds (the agent's --record kinds are its own cost, see
syscall_overhead): what is measured is what the policy turns on, i.e. the guard's cgroup
sock hooks, the open tracepoints with the rules' path patterns (in-kernel filter), exec events
(the enforcer judges execs) and the fanotify marks. A thread drains the stream into
Enforcer.handle, as the daemon's loop does.

Workloads (loadgen in the bench cgroup, pinned to --cpu; the agent gets the other CPUs):
  udp connect miss   connect() of a UDP socket to 127.0.0.1:<port no rule names>
  open+close free    open/close of a file in a directory no rule targets (no fanotify mark)
  fork+exec true     fork + execve(/bin/true) + wait; no rule targets it, but the exec rules'
                     filesystem mark makes every exec a fanotify permission decision
  open marked        open(O_RDONLY) of a file a rule denies writes to: an inode mark, so every
                     open waits for this process's allow (the fanotify decision latency)
  open sibling       open of another file in that file's directory: the rule also marks the
                     directory (the file may be replaced), so its siblings wait too

Then: BPF run time per call of the guard's connect4 hook and the open probes
(BPF_ENABLE_STATS), and compile + load time (parse, `policy check`, compile_policy_set,
Guard.install, Enforcer.install cold and as a reload).
Results: tables on stdout and build/bench/policy_overhead.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import threading
import time
from pathlib import Path

import benchlib
from benchlib import (
    SCENARIO_SIZE,
    SCENARIOS,
    BenchCgroup,
    BpfStats,
    loadgen,
    own_prog_stats,
    summary,
)

from agent.enforce.enforcer import Enforcer
from agent.enforce.fanotify import PermissionRequest
from agent.enforce.guard import Guard
from agent.events import model
from agent.events.stream import EventStream, StreamConfig
from agent.policy.check import check
from agent.policy.compile import compile_policy_set
from agent.policy.mechanisms import HostCapabilities, host_capabilities
from agent.policy.source import PolicySet, load_policy_set

ROOT = benchlib.OUT_DIR / "policy"
OPEN_DIR = ROOT / "open"
MARKED = ROOT / "marked" / "target"
SIBLING = ROOT / "marked" / "sibling"
FREE = ROOT / "free" / "f"
EXEC_DIR = ROOT / "bin"
SIZES = (10, 1000)
SPLIT = {"connect": 0.4, "bind": 0.1, "open": 0.3, "exec": 0.2}
MISS_PORT = 9  # no rule names port 9 (rule ports are >= 20000)


# ---- policy generation ----


def _split(n: int) -> dict[str, int]:
    counts = {op: max(1, round(n * share)) for op, share in SPLIT.items()}
    counts["connect"] += n - sum(counts.values())
    return counts


def _rule(rule_id: str, op: str, body: str, action: str = "deny") -> str:
    rule = f'[[rules]]\nid = "{rule_id}"\noperation = "{op}"\n{body}\naction = "{action}"\n'
    if op in ("open", "exec"):  # fanotify cannot stop every way there: say what gets through
        rule += 'fallback = "audit"\n'
    return rule


def policy_files(n: int) -> dict[str, str]:
    """name -> TOML text of an n-rule policy set, one file per operation."""
    counts = _split(n)
    files: dict[str, list[str]] = {op: [] for op in counts}
    for i in range(counts["connect"]):
        if i % 3 == 0:
            tgt = f'targets.addresses = ["127.0.0.1/32"]\ntargets.ports = [{20000 + i}]'
        elif i % 3 == 1:
            tgt = f'targets.addresses = ["10.{i // 250}.{i % 250}.0/24", "fd00:{i:x}::/64"]'
        else:
            tgt = (
                f'targets.addresses = ["127.0.0.0/8", "::1/128"]\n'
                f'targets.ports = ["{30000 + 16 * i}-{30000 + 16 * i + 9}"]\n'
                'targets.protocol = "tcp"'
            )
        files["connect"].append(_rule(f"c{i}", "connect", tgt))
    for i in range(counts["bind"]):
        tgt = f"targets.ports = [{50000 + i}]"
        files["bind"].append(_rule(f"b{i}", "bind", tgt))
    for i in range(counts["open"]):
        if i == 0:  # the marked file of the fanotify latency loop: writes denied, reads allowed
            tgt = f'access = ["write", "truncate"]\ntargets.paths = ["{MARKED}"]'
        elif i % 3 == 0:
            tgt = f'access = ["write"]\ntargets.paths = ["{OPEN_DIR}/d{i % 20}/f{i}"]'
        elif i % 3 == 1:
            tgt = f'targets.paths = ["{OPEN_DIR}/d{i % 20}/sub{i}/"]'
        else:
            tgt = f'access = ["read"]\ntargets.paths = ["{OPEN_DIR}/d{i % 20}/p{i}*"]'
        files["open"].append(_rule(f"o{i}", "open", tgt))
    for i in range(counts["exec"]):
        tgt = f'targets.paths = ["{EXEC_DIR}/tool{i}"]'
        files["exec"].append(_rule(f"e{i}", "exec", tgt, "kill" if i % 2 else "deny"))
    return {
        f"bench-{op}.toml": f'name = "bench-{op}"\nmode = "enforce"\n\n' + "\n".join(rules)
        for op, rules in files.items()
    }


def prepare() -> dict[int, Path]:
    shutil.rmtree(ROOT, ignore_errors=True)
    for d in range(20):
        (OPEN_DIR / f"d{d}").mkdir(parents=True)
    for i in range(0, 300, 3):  # some exact targets exist (inode marks), others do not
        (OPEN_DIR / f"d{i % 20}" / f"f{i}").touch()
    for p in (MARKED, SIBLING, FREE):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("bench\n")
    EXEC_DIR.mkdir()
    dirs = {}
    for n in SIZES:
        d = ROOT / f"policies-{n}"
        d.mkdir()
        for name, text in policy_files(n).items():
            (d / name).write_text(text)
        dirs[n] = d
    return dirs


# ---- the agent side: Enforcer + EventStream, drained by a thread ----


class PolicyAgent:
    """What `sealtrail agent` runs for a policy, minus the journal: stream + enforcer, the
    stream drained into Enforcer.handle by a thread."""

    def __init__(self, policy_set: PolicySet, cgroup: Path, caps: HostCapabilities) -> None:
        self.policy_set = policy_set
        self.cgroup = cgroup
        self.caps = caps
        self.events = 0
        self.lost = 0
        self.verdicts = 0
        self.install_s = 0.0
        self.decide_s: list[float] = []  # Enforcer._decide_permission wall time per call
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PolicyAgent:
        self.stream = EventStream(StreamConfig(kinds=frozenset(), load_all=True))
        self.stream.start()
        try:
            self.enforcer = Enforcer(self.stream, self.caps, self.cgroup)
            t0 = time.perf_counter()
            self.enforcer.install(self.policy_set)
            self.install_s = time.perf_counter() - t0
            fan = self.enforcer._fanotify  # bench only: time the decision callback itself
            if fan is not None:
                decide = fan._decide

                def timed(req: PermissionRequest) -> bool:
                    t = time.perf_counter()
                    try:
                        return decide(req)
                    finally:
                        self.decide_s.append(time.perf_counter() - t)

                fan._decide = timed
        except BaseException:
            self.stream.close()
            raise
        self._thread = threading.Thread(target=self._run, name="bench-enforcer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for item in self.stream.poll(50):
                if isinstance(item, model.LossEvent):
                    self.lost += item.count
                    continue
                self.events += 1
                self.enforcer.handle(item)
            while self.enforcer.verdicts:
                self.enforcer.verdicts.popleft()
                self.verdicts += 1

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.enforcer.close()
        self.stream.close()


# ---- timing ----


def workloads(quick: bool) -> dict[str, dict[str, object]]:
    k = 5 if quick else 1
    return {
        "udp connect miss": {"mode": "udpconnect", "arg": str(MISS_PORT), "iters": 200_000 // k,
                             "syscalls": 1},
        "open+close free": {"mode": "open", "arg": str(FREE), "iters": 200_000 // k,
                            "syscalls": 2},
        "fork+exec true": {"mode": "exec", "arg": "/bin/true", "iters": 300 // k, "syscalls": 0},
        "open marked": {"mode": "open", "arg": str(MARKED), "iters": 10_000 // k, "syscalls": 2},
        "open sibling": {"mode": "open", "arg": str(SIBLING), "iters": 10_000 // k,
                         "syscalls": 2},
    }  # fmt: skip


def _run(spec: dict[str, object], cpu: int, cgroup: Path) -> float:
    iters = int(spec["iters"])  # type: ignore[call-overload]
    row = loadgen(str(spec["mode"]), str(spec["arg"]), iters=iters, cpu=cpu, cgroup=cgroup)
    return row[0]["ns_per_iter"]


def timing_pass(
    wls: dict[str, dict[str, object]],
    sets: dict[int, PolicySet],
    rounds: int,
    cpu: int,
    cgroup: Path,
    caps: HostCapabilities,
) -> dict[str, object]:
    samples: dict[str, dict[str, list[float]]] = {w: {} for w in wls}
    installs: dict[str, list[float]] = {}
    counts: dict[str, dict[str, int]] = {}
    decide_us: dict[str, list[float]] = {}
    order = list(SCENARIOS)
    for r in range(rounds):
        for scn in order[r % len(order) :] + order[: r % len(order)]:
            if scn == "a":
                for wl, spec in wls.items():
                    samples[wl].setdefault(scn, []).append(_run(spec, cpu, cgroup))
                continue
            with PolicyAgent(sets[SCENARIO_SIZE[scn]], cgroup, caps) as agent:
                installs.setdefault(scn, []).append(agent.install_s)
                time.sleep(0.05)
                for wl, spec in wls.items():
                    samples[wl].setdefault(scn, []).append(_run(spec, cpu, cgroup))
                time.sleep(0.2)
                c = counts.setdefault(scn, {"events": 0, "lost": 0, "verdicts": 0})
                c["events"] += agent.events
                c["lost"] += agent.lost
                c["verdicts"] += agent.verdicts
                decide_us.setdefault(scn, []).extend(t * 1e6 for t in agent.decide_s)
        print(f"  round {r + 1}/{rounds} done", flush=True)
    return {
        "samples": samples,
        "enforcer_install_s": installs,
        "stream": counts,
        "decide_us": {scn: summary(v) for scn, v in decide_us.items() if v},
    }


def stats_pass(
    sets: dict[int, PolicySet], cpu: int, cgroup: Path, caps: HostCapabilities, iters: int
) -> dict[str, dict[str, dict[str, float]]]:
    """BPF run time per call of the programs that ran for (most of) each workload."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    wls = {
        "udp connect miss": ("udpconnect", str(MISS_PORT)),
        "open+close free": ("open", str(FREE)),
    }
    with BpfStats():
        for n, ps in sets.items():
            with PolicyAgent(ps, cgroup, caps):
                time.sleep(0.05)
                for wl, (mode, arg) in wls.items():
                    before = own_prog_stats()
                    loadgen(mode, arg, iters=iters, cpu=cpu, cgroup=cgroup)
                    after = own_prog_stats()
                    progs = {}
                    for name, (t1, c1) in after.items():
                        t0, c0 = before.get(name, (0, 0))
                        # programs of this workload's syscall that ran (about) once per call
                        # (others are the rest of the machine's activity)
                        ours = ("connect" in name) == (mode == "udpconnect")
                        if ours and c1 - c0 >= iters // 2:
                            progs[name] = {"calls": c1 - c0, "ns_per_call": (t1 - t0) / (c1 - c0)}
                    out.setdefault(wl, {})[str(n)] = progs  # type: ignore[assignment]
    return out


def load_pass(
    dirs: dict[int, Path], cgroup: Path, caps: HostCapabilities, reps: int
) -> dict[str, dict[str, list[float]]]:
    """Seconds for each step of getting n rules into the kernel, reps times."""
    out: dict[str, dict[str, list[float]]] = {}
    for n, d in dirs.items():
        t: dict[str, list[float]] = {}

        def add(step: str, secs: float, t: dict[str, list[float]] = t) -> None:
            t.setdefault(step, []).append(secs)

        for _ in range(reps):
            t0 = time.perf_counter()
            ps, findings = load_policy_set([d])
            add("parse (load_policy_set)", time.perf_counter() - t0)
            assert not [f for f in findings if f.severity == "error"], findings
            t0 = time.perf_counter()
            report = check([d], caps)
            add("policy check (daemon start/reload)", time.perf_counter() - t0)
            assert not [f for f in report.findings if f.severity == "error"], report.findings
            t0 = time.perf_counter()
            compiled = compile_policy_set(ps)
            add("compile_policy_set", time.perf_counter() - t0)
            t0 = time.perf_counter()
            with Guard(cgroup) as guard:
                add("Guard() load+attach", time.perf_counter() - t0)
                t0 = time.perf_counter()
                guard.install(compiled)
                add("Guard.install (first)", time.perf_counter() - t0)
                t0 = time.perf_counter()
                guard.install(compiled)
                add("Guard.install (swap)", time.perf_counter() - t0)
            with EventStream(StreamConfig(kinds=frozenset(), load_all=True)) as stream:
                enforcer = Enforcer(stream, caps, cgroup)
                try:
                    t0 = time.perf_counter()
                    enforcer.install(ps)
                    add("Enforcer.install (cold, end to end)", time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    enforcer.install(ps)
                    add("Enforcer.install (reload)", time.perf_counter() - t0)
                    marks = enforcer.mark_count
                finally:
                    enforcer.close()
            add("fanotify marks", float(marks))
        out[str(n)] = t
    return out


# ---- report ----


def print_tables(result: dict[str, object]) -> None:
    rows = result["rows"]
    assert isinstance(rows, list)
    benchlib.print_comparison(rows)
    fan = result["fanotify"]
    assert isinstance(fan, dict)
    print()
    for n, d in fan.items():
        print(f"fanotify decision, {n} rules: marked open {d['marked_us']:.1f} us, sibling "
              f"{d['sibling_us']:.1f} us, exec {d['exec_us']:.1f} us over the unmarked/no-agent "
              "case (per open/exec, medians)")  # fmt: skip
    timing = result["timing"]
    assert isinstance(timing, dict)
    for scn, d in timing["decide_us"].items():
        print(f"  of which the decision callback (Enforcer._decide_permission), "
              f"{SCENARIO_SIZE[scn]} rules: median {d['median']:.1f} us "
              f"({d['min']:.1f}..{d['max']:.0f}, n={d['n']:.0f})")  # fmt: skip
    stats = result["bpf_stats"]
    assert isinstance(stats, dict)
    print()
    for wl, by_n in stats.items():
        for n, progs in by_n.items():
            shown = ", ".join(f"{p} {v['ns_per_call']:.0f} ns" for p, v in sorted(progs.items()))
            print(f"BPF run time per call, {wl}, {n} rules: {shown or '-'}")
    load = result["load"]
    assert isinstance(load, dict)
    print()
    lines: list[list[object]] = []
    for step in next(iter(load.values())):
        cells: list[object] = [step]
        for t in load.values():
            s = summary(t[step])
            if step == "fanotify marks":
                cells.append(s["median"])
            else:
                cells.append(
                    f"{s['median'] * 1e3:9.1f} ms ({s['min'] * 1e3:.0f}..{s['max'] * 1e3:.0f})"
                )
        lines.append(cells)
    benchlib.print_table([("compile + load", -38)] + [(f"{n} rules", 22) for n in load], lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--quick", action="store_true", help="1/5 of the iterations, 3 rounds")
    ap.add_argument("--cpu", type=int, default=1, help="CPU the load generator is pinned to")
    ap.add_argument("--load-reps", type=int, default=5, help="compile+load repetitions")
    benchlib.add_probes_option(ap)
    args = ap.parse_args()
    benchlib.need_root("loads BPF programs, fanotify, cgroups")
    rounds = 3 if args.quick and args.rounds == 7 else args.rounds
    probes = benchlib.prepare(args)
    dirs = prepare()
    sets = {}
    for n, d in dirs.items():
        ps, findings = load_policy_set([d])
        assert not [f for f in findings if f.severity == "error"], findings
        assert sum(1 for _ in ps.rules()) == n
        sets[n] = ps
    caps = host_capabilities()
    print(f"host capabilities: {caps}")
    ncpu = os.cpu_count() or 1
    if ncpu > 1:
        os.sched_setaffinity(0, {c for c in range(ncpu) if c != args.cpu} or {0})
    foreign = benchlib.foreign_bpf_programs()
    if foreign:
        print(f"WARNING: foreign tracing BPF programs loaded ({len(foreign)}): every syscall "
              "is already on the slow path in the no-agent baseline")  # fmt: skip
    wls = workloads(args.quick)
    result: dict[str, object] = {
        "probes": probes,
        "host": {"kernel": platform.release(), "cpus": ncpu, "loadgen_cpu": args.cpu,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "capabilities": str(caps),
                 "foreign_bpf_programs_at_start": foreign,
                 "loadavg_at_start": os.getloadavg()},
        "rules": {str(n): _split(n) for n in SIZES},
        "workloads": {k: {kk: str(vv) for kk, vv in v.items()} for k, v in wls.items()},
    }  # fmt: skip
    with BenchCgroup("sealtrail-bench-policy") as cgroup:
        print(f"policy_overhead: {rounds} interleaved rounds x {len(SCENARIOS)} scenarios "
              f"in {cgroup} ...")  # fmt: skip
        timing = timing_pass(wls, sets, rounds, args.cpu, cgroup, caps)
        result["timing"] = timing
        print("BPF_ENABLE_STATS pass ...")
        result["bpf_stats"] = stats_pass(
            sets, args.cpu, cgroup, caps, 200_000 // (5 if args.quick else 1)
        )
        print("compile + load pass ...")
        result["load"] = load_pass(dirs, cgroup, caps, args.load_reps)
    samples = timing["samples"]
    assert isinstance(samples, dict)
    result["rows"] = benchlib.compare_scenarios(samples, wls)
    med = {wl: {s: summary(v)["median"] for s, v in by.items()} for wl, by in samples.items()}
    result["fanotify"] = {
        str(SCENARIO_SIZE[scn]): {
            "marked_us": (med["open marked"][scn] - med["open+close free"][scn]) / 1e3,
            "sibling_us": (med["open sibling"][scn] - med["open+close free"][scn]) / 1e3,
            "exec_us": (med["fork+exec true"][scn] - med["fork+exec true"]["a"]) / 1e3,
        }
        for scn in SCENARIO_SIZE
    }
    result["host"]["loadavg_at_end"] = os.getloadavg()  # type: ignore[index]
    result["foreign_bpf_programs_at_end"] = benchlib.foreign_bpf_programs()
    print()
    print_tables(result)
    print()
    print(f"stream per scenario (all rounds): {timing['stream']}")
    print(
        "ns/iter: median over rounds; +ns/iter: minus the no-agent median ((min): min minus "
        "min); +ns/sys: per syscall of the loop. fanotify decision: marked/sibling open minus "
        "the free open under the same policy; exec: minus the no-agent exec."
    )
    path = benchlib.write_json("policy_overhead.json", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
