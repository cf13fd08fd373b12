"""The floor of a fanotify permission round trip on this machine, without the agent.

    sudo .venv/bin/python bench/fanotify_floor.py [--rounds 3] [--quick]

``bench/fanfloor.c`` (built with ``cc -O2 -pthread`` into ``build/bench/fanfloor``) marks a
directory of its own below /var/tmp and answers every permission event ALLOW from a C thread
of its own: no decision, no Python, no journal. What it adds to an open or an exec is what any
fanotify-based enforcer pays per event asked, however fast its decision; the agent's numbers
(``bench/fanotify_overhead.py``, configuration ``prefix-dir`` for opens, ``system-files`` for
the exec that opens ``/etc/ld.so.cache`` below the ``/etc/sudoers*`` mark) are read against it.

Cases, interleaved and rotated per round: open+close of DIR/f and fork+exec of DIR/true (a
copy of /bin/true), unmarked and marked (and ``exec both events``: the binary's exec open asks
twice, FAN_OPEN_EXEC_PERM then FAN_OPEN_PERM, as under the agent's mark of a binary an exact
exec rule judges); the marked ones with the answering thread unpinned
(where the scheduler puts it, as the agent's), on the timed loop's CPU (``same``), on the
other CPU (``other``) and one thread per CPU (``percpu``, all polling the one group), and
``+checks``: with the system calls of the agent's native proof of a plain allow before each
answer (``native/stfanotify.c``). Prints µs per iteration, median of rounds, and what the mark
adds over the unmarked case of the same placement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import benchlib
from benchlib import BENCH_DIR, OUT_DIR

SRC = BENCH_DIR / "fanfloor.c"
BIN = OUT_DIR / "fanfloor"

#: (name, mode, placement, checks, baseline name)
CASES = (
    ("open", "open-none", "none", False, None),
    ("open, same CPU", "open-none", "same", False, None),
    ("open marked", "open-marked", "none", False, "open"),
    ("open marked +checks", "open-marked", "none", True, "open"),
    ("open marked, same CPU", "open-marked", "same", False, "open, same CPU"),
    ("open marked +checks, same CPU", "open-marked", "same", True, "open, same CPU"),
    ("open marked, other CPU", "open-marked", "other", False, "open, same CPU"),
    ("open marked, percpu", "open-marked", "percpu", False, "open"),
    ("exec", "exec-none", "none", False, None),
    ("exec, same CPU", "exec-none", "same", False, None),
    ("exec marked", "exec-marked", "none", False, "exec"),
    ("exec marked +checks", "exec-marked", "none", True, "exec"),
    ("exec marked, same CPU", "exec-marked", "same", False, "exec, same CPU"),
    ("exec marked, percpu", "exec-marked", "percpu", False, "exec"),
    ("exec both events", "exec-both", "none", False, "exec"),
    ("exec both events, same CPU", "exec-both", "same", False, "exec, same CPU"),
)


def run(binary: Path, mode: str, placement: str, checks: bool, iters: int, d: Path) -> float:
    argv = [str(binary), "-n", str(iters), "-p", placement, *(["-c"] if checks else []), mode]
    out = subprocess.run([*argv, str(d)], capture_output=True, text=True, check=True).stdout
    fields = dict(kv.split("=", 1) for kv in out.split())
    want = {"none": 0, "marked": iters, "both": 2 * iters}[mode.split("-")[1]]
    if int(fields["events"]) < want:
        raise SystemExit(f"bench: {mode}: {fields['events']} events for {iters} iterations")
    return float(fields["ns_per_iter"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (~20 s)")
    args = ap.parse_args()
    benchlib.need_root("fanotify permission marks")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench: the placements need 2 CPUs")
    binary = benchlib.build_c(SRC, BIN, "-pthread")
    open_iters, exec_iters = (20_000, 500) if args.quick else (100_000, 2_000)
    d = Path(tempfile.mkdtemp(prefix="sealtrail-fanfloor-", dir="/var/tmp"))
    samples: dict[str, list[float]] = {name: [] for name, *_ in CASES}
    try:
        shutil.copy2("/bin/true", d / "true")
        (d / "f").write_bytes(b"x")
        for rnd in range(args.rounds):
            shift = rnd * len(CASES) // max(args.rounds, 1)
            order = CASES[shift:] + CASES[:shift]
            for name, mode, placement, checks, _ in order:
                iters = exec_iters if mode.startswith("exec") else open_iters
                samples[name].append(run(binary, mode, placement, checks, iters, d))
            print(f"  round {rnd} done", flush=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    median = {name: statistics.median(v) for name, v in samples.items()}
    rows = []
    for name, _, _, _, base in CASES:
        v = samples[name]
        added = median[name] - median[base] if base else None
        rows.append([name, median[name] / 1000, min(v) / 1000, max(v) / 1000,
                     added / 1000 if added is not None else None])  # fmt: skip
    print("\nµs per iteration, median of rounds; added: over the unmarked case, same placement")
    benchlib.print_table(
        [("case", -32), ("median", 10), ("min", 10), ("max", 10), ("added", 10)],
        ([r[0], *(benchlib.num(x, ".1f") for x in r[1:])] for r in rows),
    )
    path = benchlib.write_json("fanotify_floor.json", {
        "rounds": args.rounds, "iters": {"open": open_iters, "exec": exec_iters},
        "ns_per_iter": samples,
    })  # fmt: skip
    print(f"raw numbers: {path}")


if __name__ == "__main__":
    main()
