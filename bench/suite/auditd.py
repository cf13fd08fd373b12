"""auditd as the comparison: started by the benchmark with its own configuration and log in a
temporary directory, rules that record what sealtrail records by default, and everything put
back as it was found (daemon stopped, rules deleted, the kernel's audit settings restored).

The audit subsystem is machine-wide: while the daemon runs, every process's execs, connects,
binds, listens and accepts are recorded into our temporary log. Only the benchmark starts it,
only for its own samples, and ``finally`` stops it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import tomllib
from pathlib import Path

from tests.agentproc import end_process

#: the syscalls sealtrail records by default (``--record`` accept,bind,connect,exec,exit,listen:
#: exit is process lifecycle, which audit has no cheap rule for, so it is left out)
SYSCALL_RULES = (
    ("exec", "execve,execveat"),
    ("connect", "connect"),
    ("bind", "bind"),
    ("listen", "listen"),
    ("accept", "accept,accept4"),
)
#: Debian's /etc/audit/rules.d/audit.rules sets these; the benchmark uses the same
BACKLOG_LIMIT = 8192
BACKLOG_WAIT_MS = 60000

CONF = """\
local_events = yes
write_logs = yes
log_file = {log}
log_format = ENRICHED
flush = INCREMENTAL_ASYNC
freq = 50
max_log_file = 1024
num_logs = 2
max_log_file_action = IGNORE
space_left = 75
space_left_action = SYSLOG
admin_space_left = 50
admin_space_left_action = SYSLOG
disk_full_action = SYSLOG
disk_error_action = SYSLOG
priority_boost = 4
name_format = NONE
q_depth = 2000
overflow_action = SYSLOG
max_restarts = 10
plugin_dir = {plugins}
end_of_event_timeout = 2
"""


def status() -> dict[str, int]:
    """`auditctl -s` as numbers: enabled, failure, pid, rate_limit, backlog_limit, lost,
    backlog, backlog_wait_time..."""
    out = subprocess.run(["auditctl", "-s"], check=True, capture_output=True, text=True).stdout
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+) (\d+)", out, re.M)}


def watched_paths(policy_dir: Path) -> list[str]:
    """The paths the policies' file rules (open, rename, chmod, ...) name, as audit watches:
    a directory rule ("/boot/") watches the directory, a byte-prefix rule ("/etc/sudoers*")
    watches the file and its ".d" directory where they exist (audit has no prefix watch).
    Exec rules are covered by the execve rule (every exec is recorded)."""
    out: list[str] = []
    for f in sorted(policy_dir.glob("*.toml")):
        for rule in tomllib.loads(f.read_text()).get("rules", []):
            if rule.get("operation") in ("exec", "connect", "bind"):
                continue
            for p in rule.get("targets", {}).get("paths", []):
                base = p.rstrip("*").rstrip("/") or "/"
                cands = [base, base + ".d"] if p.endswith("*") else [base]
                out += [c for c in cands if os.path.exists(c) and c not in out]
    return out


def rules(policy_dir: Path) -> list[list[str]]:
    """auditctl argument lists: one syscall rule per operation, one watch per policy path."""
    out = [
        ["-a", "always,exit", "-F", "arch=b64", "-S", sc, "-k", f"st-{key}"]
        for key, sc in SYSCALL_RULES
    ]
    out += [["-w", p, "-p", "wa", "-k", "st-files"] for p in watched_paths(policy_dir)]
    return out


class Auditd:
    """Context manager: ``with Auditd(workdir, policy_dir) as a:`` runs auditd with the rules;
    on exit the daemon is stopped (SIGTERM, by its pid), the rules deleted (`auditctl -D`),
    and enabled/backlog_limit/backlog_wait_time put back to what `auditctl -s` said before."""

    def __init__(self, work: Path, policy_dir: Path) -> None:
        self.work, self.policy_dir = work, policy_dir
        self.log = work / "log" / "audit.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.before: dict[str, int] = {}
        self.rules = rules(policy_dir)

    def __enter__(self) -> Auditd:
        self.before = status()
        if self.before.get("pid"):
            raise RuntimeError(f"an audit daemon already runs (pid {self.before['pid']})")
        conf = self.work / "conf"
        for d in (conf, conf / "plugins.d", self.log.parent):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o750)
        (conf / "auditd.conf").write_text(CONF.format(log=self.log, plugins=conf / "plugins.d"))
        (conf / "auditd.conf").chmod(0o640)
        try:
            self.proc = subprocess.Popen(
                ["auditd", "-n", "-s", "enable", "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=(self.work / "auditd.stderr").open("wb"),
            )
            deadline = time.monotonic() + 10
            while status().get("pid") != self.proc.pid:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = (self.work / "auditd.stderr").read_text()[-2000:]
                    raise RuntimeError(f"auditd did not start: {err}")
                time.sleep(0.05)
            auditctl("-D")
            auditctl("-b", str(BACKLOG_LIMIT), "--backlog_wait_time", str(BACKLOG_WAIT_MS))
            for r in self.rules:
                auditctl(*r)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            if self.proc is not None:
                end_process(self.proc, signal.SIGTERM, 15)
        finally:
            auditctl("-D")
            b = self.before
            if b:
                auditctl("-e", str(b.get("enabled", 0)), "-b", str(b.get("backlog_limit", 64)),
                         "--backlog_wait_time", str(b.get("backlog_wait_time", 15000)))  # fmt: skip

    def records(self, pid: int, key: str) -> int:
        """SYSCALL records in our log of ``pid`` under the rule key ``st-<key>``."""
        needle = f" pid={pid} ".encode()
        tag = f'key="st-{key}"'.encode()
        n = 0
        if self.log.exists():
            with self.log.open("rb") as f:
                for line in f:
                    if line.startswith(b"type=SYSCALL") and needle in line and tag in line:
                        n += 1
        return n

    def log_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.log.parent.glob("audit.log*"))


def auditctl(*args: str) -> None:
    subprocess.run(["auditctl", *args], check=True, capture_output=True)
