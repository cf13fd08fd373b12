"""What the real agent adds to exec and open on a host without BPF-LSM (fanotify enforcement).

Starts ``python -m agent.cli agent`` (temp journal, keys and run dir; the guard on a cgroup of
the bench's own) once per configuration and round, waits for RUN/status.json to say
``loaded`` (or ``mismatch``), times the load generator, and stops it with SIGTERM:

- workloads: fork+exec of /bin/true (no rule names it); open+close of a file under /var/tmp
  no rule names; fork+exec of a copy of /bin/true that an exact exec rule judges; getppid
  (control)
- configurations: ``none`` (no agent), ``examples`` (the checkout's ``policies/``), each of
  ``privileged-ports``, ``tmp-exec``, ``system-files``, ``web-servers`` alone, ``judged`` (only
  the rule of the third workload, for uid 65534: the caller's ids rule it out, which the
  native fanotify filter answers since the id screens) and ``judged-exe`` (the same rule for
  the caller's uid, except the load generator's binary: the Python evaluator decides, allow),
  ``prefix-dir`` (an open rule for ``DIR/secret*``, DIR the open workload's directory: DIR is
  marked, so every open there, none of which the rule names, is one permission round trip the
  native filter answers: the case of ``/etc/ld.so.cache`` under ``/etc/sudoers*`` on every exec;
  compare with ``bench/fanotify_floor.py``, the same round trip answered by a bare C thread);
  for each ``--agent NAME=PATH`` checkout too
  (``PYTHONPATH=PATH``, ``cwd=PATH``, its own ``agent/kernel/obj`` and native library, its own
  ``policies/``), interleaved round by round with the others.

Shared machines: a policy file is a machine-wide fanotify policy, and ``tmp-exec`` denies every
exec below /tmp/ on the whole host while its agent runs (other engineers' tests exec from
pytest's /tmp directories). Unless ``--unconfined``, an enforcing exec/open rule without any
subject gets ``subjects.cgroup = [the bench cgroup]`` (the load generator runs there): the
same marks, the same permission events and the same decision work for every process, but it
only denies the bench's own. None of the workloads is below those paths either way.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import benchlib
from benchlib import OUT_DIR, REPO, BenchCgroup, summary

PYTHON = REPO / ".venv" / "bin" / "python"
SINGLES = ("privileged-ports", "tmp-exec", "system-files", "web-servers")
CONFIGS = ("examples", *SINGLES, "judged", "judged-exe", "prefix-dir")
WORKLOADS = ("exec true", "open+close", "exec judged", "getppid")
START_TIMEOUT = 90.0
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)

JUDGED_POLICY = """\
name = "bench-{config}"
description = "fanotify_overhead: an exact exec rule that judges the bench's copy of /bin/true"
mode = "enforce"

[[rules]]
id = "judged-exec"
operation = "exec"
targets.paths = [{path}]
action = "deny"
fallback = "kill"

[rules.subjects]
uid = [{uid}]
"""
#: prefix-dir: a prefix open rule whose parent directory is the open workload's (see the doc)
PREFIX_POLICY = """\
name = "bench-prefix-dir"
description = "fanotify_overhead: a prefix rule that marks the open workload's directory"
mode = "enforce"

[[rules]]
id = "prefix-write"
operation = "open"
access = ["write", "create", "truncate"]
targets.paths = [{prefix}]
action = "deny"
fallback = "kill"

[rules.subjects]
cgroup = [{cgroup}]
"""
#: judged-exe: the same rule for the caller's own uid, except the load generator: the ids admit
#: the caller, so the decision (allow: the exception) is the Python evaluator's
JUDGED_EXCEPT = """
[rules.subjects.except]
exe = [{loadgen}]
"""


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def fanotify_marks(pid: int) -> dict[str, int]:
    """Marks of the agent's fanotify groups, by kind (inode, mount, filesystem), from fdinfo."""
    counts = {"ino": 0, "mnt": 0, "sdev": 0}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            for kind in counts:
                if line.startswith(f"fanotify {kind}:"):
                    counts[kind] += 1
    return counts


def other_fanotify_holders() -> list[str]:
    """Other processes holding fanotify groups (another agent under test): their marks make
    the same execs and opens wait for them too."""
    out = []
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[fanotify]" for fd in fds):
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                out.append(f"{pid}:{comm}")
        except OSError:
            continue
    return out


def wait_quiet(limit: float) -> list[str]:
    """Wait (up to ``limit`` s) until no other session's tracing programs or fanotify groups
    are loaded (called while none of ours runs); what is still there then taints the sample."""
    deadline = time.monotonic() + limit
    while True:
        others = benchlib.foreign_bpf_programs() + [
            f"fanotify:{p}" for p in other_fanotify_holders()
        ]
        if not others or time.monotonic() >= deadline:
            return sorted(set(others))
        time.sleep(2)


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all threads), in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def confine(text: str, cgroup_rel: str) -> tuple[str, list[str]]:
    """The policy text with every enforcing exec/open rule that has no subject limited to the
    bench cgroup (appended as the last rule's subjects table: only when that rule is the one).
    Returns the text and the ids of the rules confined."""
    doc = tomllib.loads(text)
    if doc.get("mode", "enforce") != "enforce":
        return text, []
    rules = doc.get("rules", [])
    loose = [
        i
        for i, r in enumerate(rules)
        if r.get("operation") in ("exec", "open")
        and r.get("action") in ("deny", "kill")
        and "subjects" not in r
    ]
    if not loose:
        return text, []
    if loose != [len(rules) - 1]:
        raise SystemExit(
            f"bench: cannot confine rules {loose} of this policy (only the last rule can be);"
            " use --unconfined"
        )
    return text + f'\n[rules.subjects]\ncgroup = ["{cgroup_rel}"]\n', [rules[-1]["id"]]


class Agent:
    """One checkout's agent: where it runs from and its policy directories per configuration."""

    def __init__(self, name: str, repo: Path, bpf_dir: Path, work: Path) -> None:
        self.name, self.repo, self.bpf_dir = name, repo, bpf_dir
        self.dirs: dict[str, Path] = {}
        self.confined: dict[str, list[str]] = {}
        self.work = work / name
        self.work.mkdir(parents=True)

    def prepare(self, judged_bin: Path, target: Path, cgroup: Path, unconfined: bool) -> None:
        src = self.repo / "policies"
        rel = "/" + cgroup.name
        files = {p.stem: p for p in sorted(src.glob("*.toml"))}
        for single in SINGLES:
            if single not in files:
                raise SystemExit(f"bench: {src}/{single}.toml missing")
        wanted = {"examples": list(files), **{s: [s] for s in SINGLES}}
        for config, stems in wanted.items():
            d = self.work / "policies" / config
            d.mkdir(parents=True)
            for stem in stems:
                text = files[stem].read_text()
                if not unconfined:
                    text, ids = confine(text, rel)
                    self.confined.setdefault(config, []).extend(ids)
                (d / files[stem].name).write_text(text)
        d = self.work / "policies" / "judged"
        d.mkdir(parents=True)
        path = json.dumps(str(judged_bin))
        (d / "judged.toml").write_text(JUDGED_POLICY.format(config="judged", path=path, uid=65534))
        d = self.work / "policies" / "judged-exe"
        d.mkdir(parents=True)
        loadgen = json.dumps(str(benchlib.LOADGEN.resolve()))
        (d / "judged.toml").write_text(
            JUDGED_POLICY.format(config="judged-exe", path=path, uid=os.getuid())
            + JUDGED_EXCEPT.format(loadgen=loadgen)
        )
        d = self.work / "policies" / "prefix-dir"
        d.mkdir(parents=True)
        (d / "prefix.toml").write_text(PREFIX_POLICY.format(
            prefix=json.dumps(f"{target.parent}/secret*"), cgroup=json.dumps(rel)))  # fmt: skip
        self.dirs = {c: self.work / "policies" / c for c in CONFIGS}

    def start(self, config: str, cgroup: Path, serial: int) -> Running:
        state = self.work / f"run-{serial}"
        state.mkdir()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.repo)
        env["SEALTRAIL_BPF_DIR"] = str(self.bpf_dir)
        stderr = open(state / "stderr", "w+")  # noqa: SIM115 (closed in Running.stop)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [
                str(PYTHON), "-m", "agent.cli", "agent",
                "--policies", str(self.dirs[config]), "--journal", str(state / "journal"),
                "--keys", str(state / "keys"), "--run-dir", str(state / "run"),
                "--cgroup", str(cgroup),
                # pins in the default directory would outlive the run and stop every other
                # agent on the machine from starting with a pin directory of its own
                "--no-pin",
            ],
            cwd=self.repo, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=stderr, preexec_fn=_die_with_parent,
        )  # fmt: skip
        return Running(self, config, proc, state, stderr, t0)


class Running:
    def __init__(
        self, agent: Agent, config: str, proc: subprocess.Popen[bytes], state: Path,
        stderr: Any, t0: float,
    ) -> None:  # fmt: skip
        self.agent, self.config, self.proc, self.state = agent, config, proc, state
        self.stderr, self.t0 = stderr, t0
        self.status: dict[str, Any] | None = None
        self.start_s = 0.0

    def wait_loaded(self) -> str | None:
        """None once status.json says loaded/mismatch, else why not."""
        status_file = self.state / "run" / "status.json"
        deadline = self.t0 + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"agent exited with {self.proc.returncode}"
            try:
                self.status = json.loads(status_file.read_text())
            except (OSError, ValueError):
                time.sleep(0.05)
                continue
            self.start_s = time.monotonic() - self.t0
            result = self.status.get("result")
            return None if result in ("loaded", "mismatch") else f"status: {self.status}"
        return f"no status.json after {START_TIMEOUT:.0f} s"

    def stderr_text(self) -> str:
        if not self.stderr.closed:
            self.stderr.flush()
        return (self.state / "stderr").read_text(errors="replace")

    def stop(self) -> int | None:
        from agent.journal import protect

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        journal = self.state / "journal"
        if journal.exists():
            protect.clear_all(journal)
        return self.proc.returncode


def run_workloads(
    wl: dict[str, tuple[str, str, int]], cpu: int | None, cgroup: Path, agent_pid: int | None
) -> tuple[dict[str, float], dict[str, float]]:
    """ns/iter per workload, and the agent's CPU µs per iteration during it."""
    hz = os.sysconf("SC_CLK_TCK")
    ns: dict[str, float] = {}
    agent_cpu: dict[str, float] = {}
    for name, (mode, arg, iters) in wl.items():
        before = cpu_ticks(agent_pid) if agent_pid else 0
        rows = benchlib.loadgen(mode, arg, iters=iters, rounds=1, cpu=cpu, cgroup=cgroup)
        ns[name] = rows[0]["ns_per_iter"]
        if agent_pid:
            agent_cpu[name] = (cpu_ticks(agent_pid) - before) / hz * 1e6 / (iters * 1.1)
    return ns, agent_cpu


def parse_agent(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{spec!r}: want NAME=PATH")
    repo = Path(path).resolve()
    if not (repo / "agent" / "cli").is_dir():
        raise argparse.ArgumentTypeError(f"{repo}: not a sealtrail checkout")
    return name, repo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a few s a config)")
    ap.add_argument("--exec-iters", type=int)
    ap.add_argument("--open-iters", type=int)
    ap.add_argument("--cpu", type=int, help="pin the load generator to this CPU (default: none)")
    ap.add_argument(
        "--agent", "--repo", dest="agents", action="append", type=parse_agent, default=[],
        metavar="NAME=PATH", help="also the agent of another checkout (repeatable)",
    )  # fmt: skip
    ap.add_argument("--name", default="new", help="this checkout's name in the table")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    ap.add_argument(
        "--wait-foreign", type=float, default=60.0,
        help="s to wait before a sample for other sessions' tracing programs to go",
    )  # fmt: skip
    ap.add_argument("--json", type=Path, default=OUT_DIR / "fanotify_overhead.json")
    benchlib.add_probes_option(ap)
    ap.add_argument(
        "--unconfined", action="store_true",
        help="the policy files exactly as shipped (tmp-exec then denies /tmp execs host-wide)",
    )  # fmt: skip
    args = ap.parse_args()
    benchlib.need_root("runs the agent: BPF programs, fanotify, cgroups")
    configs = [c for c in args.configs.split(",") if c]
    if unknown := set(configs) - set(CONFIGS):
        raise SystemExit(f"bench: unknown configurations {sorted(unknown)}")
    exec_iters = args.exec_iters or (300 if args.quick else 2000)
    open_iters = args.open_iters or (30_000 if args.quick else 200_000)
    getppid_iters = 10 * open_iters

    load_before = _loadavg()
    foreign_before = benchlib.foreign_bpf_programs()
    fan_before = other_fanotify_holders()
    probes = benchlib.prepare(args)
    main_bpf = REPO / "agent" / "kernel" / "obj"
    if not args.working_tree_probes:
        main_bpf = benchlib.PROBE_OBJ
        os.environ.pop("SEALTRAIL_BPF_DIR", None)  # each agent gets its own below

    def describe(repo: Path) -> str:
        def git(*a: str) -> str:
            r = subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True)
            return r.stdout.strip()

        dirty = git("status", "--porcelain", "--", "agent", "native", "probes")
        return git("rev-parse", "--short", "HEAD") + (" (agent/native/probes dirty)" * bool(dirty))

    work = Path(tempfile.mkdtemp(prefix="sealtrail-fanbench-", dir="/var/tmp"))
    target = work / "f"
    target.write_bytes(b"x")
    bindir = OUT_DIR / "fanotify" / "bin"  # not below /tmp, /var/tmp: tmp-exec judges those
    bindir.mkdir(parents=True, exist_ok=True)
    judged_bin = bindir / "judged-true"
    shutil.copy2("/bin/true", judged_bin)
    wl = {
        "exec true": ("exec", "/bin/true", exec_iters),
        "open+close": ("open", str(target), open_iters),
        "exec judged": ("exec", str(judged_bin), exec_iters),
        "getppid": ("getppid", "", getppid_iters),
    }
    agents_spec = [(args.name, REPO, main_bpf)] + [
        (n, p, p / "agent" / "kernel" / "obj") for n, p in args.agents
    ]
    if len({n for n, _, _ in agents_spec}) != len(agents_spec):
        raise SystemExit("bench: agent names must differ")
    samples: dict[str, dict[str, list[float]]] = {}
    agent_cpu: dict[str, dict[str, list[float]]] = {}
    meta: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, Any]] = []
    tainted: dict[str, list[list[str]]] = {}
    serial = 0
    try:
        with BenchCgroup("sealtrail-fanbench") as cgroup:
            agents = []
            for name, repo, bpf in agents_spec:
                a = Agent(name, repo, bpf, work)
                a.prepare(judged_bin, target, cgroup, args.unconfined)
                agents.append(a)
                meta[name] = {"repo": str(repo), "commit": describe(repo), "bpf_dir": str(bpf),
                              "confined_rules": a.confined}  # fmt: skip
            plan: list[tuple[Agent | None, str]] = [(None, "none")] + [
                (a, c) for a in agents for c in configs
            ]
            print(
                f"fanotify_overhead: {len(plan)} configurations x {args.rounds} rounds; "
                f"{exec_iters} execs, {open_iters} opens, {getppid_iters} getppid per sample; "
                f"load average {load_before}"
            )
            for rnd in range(args.rounds):
                shift = (rnd * len(plan)) // max(args.rounds, 1)
                order = plan[shift:] + plan[:shift]
                if rnd % 2:
                    order.reverse()
                for agent, config in order:
                    key = "none" if agent is None else f"{agent.name}/{config}"
                    others = wait_quiet(args.wait_foreign)
                    if others:
                        tainted.setdefault(key, []).append(others)
                    run = None
                    t0 = time.monotonic()
                    try:
                        if agent is not None:
                            serial += 1
                            run = agent.start(config, cgroup, serial)
                            why = run.wait_loaded()
                            if why:
                                failures.append({"config": key, "round": rnd, "why": why,
                                                 "stderr": run.stderr_text()[-4000:]})  # fmt: skip
                                print(f"  round {rnd}: {key}: FAILED ({why})")
                                continue
                        pid = run.proc.pid if run else None
                        ns, cpu_us = run_workloads(wl, args.cpu, cgroup, pid)
                        for w, v in ns.items():
                            samples.setdefault(key, {}).setdefault(w, []).append(v)
                        for w, v in cpu_us.items():
                            agent_cpu.setdefault(key, {}).setdefault(w, []).append(v)
                        m = meta.setdefault(key, {})
                        if run is not None:
                            assert run.status is not None
                            m.setdefault("marks", []).append(fanotify_marks(run.proc.pid))
                            m.setdefault("start_s", []).append(round(run.start_s, 3))
                            m["status"] = {k: run.status.get(k) for k in ("result", "errors")}
                            if run.status.get("result") != "loaded":
                                m["stderr_tail"] = run.stderr_text()[-4000:]
                        print(
                            f"  round {rnd}: {key:28} "
                            + "  ".join(f"{w} {v / 1000:8.3f}" for w, v in ns.items())
                            + f"  µs/iter ({time.monotonic() - t0:.1f} s)",
                            flush=True,
                        )
                    finally:
                        if run is not None:
                            rc = run.stop()
                            if rc not in (0, -signal.SIGTERM):
                                failures.append({"config": key, "round": rnd,
                                                 "why": f"agent exit status {rc}",
                                                 "stderr": run.stderr_text()[-4000:]})  # fmt: skip
                            log = run.stderr_text()
                            warn = [ln for ln in log.splitlines() if " WARNING " in ln
                                    or " ERROR " in ln or "Traceback" in ln]  # fmt: skip
                            if warn:
                                meta.setdefault(key, {}).setdefault("warnings", []).extend(
                                    warn[:20]
                                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = _loadavg()
    foreign_after = benchlib.foreign_bpf_programs()
    fan_after = other_fanotify_holders()
    report(samples, agent_cpu, meta, failures, tainted, [k for k in (["none"] + [
        f"{a}/{c}" for a, _, _ in agents_spec for c in configs]) if k in samples])  # fmt: skip
    print(f"\nload average before {load_before}, after {load_after}")
    for label, before, after in (
        ("foreign BPF tracing programs", foreign_before, foreign_after),
        ("other processes holding fanotify groups", fan_before, fan_after),
    ):
        if before or after:
            print(f"{label}: before {before or 'none'}; after {after or 'none'}")
    data = {
        "argv": sys.argv, "iters": {w: v[2] for w, v in wl.items()}, "rounds": args.rounds,
        "cpu": args.cpu, "probes": probes, "loadavg_before": load_before,
        "loadavg_after": load_after, "foreign_bpf_before": foreign_before,
        "foreign_bpf_after": foreign_after, "fanotify_holders_before": fan_before,
        "fanotify_holders_after": fan_after, "unconfined": args.unconfined,
        "ns_per_iter": samples, "agent_cpu_us_per_iter": agent_cpu, "meta": meta,
        "failures": failures, "tainted_samples": tainted,
        "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"raw numbers: {args.json}")


def report(
    samples: dict[str, dict[str, list[float]]],
    agent_cpu: dict[str, dict[str, list[float]]],
    meta: dict[str, dict[str, Any]],
    failures: list[dict[str, Any]],
    tainted: dict[str, list[list[str]]],
    keys: list[str],
) -> None:
    base = {w: summary(v) for w, v in samples.get("none", {}).items()}
    print("\nµs per iteration: median of rounds [min..max], (+added vs none, median - median)")
    lines: list[list[object]] = []
    for key in keys:
        cells: list[object] = [key]
        for w in WORKLOADS:
            vals = samples[key].get(w)
            if not vals:
                cells.append("-")
                continue
            s = summary(vals)
            digits = 1 if w.startswith("exec") else 3
            cell = f"{s['median'] / 1e3:.{digits}f} [{s['min'] / 1e3:.{digits}f}.."
            cell += f"{s['max'] / 1e3:.{digits}f}]"
            if key != "none" and w in base:
                cell += f" ({(s['median'] - base[w]['median']) / 1e3:+.{digits}f})"
            cells.append(cell)
        m = meta.get(key, {})
        marks = m.get("marks", [])
        mk = "/".join(str(marks[-1][k]) for k in ("ino", "mnt", "sdev")) if marks else "-"
        start = sorted(m["start_s"])[len(m["start_s"]) // 2] if m.get("start_s") else None
        lines.append([*cells, mk, benchlib.num(start, ".2f"), len(tainted.get(key, []))])
    columns = [("configuration", -28), *((w, 36) for w in WORKLOADS),
               ("marks ino/mnt/sdev", 21), ("start s", 8), ("tainted", 8)]  # fmt: skip
    benchlib.print_table(columns, lines)
    if agent_cpu:
        print("\nagent CPU µs per iteration (all threads, /proc/PID/stat; median of rounds)")
        benchlib.print_table(
            [("configuration", -28), *((w, 13) for w in WORKLOADS)],
            [[key, *(benchlib.num(summary(agent_cpu[key][w])["median"], ".3f")
                     if w in agent_cpu[key] else "-" for w in WORKLOADS)]
             for key in keys if key in agent_cpu],
        )  # fmt: skip
    agents = sorted({k.split("/")[0] for k in keys if k != "none"})
    if base:
        print("\ntargets (added vs none, median; worst configuration in brackets)")
        targets = (
            ("exec no rule can match", "exec true", None, 15_000.0),
            ("exec a rule judges (judged)", "exec judged", "judged", 50_000.0),
            ("exec the evaluator decides", "exec judged", "judged-exe", 50_000.0),
            ("open no rule names", "open+close", None, 150.0),
        )
        for label, w, only, limit in targets:
            for a in agents:
                added = {
                    k: summary(samples[k][w])["median"] - base[w]["median"]
                    for k in keys
                    if k.startswith(a + "/") and w in samples[k]
                    and (only is None or k == f"{a}/{only}")
                }  # fmt: skip
                if not added:
                    continue
                ex = added.get(f"{a}/examples", added.get(f"{a}/{only}"))
                worst = max(added, key=lambda k: added[k])
                unit, div = ("ns", 1.0) if limit < 1000 else ("µs", 1000.0)
                ok = "met" if max(added.values()) <= limit else "NOT met"
                shown = f"{ex / div:+.1f} {unit}" if ex is not None else "-"
                print(
                    f"  {a:6} {label:30} {shown:>12} [worst {worst.split('/', 1)[1]}: "
                    f"{added[worst] / div:+.1f} {unit}]  target <= {limit / div:.0f} {unit}: {ok}"
                )
    for key in keys:
        m = meta.get(key, {})
        if m.get("status", {}).get("result") == "mismatch" or m.get("warnings"):
            print(f"\n{key}: status {m.get('status')}")
            for ln in m.get("warnings", [])[:10]:
                print(f"    {ln}")
    if tainted:
        seen = sorted({x for runs in tainted.values() for r in runs for x in r})
        print(
            f"\ntainted: samples taken with foreign BPF tracing programs or fanotify groups: {seen}"
        )
    for f in failures:
        print(f"\nFAILED {f['config']} round {f['round']}: {f['why']}\n{f['stderr']}")


if __name__ == "__main__":
    main()
