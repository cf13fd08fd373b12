"""Shared pieces of the sealtrail benchmarks: the common start (root, the load generator, which
probes), run the load generator, consume an EventStream in a background thread, per-program
BPF run time, small statistics, and the one table printer.

Not a test helper: benchmarks print numbers, they do not assert.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.events.stream import EventStream, StreamConfig

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
OUT_DIR = REPO / "build" / "bench"
LOADGEN_SRC = BENCH_DIR / "loadgen.c"
LOADGEN = OUT_DIR / "loadgen"


def build_c(src: Path, out: Path, *flags: str) -> Path:
    """cc -O2 ``src`` -> ``out`` (rebuilt when the source is newer)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("bench: no C compiler (cc/gcc) found; apt-get install gcc")
    subprocess.run([cc, "-O2", *flags, "-Wall", "-Wextra", "-o", str(out), str(src)], check=True)
    return out


def build_loadgen() -> Path:
    """cc -O2 bench/loadgen.c -> build/bench/loadgen (rebuilt when the source is newer)."""
    return build_c(LOADGEN_SRC, LOADGEN)


PROBE_SRC = OUT_DIR / "probes-src"
PROBE_OBJ = OUT_DIR / "obj"
BPF_CFLAGS = ["-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror"]


def build_probes(rev: str = "HEAD") -> dict[str, str]:
    """Compile probes/*.bpf.c as committed at `rev` into build/bench/obj and point the agent
    at them (SEALTRAIL_BPF_DIR), so the numbers belong to a known commit even while someone
    edits probes/ in the working tree. Uses `make`'s build/vmlinux.h."""
    import hashlib
    import tarfile
    import tempfile

    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    shutil.rmtree(PROBE_SRC, ignore_errors=True)
    PROBE_SRC.mkdir(parents=True)
    PROBE_OBJ.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as tar:
        subprocess.run(
            ["git", "-C", str(REPO), "archive", commit, "probes"], check=True, stdout=tar
        )
        tar.seek(0)
        with tarfile.open(fileobj=tar) as tf:
            tf.extractall(PROBE_SRC, filter="data")
    vmlinux = REPO / "build" / "vmlinux.h"
    if not vmlinux.exists():
        raise SystemExit("bench: build/vmlinux.h missing; run `make probes` once")
    info = {"probes_commit": commit}
    for src in sorted((PROBE_SRC / "probes").glob("*.bpf.c")):
        obj = PROBE_OBJ / src.name.replace(".bpf.c", ".bpf.o")
        subprocess.run(
            [
                "clang",
                *BPF_CFLAGS,
                f"-I{REPO / 'build'}",
                f"-I{src.parent}",
                "-c",
                str(src),
                "-o",
                str(obj),
            ],
            check=True,
        )
        info[obj.name] = hashlib.sha256(obj.read_bytes()).hexdigest()[:16]
    os.environ["SEALTRAIL_BPF_DIR"] = str(PROBE_OBJ)
    return info


# ---- the common start of a benchmark ----

WORKING_TREE_PROBES = {"probes": "working tree (agent/kernel/obj)"}


def add_probes_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--working-tree-probes",
        action="store_true",
        help="bench agent/kernel/obj as built (default: probes/ as committed at HEAD)",
    )


def need_root(why: str) -> None:
    if os.geteuid() != 0:
        raise SystemExit(f"bench: needs root ({why})")


def prepare(
    args: argparse.Namespace, build: Callable[[], dict[str, str]] = build_probes
) -> dict[str, str]:
    """Build the load generator and choose the probes: ``build()`` (default: probes/ as
    committed at HEAD, SEALTRAIL_BPF_DIR pointing at them, inherited by an agent started
    later) or, with --working-tree-probes, agent/kernel/obj as built. Prints and returns
    which."""
    build_loadgen()
    probes = dict(WORKING_TREE_PROBES) if args.working_tree_probes else build()
    print(f"probes: {probes}", flush=True)
    return probes


def loadgen(
    mode: str,
    arg: str = "",
    *,
    iters: int,
    rounds: int = 1,
    cpu: int | None = None,
    duration: float | None = None,
    cgroup: Path | None = None,
) -> list[dict[str, float]]:
    """Run the load generator; one dict per output line (round=..., or total=... in flood).
    ``cgroup``: it joins that cgroup v2 directory before the warm-up."""
    cmd = [str(LOADGEN), "-n", str(iters), "-r", str(rounds)]
    if cpu is not None:
        cmd += ["-c", str(cpu)]
    if duration is not None:
        cmd += ["-d", str(duration)]
    if cgroup is not None:
        cmd += ["-g", str(cgroup)]
    cmd += [mode] + ([arg] if arg else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        row: dict[str, float] = {}
        for part in line.split():
            if "=" in part:
                k, v = part.split("=", 1)
                row[k] = float(v)
        rows.append(row)
    return rows


def closed_tcp_port() -> int:
    """A loopback TCP port nobody listens on (bound once to get a free number, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BenchCgroup:
    """A cgroup v2 directory of the benchmark's own (the guard attaches there, so a policy
    bench never touches the rest of the machine); removed on exit once its processes are gone."""

    def __init__(self, name: str) -> None:
        from agent.enforce.guard import cgroup2_root

        self.path = cgroup2_root() / f"{name}-{os.getpid()}"

    def __enter__(self) -> Path:
        self.path.mkdir()
        return self.path

    def __exit__(self, *_exc: object) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        print(f"WARNING: could not remove {self.path} (processes still in it?)")


# ---- the agent side: an EventStream drained by a thread ----


@dataclass
class Consumer:
    """Starts an EventStream and drains it in a thread (so the ring buffer never fills)."""

    config: StreamConfig
    events: int = 0
    losses: int = 0
    start_s: float = 0.0
    stream: EventStream | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Consumer:
        t0 = time.perf_counter()
        self.stream = EventStream(self.config)
        self.stream.start()
        self.start_s = time.perf_counter() - t0
        self._thread = threading.Thread(target=self._run, name="bench-consumer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self.stream is not None
        from agent.events import model

        while not self._stop.is_set():
            for item in self.stream.poll(50):
                if isinstance(item, model.LossEvent):
                    self.losses += item.count
                else:
                    self.events += 1

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.stream:
            self.stream.close()


# ---- BPF run-time statistics (kernel.bpf_stats via BPF_ENABLE_STATS, held by an fd) ----

_BPF_ENABLE_STATS = 32
_BPF_STATS_RUN_TIME = 0
_NR_BPF = 321  # x86_64


class BpfStats:
    """Enable per-program run_time_ns/run_cnt while this context is open (restored on close).

    Uses the BPF_ENABLE_STATS command: the kernel counts while the returned fd is open, so a
    crashed benchmark cannot leave the global sysctl on.
    """

    def __enter__(self) -> BpfStats:
        libc = ctypes.CDLL(None, use_errno=True)
        attr = ctypes.c_uint32(_BPF_STATS_RUN_TIME)
        fd = libc.syscall(_NR_BPF, _BPF_ENABLE_STATS, ctypes.byref(attr), 4)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS")
        self.fd = int(fd)
        return self

    def __exit__(self, *_exc: object) -> None:
        os.close(self.fd)


def own_prog_ids(pid: int | str = "self") -> set[int]:
    """Ids of the BPF programs whose fds this process (or process ``pid``) holds."""
    ids: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def _all_progs() -> list[dict[str, object]]:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True)
    try:
        progs = json.loads(out.stdout or "[]")
    except json.JSONDecodeError:
        return []
    return progs if isinstance(progs, list) else []


def own_prog_stats(pid: int | str = "self") -> dict[str, tuple[int, int]]:
    """name -> (run_time_ns, run_cnt) for the BPF programs whose fds this process (or process
    ``pid``) holds."""
    ids = own_prog_ids(pid)
    stats: dict[str, tuple[int, int]] = {}
    for prog in _all_progs():
        if prog.get("id") in ids:
            run_ns = prog.get("run_time_ns", 0)
            run_cnt = prog.get("run_cnt", 0)
            assert isinstance(run_ns, int) and isinstance(run_cnt, int)
            stats[str(prog["name"])] = (run_ns, run_cnt)
    return stats


TRACING_TYPES = ("tracepoint", "raw_tracepoint", "tracing", "kprobe", "lsm", "perf_event")


def foreign_bpf_programs() -> list[str]:
    """Tracing programs loaded by someone else (another agent, a kernel test run). On this
    kernel any syscall tracepoint puts every syscall on the slow path, so they spoil the
    no-agent baseline and add their own probes' work to every scenario."""
    own = own_prog_ids()
    return sorted(
        str(p.get("name", "?"))
        for p in _all_progs()
        if p.get("type") in TRACING_TYPES and p.get("id") not in own
    )


# ---- statistics ----


def summary(values: list[float]) -> dict[str, float]:
    vs = sorted(values)
    return {
        "n": len(vs),
        "median": statistics.median(vs),
        "min": vs[0],
        "max": vs[-1],
        "stdev": statistics.stdev(vs) if len(vs) > 1 else 0.0,
    }


# ---- output ----


def num(value: object, spec: str = ".0f") -> str:
    """A number as ``spec`` formats it; anything else (None: not measured) as "-"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, spec)
    return "-"


def _fit(value: object, width: int) -> str:
    text = value if isinstance(value, str) else num(value)
    return f"{text:<{-width}}" if width < 0 else f"{text:>{width}}"


def print_table(
    columns: Sequence[tuple[str, int]], rows: Iterable[Sequence[object] | None]
) -> None:
    """A header, a rule, then a line per row: each cell in its column of ``(name, width)``,
    right-aligned (left-aligned where the width is negative); strings as they are, numbers as
    ``num`` shows them; a row of None is an empty line (between groups)."""
    header = " ".join(_fit(name, width) for name, width in columns).rstrip()
    print(header)
    print("-" * len(header))
    for row in rows:
        if row is None:
            print()
            continue
        cells = (_fit(c, width) for c, (_, width) in zip(row, columns, strict=True))
        print(" ".join(cells).rstrip())


def print_comparison(rows: list[dict[str, object]]) -> None:
    """The rows of ``compare_scenarios``: per workload, each scenario against "a" (no agent),
    then 1000 vs 10 rules against the noise."""
    columns = [("workload", -18), ("scenario", -16), ("ns/iter", 9), ("min..max", 19),
               ("x none", 7), ("+ns/iter", 9), ("(min)", 8), ("+ns/sys", 8), ("", -1)]  # fmt: skip
    lines: list[Sequence[object] | None] = []
    last = None
    for r in rows:
        if last is not None and r["workload"] != last:
            lines.append(None)
        last = r["workload"]
        if r["scenario"] == "c-b":
            flat = "flat within noise" if r["flat"] else "NOT flat"
            lines.append(["", "1000 vs 10", "", "", num(r["ratio"], ".3f"),
                          num(r["ns_per_iter_diff"], "+.0f"), "", "",
                          f"(noise {num(r['noise_ns'])}: {flat})"])  # fmt: skip
            continue
        s = r["ns_per_iter"]
        assert isinstance(s, dict)
        lines.append([r["workload"], f"{r['scenario']}: {SCENARIOS[str(r['scenario'])]}",
                      s["median"], f"{s['min']:.0f}..{s['max']:.0f}",
                      num(r["ratio_to_a"], ".3f"), num(r["added_ns_per_iter"], "+.0f"),
                      num(r["added_ns_per_iter_min_based"], "+.0f"),
                      num(r["added_ns_per_syscall"], "+.0f"), ""])  # fmt: skip
    print_table(columns, lines)


def write_json(name: str, data: object) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / name
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


#: The policy benchmarks' scenarios: no agent, 10 rules, 1000 rules (and their rule counts).
SCENARIOS = {"a": "none", "b": "10 rules", "c": "1000 rules"}
SCENARIO_SIZE = {"b": 10, "c": 1000}


def compare_scenarios(
    samples: dict[str, dict[str, list[float]]],
    wls: dict[str, dict[str, object]],
    scenarios: tuple[str, ...] = tuple(SCENARIOS),
) -> list[dict[str, object]]:
    """Rows per workload and scenario against scenario "a" (no agent), plus one "c-b" row:
    1000 vs 10 rules, the difference of medians against the noise (the larger spread)."""
    rows: list[dict[str, object]] = []
    for wl, by_scn in samples.items():
        base = summary(by_scn["a"])
        nsc = int(wls[wl]["syscalls"])  # type: ignore[call-overload]
        for scn in scenarios:
            s = summary(by_scn[scn])
            added = s["median"] - base["median"]
            rows.append({
                "workload": wl, "scenario": scn, "ns_per_iter": s,
                "ratio_to_a": s["median"] / base["median"], "added_ns_per_iter": added,
                "added_ns_per_iter_min_based": s["min"] - base["min"],
                "added_ns_per_syscall": added / nsc if nsc else None,
            })  # fmt: skip
        b, c = summary(by_scn["b"]), summary(by_scn["c"])
        noise = max(b["max"] - b["min"], c["max"] - c["min"])
        diff = c["median"] - b["median"]
        rows.append({
            "workload": wl, "scenario": "c-b", "ratio": c["median"] / b["median"],
            "ns_per_iter_diff": diff, "noise_ns": noise, "flat": abs(diff) <= noise,
        })  # fmt: skip
    return rows
