"""The .deb under real systemd: install, READY, enforcement, reload, restarts, faults, purge.

One container for the module; the tests run in file order and each starts from the state the
previous one left (installed, running, ...). Numbers are printed, never asserted (a 2-core CI
machine): the agent's start to READY, its RSS at idle, the units' `systemd-analyze security`.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.packaging.container import REPO_INSIDE, Container
from tests.packaging.steps import (
    AGENT,
    COLLECTOR,
    CONNECT_RULE,
    FORBIDDEN_BIN,
    JOURNAL,
    POLICY,
    PORT,
    PUB,
    SECRET,
    TEST_POLICY,
    attempt,
    install,
    journal_verifies,
    set_mode,
    wait_state,
)  # fmt: skip

# What changes on any running Debian whatever is installed, and dpkg's and apt's own records.
VOLATILE = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/var/log", "/var/cache",
            "/var/lib/apt", "/var/lib/dpkg", "/var/lib/systemd", "/root", REPO_INSIDE)  # fmt: skip
# The collector's system user stays after purge (Debian practice: files it owned may remain);
# systemd-sysusers keeps a backup of each file it changed.
USER_DB_BACKUPS = {"/etc/passwd-", "/etc/group-", "/etc/shadow-", "/etc/gshadow-"}

pytestmark = pytest.mark.slow
_before: set[str] = set()


def file_list(ct: Container) -> set[str]:
    prune = " -o ".join(f"-path {p}" for p in VOLATILE)
    out = ct.sh(f"find / -xdev \\( {prune} \\) -prune -o -print")
    return set(out.split("\n")) - {""}


# ---- install ----
def test_install_starts_the_agent_ready(container: Container, deb: Path) -> None:
    _before.update(file_list(container))
    install(container, deb)
    assert container.unit(AGENT, "ActiveState") == "active"
    assert container.unit(AGENT, "UnitFileState") == "enabled"
    assert container.unit(AGENT, "NRestarts") == "0"
    status = container.unit(AGENT, "StatusText")
    assert status, "READY=1 came without a STATUS="
    start = int(container.unit(AGENT, "ExecMainStartTimestampMonotonic"))
    ready = int(container.unit(AGENT, "ActiveEnterTimestampMonotonic"))
    print(f"\npackaging: agent start to READY {(ready - start) / 1e6:.2f} s; STATUS={status}")
    # The genesis key from postinst, private parts 0600 in a 0700 directory.
    modes = container.sh("stat -c '%a %n' /etc/sealtrail/keys /etc/sealtrail/keys/*")
    for line in modes.splitlines():
        mode, name = line.split(" ", 1)
        want = {"/etc/sealtrail/keys": "700", PUB: "644"}.get(name, "600")
        assert mode == want or (name == PUB and mode == "600"), line
    # The collector is another role: installed, not enabled.
    assert container.unit(COLLECTOR, "UnitFileState") == "disabled"


def test_units_verify_and_their_exposure(container: Container) -> None:
    units = [f"/lib/systemd/system/{u}" for u in (AGENT, COLLECTOR)]
    verify = container.run("systemd-analyze", "verify", *units, check=False)
    assert verify.returncode == 0, verify.stderr
    for unit in (AGENT, COLLECTOR):
        out = container.run("systemd-analyze", "security", "--no-pager", unit).stdout
        score = re.search(r"Overall exposure level for \S+: (\S+ \S+)", out)
        assert score is not None, out
        print(f"\npackaging: systemd-analyze security {unit}: {score.group(1)}")
    boot_log = container.run("journalctl", "-b", "--no-pager", "-o", "cat").stdout
    assert "ordering cycle" not in boot_log


def test_idle_rss(container: Container) -> None:
    time.sleep(3)
    pid = container.unit(AGENT, "MainPID")
    rss = container.sh(f"grep VmRSS /proc/{pid}/status").split()[1]
    print(f"\npackaging: agent RSS at idle {int(rss) / 1024:.0f} MiB")


# ---- enforcement under systemd, with every sandboxing directive of the unit ----
def test_the_baseline_switched_to_enforce_denies(container: Container) -> None:
    # privileged-ports, not tmp-exec or system-files: those kill after the fact what fanotify
    # misses, which in a container is every process of the host (see FORBIDDEN_BIN).
    assert attempt(container, "bind", "99") == "ALLOWED"  # monitor mode: recorded only
    set_mode(container, "privileged-ports", "enforce")
    container.run("systemctl", "reload", AGENT)  # returns once the agent enforces the new set
    assert attempt(container, "bind", "99") == "EPERM"
    assert attempt(container, "bind", "0") == "ALLOWED"  # port 0 is not privileged


def test_reload_swaps_the_policy_and_a_rejected_set_keeps_the_old(container: Container) -> None:
    container.sh(f"mkdir -p /srv/pkgtest/bin && echo s > {SECRET}")
    container.run("cp", "/usr/bin/touch", FORBIDDEN_BIN)
    assert attempt(container, "exec", FORBIDDEN_BIN) == "ALLOWED"
    container.run("rm", "/root/exec-ran")
    assert attempt(container, "open", SECRET) == "ALLOWED"
    assert attempt(container, "connect", str(PORT)) == "ECONNREFUSED"
    container.run("tee", TEST_POLICY, input=POLICY)
    container.run("systemctl", "reload", AGENT)
    assert attempt(container, "exec", FORBIDDEN_BIN) == "EPERM"
    assert container.run("test", "-e", "/root/exec-ran", check=False).returncode != 0
    assert attempt(container, "open", SECRET) == "EPERM"
    assert attempt(container, "connect", str(PORT)) == "EPERM"
    # Only the open rule left: the connect rule is gone from the kernel at once.
    container.run("tee", TEST_POLICY, input=POLICY.replace(CONNECT_RULE, ""))
    container.run("systemctl", "reload", AGENT)
    assert attempt(container, "connect", str(PORT)) == "ECONNREFUSED"
    assert attempt(container, "open", SECRET) == "EPERM"
    # A broken set: the reload fails and says why; what was enforced stays.
    container.run("tee", "/etc/sealtrail/policies/broken.toml", input='name = "broken"\nmode = 1\n')
    reload = container.run("systemctl", "reload", AGENT, check=False)
    assert reload.returncode != 0
    assert "broken.toml" in container.journal(AGENT)
    assert attempt(container, "open", SECRET) == "EPERM"
    container.run("rm", "/etc/sealtrail/policies/broken.toml")
    container.run("tee", TEST_POLICY, input=POLICY)
    container.run("systemctl", "reload", AGENT)
    assert container.unit(AGENT, "ActiveState") == "active"


# One kind of forbidden action in a tight loop, each attempt in a child process. An attempt made
# while no agent runs waits in the kernel (the fanotify group is in systemd's fd store) for the
# next agent, seconds; one that waits longer than 20 s is "stuck": never answered. The counts
# are written after every attempt.
LOOP = r"""
import json, subprocess, sys, time
kind, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
action = {
    "exec": ["/srv/pkgtest/bin/touch", "/root/loop-exec-ran"],
    "open": ["cat", "/srv/pkgtest/secret"],
    "connect": ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 4242))"],
}[kind]
counts = {"tried": 0, "succeeded": 0, "refused": 0, "stuck": 0}
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        proc = subprocess.run(action, capture_output=True, text=True, timeout=20)
        if proc.returncode == 0:
            counts["succeeded"] += 1
        elif "ConnectionRefused" in proc.stderr:
            counts["refused"] += 1  # it reached the port: not denied
    except subprocess.TimeoutExpired:
        counts["stuck"] += 1
    except OSError:
        pass  # the exec itself was denied (EPERM)
    counts["tried"] += 1
    with open(out + ".tmp", "w") as f:
        json.dump(counts, f)
    subprocess.run(["mv", out + ".tmp", out])
"""
KINDS = ("exec", "open", "connect")


def test_kill_restarts_and_nothing_forbidden_gets_through(container: Container) -> None:
    container.run("tee", "/root/loop.py", input=LOOP)
    for kind in KINDS:
        container.run("systemd-run", "--quiet", f"--unit=pkgtest-loop-{kind}", "--collect",
                      "python3", "/root/loop.py", kind, "10", f"/run/loop-{kind}.json")  # fmt: skip
    # The package's private interpreter lets the agent keep its fanotify group through a restart.
    status = json.loads(container.sh("cat /run/sealtrail/status.json"))
    assert status.get("fanotify_restart") == "held", status.get("fanotify_restart")
    time.sleep(2)
    pid = container.unit(AGENT, "MainPID")
    container.run("systemctl", "kill", "-s", "KILL", AGENT)
    t0 = time.monotonic()
    while container.unit(AGENT, "MainPID") in ("0", pid) or (
        container.unit(AGENT, "ActiveState") != "active"
    ):
        assert time.monotonic() < t0 + 30, container.journal(AGENT)[-3000:]
        time.sleep(0.05)
    back = time.monotonic() - t0
    assert container.unit(AGENT, "NRestarts") == "1"
    for kind in KINDS:  # a loop whose last attempt is stuck is ended: stuck is counted
        unit = f"pkgtest-loop-{kind}"
        if wait_state(container, unit, {"inactive", "failed"}, timeout=30) == "active":
            container.run("systemctl", "kill", "-s", "KILL", unit, check=False)
    counts = {kind: json.loads(container.sh(f"cat /run/loop-{kind}.json")) for kind in KINDS}
    print(f"\npackaging: SIGKILL to READY again {back:.2f} s; forbidden attempts: {counts}")
    for kind in KINDS:
        assert counts[kind]["succeeded"] == 0, counts
        assert counts[kind]["refused"] == 0, counts
    assert container.run("test", "-e", "/root/loop-exec-ran", check=False).returncode != 0
    out = journal_verifies(container)
    print(f"packaging: journal verify across the restart: {out.strip().splitlines()[-1]}")
    assert "1 unclean stops recovered" in out, out
    for kind in KINDS:
        assert counts[kind]["stuck"] == 0, counts


HANG = "/run/pkgtest-hang"
DROP_IN = "/run/systemd/system/sealtrail-agent.service.d/pkgtest-watchdog.conf"


def test_the_watchdog_restarts_a_hung_agent(container: Container) -> None:
    # The agent's test hook hangs its main loop while HANG exists; a shorter watchdog than the
    # shipped 30 s (and its abort) keeps the test short: what is tested is the wiring.
    container.run("mkdir", "-p", str(Path(DROP_IN).parent))
    container.run("tee", DROP_IN, input=f"[Service]\nEnvironment=SEALTRAIL_TEST_HANG_FILE={HANG}\n"
                  "WatchdogSec=3\nTimeoutAbortSec=2\n")  # fmt: skip
    container.run("systemctl", "daemon-reload")
    container.run("systemctl", "restart", AGENT)
    restarts = int(container.unit(AGENT, "NRestarts"))
    since = container.sh("date '+%Y-%m-%d %H:%M:%S'").strip()
    container.run("touch", HANG)
    deadline = time.monotonic() + 30
    while "Watchdog timeout" not in (log := container.journal(AGENT, since)):
        assert time.monotonic() < deadline, log
        time.sleep(0.2)
    container.run("rm", HANG)  # before the restarted agent reaches its loop (RestartSec=1)
    assert wait_state(container, AGENT, {"active", "failed"}) == "active"
    assert int(container.unit(AGENT, "NRestarts")) == restarts + 1
    assert "the main loop hangs (test hook)" in log
    assert attempt(container, "exec", FORBIDDEN_BIN) == "EPERM"
    container.run("rm", DROP_IN)
    container.run("systemctl", "daemon-reload")
    container.run("systemctl", "restart", AGENT)
    assert container.unit(AGENT, "WatchdogUSec") == "30s"


# ---- faults: the unit does not start, and says why ----
def fails_to_start_saying(ct: Container, *needles: str) -> str:
    """Restart the agent, expect it to fail; stop its restart loop; the log of the attempt."""
    since = ct.sh("date '+%Y-%m-%d %H:%M:%S'").strip()
    time.sleep(1)  # --since has a resolution of seconds
    ct.run("systemctl", "restart", AGENT, check=False)
    deadline = time.monotonic() + 30
    while not all(n in (log := ct.journal(AGENT, since)) for n in needles):
        assert time.monotonic() < deadline, log
        time.sleep(0.2)
    ct.run("systemctl", "stop", AGENT)
    ct.run("systemctl", "reset-failed", AGENT, check=False)
    return log


def start_again(ct: Container) -> None:
    ct.run("systemctl", "start", AGENT)
    assert ct.unit(AGENT, "ActiveState") == "active"


def test_a_broken_agent_toml_names_file_and_line(container: Container) -> None:
    config = "/etc/sealtrail/agent.toml"
    original = container.sh(f"cat {config}")
    line = len(original.splitlines()) + 1
    container.run("tee", "-a", config, input='heartbeat_seconds = "often"\n')
    try:
        log = fails_to_start_saying(container, "agent.toml", "heartbeat_seconds")
        assert re.search(rf"agent\.toml\S*:? (line )?{line}\b", log), log
    finally:
        container.run("tee", config, input=original)
    start_again(container)


def test_a_key_others_can_read_is_refused_with_the_reason(container: Container) -> None:
    keys = container.sh("ls /etc/sealtrail/keys").split()
    private = [k for k in keys if k != "journal.pub"]
    assert private, keys
    key = f"/etc/sealtrail/keys/{private[0]}"
    container.run("chmod", "0644", key)
    try:
        log = fails_to_start_saying(container, private[0], "chmod 600")
        refusal = next(x for x in log.splitlines() if "chmod 600" in x)
        print(f"\npackaging: refused: {refusal}")
    finally:
        container.run("chmod", "0600", key)
    start_again(container)


# ---- the collector, as its own user, receiving this host's journal ----
COLLECTOR_DIR = "/var/lib/sealtrail-collector"
AS_COLLECTOR = ("runuser", "-u", "sealtrail-collector", "--")


def collector_size(ct: Container, host: str) -> int:
    out = ct.run(*AS_COLLECTOR, "sealtrail", "collector", "hosts", "--dir", COLLECTOR_DIR).stdout
    sizes = [int(line.split()[1]) for line in out.splitlines() if line.split()[:1] == [host]]
    return sizes[0] if sizes else 0


def test_the_collector_runs_as_its_own_user_and_accepts_the_agent(container: Container) -> None:
    collector = ("sealtrail", "collector")
    container.run(*AS_COLLECTOR, *collector, "init", "--dir", COLLECTOR_DIR,
                  "--listen", "127.0.0.1:8443")  # fmt: skip
    host = container.sh("cat /proc/sys/kernel/hostname").strip()
    bundle = f"{COLLECTOR_DIR}/enrolled/{host}"
    container.run("install", "-m", "0644", PUB, "/tmp/host.pub")
    container.run(*AS_COLLECTOR, *collector, "enroll", "--dir", COLLECTOR_DIR, "--host", host,
                  "--journal-key", "/tmp/host.pub", "--out", bundle)  # fmt: skip
    # The bundle goes to the host (here the same machine) and leaves the collector.
    forward = "/etc/sealtrail/forward"
    container.sh(f"cp -r {bundle} {forward} && chown -R root:root {forward}"
                 f" && rm -rf {COLLECTOR_DIR}/enrolled /tmp/host.pub")  # fmt: skip
    container.run("systemctl", "start", COLLECTOR)
    assert wait_state(container, COLLECTOR, {"active", "failed"}) == "active"
    pid = container.unit(COLLECTOR, "MainPID")
    assert container.sh(f"ps -o user= -p {pid}").strip() == "sealtrail-collector"
    assert container.sh(f"grep CapEff /proc/{pid}/status").split()[1] == "0000000000000000"
    config = "/etc/sealtrail/agent.toml"
    forwarding = f'\n[forward]\nurl = "https://127.0.0.1:8443"\ntls = "{forward}"\n'
    container.run("tee", "-a", config, input=forwarding)
    container.run("systemctl", "restart", AGENT)
    deadline = time.monotonic() + 60
    while (size := collector_size(container, host)) == 0:
        assert time.monotonic() < deadline, container.journal(COLLECTOR) + container.journal(AGENT)
        time.sleep(0.5)
    print(f"\npackaging: the collector holds {size} records of {host}")
    status = container.run("sealtrail", "status").stdout
    assert "127.0.0.1:8443" in status, status


# ---- stop, purge ----
def test_stop_is_clean_and_the_journal_ends_sealed(container: Container) -> None:
    container.run("systemctl", "stop", AGENT)
    assert container.unit(AGENT, "ActiveState") == "inactive"
    assert container.unit(AGENT, "Result") == "success"
    journal_verifies(container, strict=True)
    container.run("systemctl", "start", AGENT)
    assert wait_state(container, AGENT, {"active", "failed"}) == "active"


def test_purge_keeps_only_the_evidence(container: Container) -> None:
    container.run("rm", "-rf", "/srv/pkgtest")  # the test's own files (its policy is config)
    container.run("apt-get", "purge", "-y", "-q", "sealtrail")
    after = file_list(container)
    evidence = (JOURNAL, "/etc/sealtrail/keys", COLLECTOR_DIR)
    kept = {p for p in after - _before if p.startswith(evidence)}
    assert kept, "the journal and keys are evidence: purge keeps them"
    assert after - _before - kept - USER_DB_BACKUPS == {"/var/lib/sealtrail", "/etc/sealtrail"}
    assert _before - after == set()
    assert container.run("test", "-e", "/sys/fs/bpf/sealtrail", check=False).returncode != 0


def test_purge_with_evidence_leaves_the_system_as_it_was(container: Container, deb: Path) -> None:
    install(container, deb)  # the kept key is taken up again: the same journal goes on
    journal_verifies(container)
    container.run("env", "SEALTRAIL_PURGE_EVIDENCE=1", "apt-get", "purge", "-y", "-q", "sealtrail")
    after = file_list(container)
    assert after - _before - USER_DB_BACKUPS == set()
    assert _before - after == set()
