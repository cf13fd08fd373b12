"""``sealtrail doctor`` on the real kernel: capabilities found by loading, JSON shape, exit code.

The development kernel (Firecracker, release ``*-fc-*``) refuses every trampoline program with
EPERM; on any other kernel the same tests check that the report is self-consistent.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.kernel import host, probe
from agent.kernel.host import HostReport, probe_host

pytestmark = pytest.mark.kernel

DEV_KERNEL = "-fc-" in os.uname().release  # refuses lsm/ and fentry/ programs (DESIGN.md 2)
# Set by the stock-kernel VM (tests/vm/guest.sh): there BPF-LSM MUST load (asserted, not skipped).
EXPECT_LSM = os.environ.get("SEALTRAIL_EXPECT_LSM") == "1"
TRAMPOLINE_EPERM = "EPERM on load: the kernel refuses trampoline programs"


@pytest.fixture(scope="module")
def report() -> HostReport:
    return probe_host()


def _sealtrail(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=30,
    )


def test_required_capabilities_present(report: HostReport) -> None:
    for name in ("btf", "tracefs", "tracepoints", "tp_btf", "ringbuf", "send_signal"):
        assert report.checks[name].ok, f"{name}: {report.checks[name]}"
    assert report.can_run
    assert report.plan.events == ("tracepoints", "tp_btf")
    assert report.plan.enforcement["kill"] == "bpf_send_signal"


def test_trampolines_refused_with_eperm(report: HostReport) -> None:
    lsm, fentry = report.checks["bpf_lsm"], report.checks["fentry"]
    if EXPECT_LSM:
        assert lsm.ok, f"BPF-LSM must load on this kernel: {lsm}"
        assert fentry.ok, f"fentry must load on this kernel: {fentry}"
    if EXPECT_LSM or (not DEV_KERNEL and lsm.ok):
        assert report.plan.enforcement["open"] == "lsm"
        return
    for name, check in (("doctor_lsm", lsm), ("doctor_fentry", fentry)):
        assert not check.ok
        assert check.errno == errno.EPERM
        assert check.detail.startswith(TRAMPOLINE_EPERM)
        assert check.log is not None and f"'{name}'" in check.log
    assert report.plan.enforcement["open"] == "fanotify"
    assert report.plan.enforcement["unlink"] == "none"
    assert report.plan.enforcement["network"] == "cgroup-sock"
    assert report.plan.survives_agent  # the cgroup hooks are pinned
    assert any("fanotify enforcement (exec, open) outlives the agent only under systemd" in note
               for note in report.plan.notes)  # fmt: skip


def test_cgroup2_is_what_proc_mounts_says(report: HostReport) -> None:
    entries = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    cgroup2 = [fields[1] for fields in entries if fields[2] == "cgroup2"]
    assert report.cgroup2_path in cgroup2
    assert report.checks["cgroup2"].ok


def test_probe_is_fast_and_leaves_nothing_loaded() -> None:
    start = time.perf_counter()
    probe_host()
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"probe_host took {elapsed:.3f} s"
    # Links are released by RCU callbacks a few ms after close: poll briefly.
    deadline = time.monotonic() + 2
    while (leftovers := _doctor_programs()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert leftovers == []


def _doctor_programs() -> list[str]:
    shown = subprocess.run(
        ["bpftool", "-j", "prog", "show"], check=True, capture_output=True, text=True
    ).stdout
    return [p["name"] for p in json.loads(shown) if p.get("name", "").startswith("doctor_")]


def test_json_schema_is_stable() -> None:
    done = _sealtrail("doctor", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert set(doc) == {"schema_version", "can_run", "host", "checks", "plan", "elapsed_ms"}
    assert doc["schema_version"] == 1
    assert doc["can_run"] is True
    assert set(doc["host"]) == {
        "kernel_release",
        "kernel_version",
        "machine",
        "libbpf_version",
        "btf_path",
        "cgroup2_path",
        "tracefs_path",
        "securityfs",
        "lockdown",
        "lsm_list",
    }
    assert list(doc["checks"]) == list(probe.CHECKS)
    for check in doc["checks"].values():
        assert set(check) == {"ok", "detail", "errno", "log"}
    assert set(doc["plan"]) == {"events", "enforcement", "survives_agent", "notes"}
    assert list(doc["plan"]["enforcement"]) == list(host.OPERATIONS)
    assert doc["host"]["kernel_release"] == os.uname().release


def test_table_output_and_exit_code() -> None:
    done = _sealtrail("doctor")
    assert done.returncode == 0, done.stderr
    assert "agent can run: yes" in done.stdout
    if DEV_KERNEL:
        assert f"✗ BPF-LSM           {TRAMPOLINE_EPERM} (errno 1)" in done.stdout


def test_exit_code_1_when_the_agent_cannot_run(tmp_path: Path) -> None:
    # No doctor object: the BPF checks fail, each with its own reason, the others still run.
    done = _sealtrail("doctor", "--json", env={"SEALTRAIL_BPF_DIR": str(tmp_path)})
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["can_run"] is False
    assert "compiled probe missing" in doc["checks"]["tracepoints"]["detail"]
    assert doc["checks"]["btf"]["ok"] and doc["checks"]["ringbuf"]["ok"]
    assert doc["checks"]["fanotify_perm"]["ok"]
