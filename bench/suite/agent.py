"""The real `sealtrail agent` as a user runs it (``.venv/bin/sealtrail agent``), with a journal,
keys, run and pin directory of its own, the guard on the benchmark's cgroup; and the policy
directories of the configurations the comparison runs."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import policy_overhead
from benchlib import BPF_CFLAGS, OUT_DIR, REPO
from fanotify_overhead import confine

from agent.journal import protect
from tests.agentproc import end_process

SEALTRAIL = REPO / ".venv" / "bin" / "sealtrail"
SNAPSHOTS = OUT_DIR / "suite-src"
#: where the agent's code and the example policies come from: the working tree, or a snapshot
#: of a commit (``snapshot``), which the agents and CLIs get first on their PYTHONPATH
SRC = REPO
#: bench agents pin below here, never in the machine's /sys/fs/bpf/sealtrail
PIN_ROOT = Path("/sys/fs/bpf/sealtrail-bench")
DEFAULT_PINS = Path("/sys/fs/bpf/sealtrail")
START_TIMEOUT = 90.0
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG: no agent outlives the bench


def snapshot(rev: str = "HEAD") -> Path:
    """``git archive`` of the agent, its native core, the probes and the policies as committed
    at ``rev``, with the native core built (the Makefile's flags less -Werror), in
    build/bench/suite-src/COMMIT: the agent that is measured is a commit's, even while other
    engineers edit agent/ in the working tree (a half-saved module would fail a run)."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", rev], check=True,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    dest = SNAPSHOTS / commit[:12]
    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    paths = ["agent", "native", "probes", "policies"]
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, *paths], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    lib = dest / "agent" / "native" / "lib" / "libsealtrail.so"
    lib.parent.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p.relative_to(dest)) for p in (dest / "native").glob("*.c"))
    subprocess.run(["gcc", "-O2", "-g", "-fPIC", "-shared", "-Wall", "-Wno-deprecated-declarations",
                    *sources, "-o", str(lib), "-lcrypto"], check=True, cwd=dest)  # fmt: skip
    obj = dest / "agent" / "kernel" / "obj"  # where the snapshot's agent looks for its probes
    obj.mkdir(parents=True, exist_ok=True)
    for src in sorted((dest / "probes").glob("*.bpf.c")):
        subprocess.run(["clang", *BPF_CFLAGS, f"-I{REPO / 'build'}", f"-I{dest / 'probes'}",
                        "-c", str(src), "-o", str(obj / src.name.replace(".bpf.c", ".bpf.o"))],
                       check=True)  # fmt: skip
    (dest / ".complete").write_text(commit + "\n")
    return dest


def snapshot_probes() -> dict[str, str]:
    """benchlib.prepare's ``build``: the snapshot of HEAD with its own probes (not the shared
    build/bench/obj another benchmark may be rebuilding), recorded like build_probes does."""
    global SRC
    SRC = snapshot()
    os.environ.pop("SEALTRAIL_BPF_DIR", None)  # the snapshot's agent/kernel/obj
    os.environ["PYTHONPATH"] = str(SRC)  # every agent and CLI below runs the commit's code
    info = {"probes_commit": (SRC / ".complete").read_text().strip()}
    for o in sorted((SRC / "agent" / "kernel" / "obj").glob("*.bpf.o")):
        info[o.name] = hashlib.sha256(o.read_bytes()).hexdigest()[:16]
    return info


def policy_dirs(work: Path, cgroup: Path) -> dict[str, Path]:
    """The sealtrail configurations' policy directories:

    monitor   the example policies (policies/*.toml) with every ``mode`` set to monitor
    enforce   the example policies as shipped, each enforcing exec/open rule without a subject
              limited to the bench cgroup (fanotify_overhead.confine: same marks, same
              decisions for every process, but only the bench's own are denied)
    rules1000 policy_overhead's 1,000 generated rules (connect, bind, open, exec; everything
              they target was made by the benchmark)
    """
    files = sorted((SRC / "policies").glob("*.toml"))
    out = {}
    for name in ("monitor", "enforce", "rules1000"):
        out[name] = work / "policies" / name
        out[name].mkdir(parents=True)
    for f in files:
        text = f.read_text()
        (out["monitor"] / f.name).write_text(text.replace('mode = "enforce"', 'mode = "monitor"'))
        (out["enforce"] / f.name).write_text(confine(text, "/" + cgroup.name)[0])
    policy_overhead.prepare()
    for name, text in policy_overhead.policy_files(1000).items():
        (out["rules1000"] / name).write_text(text)
    return out


class Agent:
    """One run of the agent. ``start`` returns once RUN/status.json says the policies are
    loaded (``start_s``: exec to that moment), ``stop`` ends it (SIGTERM, by pid), unpins what it
    pinned and clears the journal's append-only flags."""

    _serial = 0

    def __init__(self, work: Path, policies: Path, cgroup: Path, *extra: str) -> None:
        Agent._serial += 1
        self.state = work / f"agent-{Agent._serial}"
        self.journal, self.keys = self.state / "journal", self.state / "keys"
        self.run_dir = self.state / "run"
        self.pin_dir = PIN_ROOT / f"{os.getpid()}-{Agent._serial}"
        self.cmd = [
            str(SEALTRAIL), "agent", "--policies", str(policies), "--journal", str(self.journal),
            "--keys", str(self.keys), "--run-dir", str(self.run_dir), "--pin-dir",
            str(self.pin_dir), "--cgroup", str(cgroup), *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.status: dict[str, Any] = {}
        self.start_s = 0.0

    def start(self, cpu: int | None = None) -> Agent:
        self.state.mkdir(parents=True, exist_ok=True)  # keys may have been made first
        wait_default_pins_gone()

        def child() -> None:
            _die_with_parent()
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        t0 = time.monotonic()
        with (self.state / "stderr").open("wb") as err:
            self.proc = subprocess.Popen(
                self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                preexec_fn=child,
            )  # fmt: skip
        status_file = self.run_dir / "status.json"
        while time.monotonic() - t0 < START_TIMEOUT:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"agent exited {self.proc.returncode}: {self.log()[-3000:]}")
            with contextlib.suppress(OSError, ValueError):
                self.status = json.loads(status_file.read_text())
                if self.status.get("result") in ("loaded", "mismatch"):
                    self.start_s = time.monotonic() - t0
                    return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"agent not loaded after {START_TIMEOUT:.0f} s: {self.log()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        path = self.state / "stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> int | None:
        from agent.kernel.pins import unpin

        try:
            if self.proc is not None:
                end_process(self.proc, signal.SIGTERM, 60)
        finally:
            unpin(self.pin_dir)
            with contextlib.suppress(OSError):
                PIN_ROOT.rmdir()  # when no other bench run uses it
            if self.journal.exists():
                protect.clear_all(self.journal)
        return self.proc.returncode if self.proc else None

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def wait_default_pins_gone(limit: float = 120.0) -> None:
    """An agent refuses to start while a guard is pinned in the machine's default directory
    (it would go on enforcing unseen): another session's agent that pinned there must be
    gone (its pins detached) first. Wait up to ``limit`` s, then say who is in the way."""
    deadline = time.monotonic() + limit
    while (DEFAULT_PINS / "guard").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{DEFAULT_PINS}: a guard is pinned there (not by this "
                               f"benchmark) since {limit:.0f} s; no agent can start")  # fmt: skip
        time.sleep(1)


def rss_kib(pid: int) -> int:
    """VmRSS of a process (its threads share it), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
