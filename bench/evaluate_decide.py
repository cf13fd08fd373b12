"""Userspace policy decisions per second: ``Evaluator.decide`` with the example policies.

    python bench/evaluate_decide.py [--n 20000]

What the agent pays per event it judges in Python (an exec, an open in a marked directory, a
connect judged after the fact), with a warm Evaluator (the same binaries and paths again, as
on a real host). Numbers only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.policy.check import check  # noqa: E402
from agent.policy.evaluate import Evaluator, Process, Request  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20000)
    args = p.parse_args()
    evaluator = Evaluator(check([REPO / "policies"]).compiled)
    who = Process(exe="/usr/bin/bash", uid=0, gid=0, ancestors=("/usr/sbin/sshd", "/usr/bin/bash"))
    for request in (
        Request("exec", who, path="/usr/bin/true"),
        Request("open", who, path="/etc/hostname", access=("read",)),
        Request("connect", who, address="127.0.0.1", port=9, protocol="udp"),
    ):
        evaluator.decide(request)
        started = time.perf_counter()
        for _ in range(args.n):
            evaluator.decide(request)
        took = (time.perf_counter() - started) / args.n
        print(f"{request.operation:8s} {took * 1e6:6.1f} us/decide", flush=True)


if __name__ == "__main__":
    main()
