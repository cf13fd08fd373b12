"""`make bench` (python -m bench): run every benchmark in turn, results in build/bench/."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("syscall_overhead", "ringbuf_rate", "policy_overhead", "agent_e2e")


def main() -> int:
    sys.path.insert(0, str(HERE))  # the scripts import benchlib as a top-level module
    for name in BENCHMARKS:
        print(f"==> bench/{name}.py", flush=True)
        sys.argv = [str(HERE / f"{name}.py")]
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as exc:
            if exc.code:
                return int(exc.code) if isinstance(exc.code, int) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
