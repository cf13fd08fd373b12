"""`make bench` (python -m bench.suite) and `make bench-smoke` (--smoke): sealtrail against
auditd and journald on this machine, in one run; a Markdown report, PNG charts and the raw
numbers as JSON in --out.

    .venv/bin/python -m bench.suite [--out DIR] [--rounds N] [--smoke] [--render JSON]

Needs root, the probes and native core built (`make bootstrap`), auditd and
systemd-journal-remote (the Makefile's BENCH_APT_PACKAGES). Nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import REPO, BenchCgroup

from . import agent, evidence, overhead, report, throughput

NOTE = ("These machines are shared: 2 cores, other engineers' test suites running at the same "
        "time. Absolute numbers are noisy; read the ratios, and the min..max spreads as the "
        "noise.")  # fmt: skip


def machine() -> dict[str, Any]:
    cpu = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    mem = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)
    doc = subprocess.run([str(agent.SEALTRAIL), "doctor", "--json"], capture_output=True,
                         text=True)  # fmt: skip
    try:
        checks = json.loads(doc.stdout)["checks"]
        found = ", ".join(f"{k} {'yes' if v['ok'] else 'no'}" for k, v in checks.items())
    except (ValueError, KeyError):
        found = f"doctor failed ({doc.returncode}): {doc.stderr[-300:]}"

    def version(cmd: list[str]) -> str:
        out = subprocess.run(cmd, capture_output=True, text=True)
        return (out.stdout + out.stderr).strip().splitlines()[0] if out.stdout + out.stderr else "?"

    return {
        "cpu_model": cpu[1] if cpu else platform.processor(), "cores": os.cpu_count(),
        "mem_gib": int(mem[1]) / 2**20 if mem else 0.0, "kernel": platform.release(),
        "doctor": found, "loadavg_before": list(os.getloadavg()),
        "auditd_version": version(["dpkg-query", "-W", "-f=${Version}", "auditd"]),
        "systemd_version": version(["dpkg-query", "-W", "-f=${Version}", "systemd"]),
    }  # fmt: skip


def commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True,
                              text=True).stdout.strip()  # fmt: skip

    dirty = git("status", "--porcelain", "--", "agent", "native", "probes", "policies")
    if agent.SRC != REPO:
        return git("rev-parse", "--short", "HEAD") + " (agent, native core, probes, policies)"
    return git("rev-parse", "--short", "HEAD") + (" (working tree differs)" if dirty else "")


def render(res: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = report.charts(res, out)
    md = out / "report.md"
    md.write_text(report.markdown(res, [p.name for p in paths]))
    return [md, *paths]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--smoke", action="store_true",
                    help="every configuration once, tiny counts (seconds to a minute)")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="iterations per overhead sample")
    ap.add_argument("--rates", default="10000,50000,100000,200000",
                    help="paced offered rates, events/s (floods follow)")  # fmt: skip
    ap.add_argument("--seconds", type=float, default=3.0, help="load per throughput run")
    ap.add_argument("--records", type=int, default=200_000, help="evidence: records")
    ap.add_argument("--wait-foreign", type=float, default=10.0,
                    help="s to wait for other sessions' tracing programs to go")  # fmt: skip
    ap.add_argument("--render", type=Path, help="only render this results JSON into --out")
    benchlib.add_probes_option(ap)
    ap.add_argument("--working-tree", action="store_true",
                    help="agent and policies of the working tree (default: HEAD)")  # fmt: skip
    args = ap.parse_args()
    if args.render:
        res = json.loads(args.render.read_text())
        print("\n".join(str(p) for p in render(res, args.out)))
        return 0
    benchlib.need_root("runs the agent and auditd")
    for tool in ("auditd", "auditctl", evidence.JOURNAL_REMOTE, "unshare"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} missing (make bench installs auditd and "
                             "systemd-journal-remote)")  # fmt: skip
    if args.smoke:
        args.rounds, args.scale, args.seconds, args.records = 1, 0.02, 0.5, 2000
        args.rates, args.wait_foreign = "10000", 0.0
    rates = [float(r) for r in args.rates.split(",") if r]
    t_start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f} s] {msg}", flush=True)

    # default: a snapshot of HEAD (agent, native core, probes, policies), built apart
    build = benchlib.build_probes if args.working_tree else agent.snapshot_probes
    probes = benchlib.prepare(args, build)
    mach = machine()
    # not below /tmp, /var/tmp or /dev/shm: the example tmp-exec rule names those
    benchlib.OUT_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="suite-", dir=benchlib.OUT_DIR))
    try:
        with BenchCgroup("sealtrail-suite") as cgroup:
            policies = agent.policy_dirs(work / "p", cgroup)
            log(f"overhead: {len(overhead.CONFIGS)} configurations x {args.rounds} rounds")
            ov = overhead.measure(args.rounds, args.scale, work / "ov", cgroup, policies,
                                  args.wait_foreign, log)  # fmt: skip
            log("throughput: sealtrail and auditd at the same offered rates")
            tp = throughput.measure(rates, args.seconds, 1.0 if args.smoke else 5.0,
                                    1 if args.smoke else 3, not args.smoke, work / "tp",
                                    cgroup, policies["enforce"], log,
                                    (10_000.0,) if args.smoke else (10_000.0, None))  # fmt: skip
        log(f"evidence: {args.records:,} records, sealtrail and journald FSS")
        ev = evidence.measure(args.records, work / "ev", 1 if args.smoke else 3)
    finally:
        for j in work.glob("**/journal"):
            from agent.journal import protect

            protect.clear_all(j)
        shutil.rmtree(work, ignore_errors=True)
    mach["loadavg_after"] = list(os.getloadavg())
    name = "smoke.json" if args.smoke else "results.json"
    argv = " ".join(sys.argv[1:])
    res = {
        "mode": "smoke" if args.smoke else "full", "time": time.strftime("%Y-%m-%d %H:%M UTC",
        time.gmtime()), "note": NOTE, "machine": mach, "commit": commit(), "probes": probes,
        "argv": sys.argv, "json_name": name, "wall_s": time.monotonic() - t_start,
        "commands": [
            f".venv/bin/python -m bench.suite {argv}".rstrip(),
            "sealtrail: " + " ".join(agent.Agent(work, policies["enforce"], cgroup).cmd)
            .replace(str(work), "$WORK"),
            "auditd: auditd -n -s enable -c $WORK/conf  (auditd.conf: bench/suite/auditd.py)",
            *("auditctl " + " ".join(r) for r in _audit_rules()),
            "journald: journalctl --setup-keys --interval=15min (and 100ms), "
            f"{evidence.JOURNAL_REMOTE} --seal=yes --output=$D/journal/remote.journal $D/export"
            " (in unshare -m, see bench/suite/evidence.py)",
            "journald: journalctl --directory=$D/journal --verify --verify-key=KEY",
            "sealtrail: sealtrail journal verify --journal $J --key $K/journal.pub",
        ],
        "overhead": ov, "throughput": tp, "evidence": ev,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / name).write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    for p in render(res, args.out):
        log(f"wrote {p}")
    return 0


def _audit_rules() -> list[list[str]]:
    from .auditd import rules

    return rules(agent.SRC / "policies")


if __name__ == "__main__":
    raise SystemExit(main())
