"""The .deb under real systemd: install, READY, enforcement, reload, restarts, faults, purge.

One container for the module; the tests run in file order and each starts from the state the
previous one left (installed, running, ...). Numbers are printed, never asserted (a 2-core CI
machine): the agent's start to READY, its RSS at idle, the units' `systemd-analyze security`.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests.packaging.container import REPO_INSIDE, Container

AGENT = "sealtrail-agent.service"
COLLECTOR = "sealtrail-collector.service"
INSTALL = f"{REPO_INSIDE}/packaging/install.sh"
PUB = "/etc/sealtrail/keys/journal.pub"
JOURNAL = "/var/lib/sealtrail/journal"
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


def wait_state(ct: Container, unit: str, wanted: set[str], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = ct.run("systemctl", "is-active", unit, check=False).stdout.strip()
        if state in wanted or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def install(ct: Container, deb: Path) -> None:
    shutil.copy(deb, ct.root / "root" / "sealtrail.deb")
    ct.run("sh", INSTALL, "/root/sealtrail.deb")


def journal_verifies(ct: Container, strict: bool = False) -> str:
    args = ["sealtrail", "journal", "verify", "--journal", JOURNAL, "--key", PUB]
    return ct.run(*args, *(["--strict"] if strict else [])).stdout


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


# ---- stop, purge ----
def test_stop_is_clean_and_the_journal_ends_sealed(container: Container) -> None:
    container.run("systemctl", "stop", AGENT)
    assert container.unit(AGENT, "ActiveState") == "inactive"
    assert container.unit(AGENT, "Result") == "success"
    journal_verifies(container, strict=True)
    container.run("systemctl", "start", AGENT)
    assert wait_state(container, AGENT, {"active", "failed"}) == "active"


def test_purge_keeps_only_the_evidence(container: Container) -> None:
    container.run("apt-get", "purge", "-y", "-q", "sealtrail")
    after = file_list(container)
    kept = {p for p in after - _before if p.startswith((JOURNAL, "/etc/sealtrail/keys"))}
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
