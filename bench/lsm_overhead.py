"""BPF-LSM enforcement overhead: 10 vs 1,000 rules, in the stock-kernel VM (issue "BPF-LSM
enforcement", performance item).

    .venv/bin/python bench/lsm_overhead.py [--rounds N] [--quick]        (on the host)

On the host (the development kernel cannot load BPF-LSM programs) it builds the load generator
(build/bench/loadgen) and the probes as committed at HEAD (build/bench/lsm-obj), then runs
itself inside the Debian 12 VM:

    tests/vm/run.sh -- env SEALTRAIL_BPF_DIR=/repo/build/bench/lsm-obj \\
        python3 bench/lsm_overhead.py [--rounds N] [--quick]

and reads the result back from the VM's output (one `LSM_OVERHEAD_JSON {...}` line; also
written to /out/lsm_overhead.json, i.e. build/vm/run.*/ on the host) into
build/bench/lsm_overhead.json. Inside the VM (SEALTRAIL_VM=1, set by tests/vm/guest.sh) or
with --here it measures on the machine it runs on, which must load BPF-LSM.

Under qemu TCG absolute times are meaningless; ratios are not: each workload is reported as
the ratio to the no-guard baseline of the same VM, and 1000 rules against 10.

Scenarios (rounds interleaved; the guard is loaded once a round, b and c back to back with
Guard.install swapping the policy, order a|bc, cb|a, a|cb, bc|a):
  a  none     no guard
  b  10       Guard(lsm=True) + install(compile_policy_set(10 rules))
  c  1000     the same with 1,000 rules
Rules (connect 30 %, open 30 %, unlink 20 %, exec 20 %) target exact paths, `dir/` prefixes
and `prefix*` globs under a temp dir's guarded/ tree, and loopback ports / CIDRs: every
workload below is judged by a hook with rules for its operation, and none matches (nothing
is denied).

Workloads (the load generator, pinned to --cpu, in a cgroup of the benchmark's own, where the
guard's cgroup hooks attach; the LSM hooks are host-wide):
  open+close      open(O_RDONLY) + close of a file no rule targets   (lsm/file_open)
  create+unlink   open(O_CREAT|O_EXCL|O_WRONLY) + close + unlink of a scratch file
                  (lsm/path_mknod, lsm/file_open, lsm/path_unlink)
  fork+exec true  fork + execve(/bin/true) + wait  (lsm/bprm_check_security, the file_opens of
                  the exec and the dynamic loader, the guard's sched tp_btf lineage hooks)
  udp connect     connect() of a UDP socket to 127.0.0.1:9, no rule names port 9
                  (cgroup/connect4)

Then BPF run time per call of each guard program that ran (BPF_ENABLE_STATS; counters read
from /proc/self/fdinfo, so nothing else runs while counting), and compile + load times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import benchlib
from benchlib import SCENARIO_SIZE, SCENARIOS, BenchCgroup, BpfStats, loadgen, summary

MARKER = "LSM_OVERHEAD_JSON "
SIZES = (10, 1000)
SPLIT = {"connect": 0.3, "open": 0.3, "unlink": 0.2, "exec": 0.2}
MISS_PORT = 9  # no rule names port 9 (rule ports are >= 20000)
OBJ_DIR = benchlib.OUT_DIR / "lsm-obj"  # the probes at HEAD, for the VM (SEALTRAIL_BPF_DIR)
VM_OBJ_DIR = "/repo/build/bench/lsm-obj"


# ---- policy generation ----


def _split(n: int) -> dict[str, int]:
    counts = {op: max(1, round(n * share)) for op, share in SPLIT.items()}
    counts["connect"] += n - sum(counts.values())
    return counts


def _rule(rule_id: str, op: str, body: str) -> str:
    return f'[[rules]]\nid = "{rule_id}"\noperation = "{op}"\n{body}\naction = "deny"\n'


def policy_files(n: int, guarded: Path) -> dict[str, str]:
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
                f'targets.ports = ["{30000 + 16 * i}-{30000 + 16 * i + 9}"]'
            )
        files["connect"].append(_rule(f"c{i}", "connect", tgt))
    for i in range(counts["open"]):
        d = guarded / "open" / f"d{i % 20}"
        if i % 3 == 0:
            tgt = f'access = ["write"]\ntargets.paths = ["{d}/f{i}"]'
        elif i % 3 == 1:
            tgt = f'targets.paths = ["{d}/sub{i}/"]'
        else:
            tgt = f'access = ["read"]\ntargets.paths = ["{d}/p{i}*"]'
        files["open"].append(_rule(f"o{i}", "open", tgt))
    for i in range(counts["unlink"]):
        d = guarded / "unlink" / f"d{i % 20}"
        tgt = f'targets.paths = ["{d}/f{i}"]' if i % 2 == 0 else f'targets.paths = ["{d}/sub{i}/"]'
        files["unlink"].append(_rule(f"u{i}", "unlink", tgt))
    for i in range(counts["exec"]):
        d = guarded / "bin"
        tgt = f'targets.paths = ["{d}/tool{i}"]' if i % 2 == 0 else f'targets.paths = ["{d}/d{i}/"]'
        files["exec"].append(_rule(f"e{i}", "exec", tgt))
    return {
        f"bench-{op}.toml": f'name = "bench-{op}"\nmode = "enforce"\n\n' + "\n".join(rules)
        for op, rules in files.items()
    }


def prepare(root: Path) -> dict[int, Path]:
    """The temp tree: policy dirs, guarded targets (some exact ones exist: inode entries), the
    free file and the scratch directory of the workloads."""
    shutil.rmtree(root, ignore_errors=True)
    guarded = root / "guarded"
    for kind in ("open", "unlink"):
        for d in range(20):
            (guarded / kind / f"d{d}").mkdir(parents=True)
        for i in range(0, 300, 6):
            (guarded / kind / f"d{i % 20}" / f"f{i}").touch()
    (guarded / "bin").mkdir()
    (root / "free").mkdir()
    (root / "free" / "f").write_text("bench\n")
    (root / "scratch").mkdir()
    dirs = {}
    for n in SIZES:
        d = root / f"policies-{n}"
        d.mkdir()
        for name, text in policy_files(n, guarded).items():
            (d / name).write_text(text)
        dirs[n] = d
    return dirs


def workloads(root: Path) -> dict[str, dict[str, object]]:
    return {
        "open+close": {"mode": "open", "arg": str(root / "free" / "f"), "syscalls": 2},
        "create+unlink": {"mode": "create", "arg": str(root / "scratch" / "s"), "syscalls": 3},
        "fork+exec true": {"mode": "exec", "arg": "/bin/true", "syscalls": 0},
        "udp connect": {"mode": "udpconnect", "arg": str(MISS_PORT), "syscalls": 1},
    }


# ---- BPF run time, from /proc/self/fdinfo (no helper process runs while counting) ----


def prog_counters() -> dict[int, tuple[int, int]]:
    """prog id -> (run_time_ns, run_cnt) of the BPF programs whose fds this process holds."""
    out: dict[int, tuple[int, int]] = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                info = dict(line.split(":", 1) for line in f if ":" in line)
            out[int(info["prog_id"])] = (int(info["run_time_ns"]), int(info["run_cnt"]))
        except (OSError, KeyError, ValueError):
            continue
    return out


def prog_names() -> dict[int, str]:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True)
    try:
        progs = json.loads(out.stdout or "[]")
    except json.JSONDecodeError:
        return {}
    return {int(p["id"]): str(p.get("name", p["id"])) for p in progs if "id" in p}


# ---- the measurement (on a BPF-LSM machine: the VM) ----


def _sample(spec: dict[str, object], iters: int, cpu: int, cgroup: Path) -> float:
    row = loadgen(str(spec["mode"]), str(spec["arg"]), iters=iters, cpu=cpu, cgroup=cgroup)
    return row[0]["ns_per_iter"]


def calibrate(
    wls: dict[str, dict[str, object]], secs: float, cpu: int, cgroup: Path
) -> dict[str, int]:
    """Iterations per sample so that a no-guard sample takes about ``secs`` (exec: 3 x, a
    fork+exec is tens of ms under TCG and varies more)."""
    iters = {}
    for wl, spec in wls.items():
        exec_ = spec["mode"] == "exec"
        ns = _sample(spec, 20 if exec_ else 2000, cpu, cgroup)
        iters[wl] = max(20 if exec_ else 1000, int(secs * (3 if exec_ else 1) * 1e9 / ns))
    return iters


def _orders(rounds: int) -> list[list[str]]:
    """Per round, the scenario order: the guard is loaded once a round (under TCG that takes
    tens of seconds) for b and c back to back, so the cycle is a|bc, cb|a, a|cb, bc|a."""
    cycle = [["a", "b", "c"], ["c", "b", "a"], ["a", "c", "b"], ["b", "c", "a"]]
    return [cycle[r % len(cycle)] for r in range(rounds)]


def timing_pass(
    wls: dict[str, dict[str, object]],
    iters: dict[str, int],
    compiled: dict[int, object],
    rounds: int,
    cpu: int,
    cgroup: Path,
) -> dict[str, object]:
    from agent.enforce.guard import Guard

    samples: dict[str, dict[str, list[float]]] = {w: {} for w in wls}
    load_s: list[float] = []
    install_s: dict[str, list[float]] = {}

    def measure_all(scn: str) -> None:
        for wl, spec in wls.items():
            samples[wl].setdefault(scn, []).append(_sample(spec, iters[wl], cpu, cgroup))

    for r, order in enumerate(_orders(rounds)):
        if order[0] == "a":
            measure_all("a")
        t0 = time.perf_counter()
        with Guard(cgroup, lsm=True) as guard:
            load_s.append(time.perf_counter() - t0)
            for scn in (s for s in order if s != "a"):
                t0 = time.perf_counter()
                guard.install(compiled[SCENARIO_SIZE[scn]])  # type: ignore[arg-type]
                install_s.setdefault(scn, []).append(time.perf_counter() - t0)
                time.sleep(0.05)
                measure_all(scn)
        if order[-1] == "a":
            measure_all("a")
        print(f"  round {r + 1}/{rounds} done", flush=True)
    return {"samples": samples, "guard_load_s": load_s, "guard_install_s": install_s}


def stats_pass(
    wls: dict[str, dict[str, object]],
    iters: dict[str, int],
    compiled: dict[int, object],
    cpu: int,
    cgroup: Path,
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """workload -> rules -> program -> calls per iteration, ns per call, ns per iteration."""
    from agent.enforce.guard import Guard

    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    with BpfStats(), Guard(cgroup, lsm=True) as guard:
        names = prog_names()
        for n, c in compiled.items():
            guard.install(c)  # type: ignore[arg-type]
            time.sleep(0.05)
            for wl, spec in wls.items():
                # the loop's iterations + loadgen's untimed warm-up (iters / 10); its own
                # fork, exec and library opens count too (they matter for exec only)
                total = iters[wl] + max(1, iters[wl] // 10)
                before = prog_counters()
                _sample(spec, iters[wl], cpu, cgroup)
                after = prog_counters()
                progs = {}
                for pid, (t1, c1) in after.items():
                    t0, c0 = before.get(pid, (0, 0))
                    if c1 - c0 < total // 2:  # not (about) once per iteration or more
                        continue
                    progs[names.get(pid, str(pid))] = {
                        "calls_per_iter": (c1 - c0) / total,
                        "ns_per_call": (t1 - t0) / (c1 - c0),
                        "ns_per_iter": (t1 - t0) / total,
                    }
                out.setdefault(wl, {})[str(n)] = progs
    return out


def measure(args: argparse.Namespace) -> dict[str, object]:
    from agent.policy.compile import compile_policy_set
    from agent.policy.mechanisms import host_capabilities
    from agent.policy.source import load_policy_set

    benchlib.need_root("loads BPF-LSM programs, cgroups")
    if not benchlib.LOADGEN.exists():
        raise SystemExit(f"bench: {benchlib.LOADGEN} missing: run this script on the host first")
    caps = host_capabilities()
    print(f"host capabilities: {caps}", flush=True)
    if not caps.lsm:
        raise SystemExit("bench: BPF-LSM does not load here; run it in the VM (no --here)")
    root = Path(args.tmp) / f"sealtrail-lsm-bench-{os.getpid()}"
    dirs = prepare(root)
    compiled: dict[int, object] = {}
    compile_s: dict[str, float] = {}
    for n, d in dirs.items():
        t0 = time.perf_counter()
        ps, findings = load_policy_set([d])
        assert not [f for f in findings if f.severity == "error"], findings
        assert sum(1 for _ in ps.rules()) == n
        compiled[n] = compile_policy_set(ps)
        compile_s[str(n)] = time.perf_counter() - t0
    ncpu = os.cpu_count() or 1
    if ncpu > 1:
        os.sched_setaffinity(0, {c for c in range(ncpu) if c != args.cpu} or {0})
    wls = workloads(root)
    rounds = 3 if args.quick and args.rounds == 7 else args.rounds
    secs = args.sample_secs / (3 if args.quick else 1)
    result: dict[str, object] = {
        "host": {"kernel": platform.release(), "cpus": ncpu, "loadgen_cpu": args.cpu,
                 "vm": bool(os.environ.get("SEALTRAIL_VM")), "capabilities": str(caps),
                 "bpf_dir": os.environ.get("SEALTRAIL_BPF_DIR", "agent/kernel/obj"),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "rules": {str(n): _split(n) for n in SIZES},
        "compile_s": compile_s,
    }  # fmt: skip
    try:
        with BenchCgroup("sealtrail-bench-lsm") as cgroup:
            iters = calibrate(wls, secs, args.cpu, cgroup)
            result["iters"] = iters
            print(f"lsm_overhead: {rounds} interleaved rounds x {len(SCENARIOS)} scenarios, "
                  f"iterations per sample {iters} ...", flush=True)  # fmt: skip
            t0 = time.monotonic()
            result["timing"] = timing_pass(wls, iters, compiled, rounds, args.cpu, cgroup)
            print(f"  ({time.monotonic() - t0:.0f} s) BPF_ENABLE_STATS pass ...", flush=True)
            result["bpf_stats"] = stats_pass(wls, iters, compiled, args.cpu, cgroup)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    timing = result["timing"]
    assert isinstance(timing, dict)
    result["rows"] = benchlib.compare_scenarios(timing["samples"], wls)
    return result


# ---- report ----


def print_tables(result: dict[str, object]) -> None:
    host = result["host"]
    assert isinstance(host, dict)
    print(f"kernel {host['kernel']}, {host['cpus']} CPUs (vm: {host['vm']}), "
          f"iterations per sample {result['iters']}")  # fmt: skip
    rows = result["rows"]
    assert isinstance(rows, list)
    benchlib.print_comparison(rows)
    stats = result["bpf_stats"]
    assert isinstance(stats, dict)
    print()
    print("BPF run time (BPF_ENABLE_STATS): ns per call [calls per iteration]; 1000/10 ratio")
    lines: list[list[object]] = []
    for wl, by_n in stats.items():
        small, big = by_n.get("10", {}), by_n.get("1000", {})
        for prog in sorted(set(small) | set(big)):
            s, b = small.get(prog), big.get(prog)
            cells = [f"{v['ns_per_call']:.0f} ns [{v['calls_per_iter']:5.2f}]" if v else "-"
                     for v in (s, b)]  # fmt: skip
            ratio = b["ns_per_call"] / s["ns_per_call"] if s and b else None
            lines.append([wl, prog, *cells, benchlib.num(ratio, ".2f")])
    columns = [("workload", -15), ("program", -20), ("10 rules", 20), ("1000 rules", 20),
               ("x", 6)]  # fmt: skip
    benchlib.print_table(columns, lines)
    timing = result["timing"]
    assert isinstance(timing, dict)
    load = summary(timing["guard_load_s"])
    inst = {scn: summary(v)["median"] for scn, v in timing["guard_install_s"].items()}
    comp = result["compile_s"]
    assert isinstance(comp, dict)
    print()
    print(f"Guard(lsm=True) load+attach median {load['median'] * 1e3:.0f} ms; Guard.install "
          f"10 rules {inst['b'] * 1e3:.0f} ms, 1000 rules {inst['c'] * 1e3:.0f} ms; parse + "
          f"compile 10 rules {comp['10'] * 1e3:.0f} ms, 1000 rules {comp['1000'] * 1e3:.0f} ms "
          "(under TCG: for comparison only)")  # fmt: skip
    print("ns/iter: median over rounds (min..max); x none: ratio to the no-guard median; "
          "+ns: minus the no-guard median (+ns/sys per syscall of the loop). 1000 vs 10: "
          "ratio and difference of medians against the wider min..max of the two.")  # fmt: skip


# ---- host side: build, run in the VM, read the result back ----


def build_probe_objects() -> dict[str, str]:
    """The probes as committed at HEAD (benchlib.build_probes) copied to build/bench/lsm-obj, a
    directory of this benchmark's own: the VM reads it while other benches may rebuild theirs."""
    info = benchlib.build_probes("HEAD")
    shutil.rmtree(OBJ_DIR, ignore_errors=True)
    OBJ_DIR.mkdir(parents=True)
    for obj in benchlib.PROBE_OBJ.glob("*.bpf.o"):
        shutil.copy2(obj, OBJ_DIR / obj.name)
    return info


def run_in_vm(argv: list[str], working_tree: bool) -> dict[str, object]:
    cmd = [str(benchlib.REPO / "tests" / "vm" / "run.sh"), "--"]
    if not working_tree:
        cmd += ["env", f"SEALTRAIL_BPF_DIR={VM_OBJ_DIR}"]
    cmd += ["python3", "bench/lsm_overhead.py", *argv, "--no-table"]
    print("$ " + " ".join(cmd), flush=True)
    env = dict(os.environ)
    env.setdefault("SEALTRAIL_VM_TIMEOUT", "1800")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, errors="replace", env=env)
    assert proc.stdout is not None
    found = None
    for line in proc.stdout:
        line = line.rstrip("\r\n")
        if line.startswith(MARKER):
            found = json.loads(line[len(MARKER) :])
        else:
            print(line, flush=True)
    rc = proc.wait()
    if found is None:
        raise SystemExit(f"bench: no result from the VM (run.sh exit code {rc})")
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--quick", action="store_true", help="3 rounds, 1/3 of the sample time")
    ap.add_argument("--sample-secs", type=float, default=0.5,
                    help="wall time of one no-guard sample (default 0.5)")  # fmt: skip
    ap.add_argument("--cpu", type=int, default=1, help="CPU the load generator is pinned to")
    ap.add_argument("--tmp", default="/tmp", help="where the temp tree goes (default /tmp)")
    ap.add_argument("--here", action="store_true",
                    help="measure here, not in the VM (needs BPF-LSM)")  # fmt: skip
    ap.add_argument("--no-table", action="store_true", help=argparse.SUPPRESS)  # host prints it
    benchlib.add_probes_option(ap)
    args = ap.parse_args()
    inside = bool(os.environ.get("SEALTRAIL_VM")) or args.here
    if inside:
        result = measure(args)
        if not args.no_table:
            print()
            print_tables(result)
        out = Path("/out")
        if os.environ.get("SEALTRAIL_VM") and out.is_dir():
            (out / "lsm_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
        if args.here:
            print(f"wrote {benchlib.write_json('lsm_overhead.json', result)}")
        else:
            print(MARKER + json.dumps(result, separators=(",", ":")), flush=True)
        return 0
    probes = benchlib.prepare(args, build_probe_objects)
    argv = [a for a in sys.argv[1:] if a != "--working-tree-probes"]
    load_start = os.getloadavg()
    result = run_in_vm(argv, args.working_tree_probes)
    result["probes"] = probes
    # the VM's vCPUs are host threads: a busy host is the main source of noise
    result["host_loadavg"] = {"start": load_start, "end": os.getloadavg()}
    path = benchlib.write_json("lsm_overhead.json", result)
    print()
    print_tables(result)
    print(f"host load average {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end "
          f"({os.cpu_count()} CPUs; the VM's 2 vCPUs are host threads)")  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
