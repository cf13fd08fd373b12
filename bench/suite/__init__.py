"""`make bench` / `make bench-smoke`: sealtrail against auditd and journald in one run.

The comparison (python -m bench.suite) builds on the single-purpose scripts beside it (the
load generator, benchlib, the policy sets of policy_overhead and fanotify_overhead, the
journal readers of agent_e2e and journal_bench), which import each other as top-level
modules: this package puts bench/ on sys.path for them.
"""

import sys
from pathlib import Path

_BENCH = str(Path(__file__).resolve().parent.parent)
if _BENCH not in sys.path:
    sys.path.insert(0, _BENCH)
