"""Starting a real `sealtrail agent` from a test, tied to the test's life.

The agent holds fanotify marks and BPF hooks; if the test runner dies (a kill rule, a timeout),
an orphaned agent would keep enforcing on the machine. PR_SET_PDEATHSIG makes the kernel send
it SIGTERM when the runner exits, whatever way it exits.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def start_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "agent", *args],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent,
        env=env,
    )
