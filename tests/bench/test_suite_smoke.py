"""`make bench-smoke` inside `make test`: the comparison harness runs every configuration once
with tiny counts (the real agent, the real auditd, journald's real FSS tools), and produces
the report, the charts and the JSON with a number in every row. Nothing here is about speed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def audit_settings() -> dict[str, str]:
    """What `auditctl -s` says that can be set (the lost and wait counters only grow)."""
    out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
    keep = ("enabled", "failure", "pid", "rate_limit", "backlog_limit", "backlog_wait_time")
    return {k: v for k, _, v in (ln.partition(" ") for ln in out.splitlines()) if k in keep}


def test_smoke_run_writes_report_charts_and_numbers(tmp_path: Path) -> None:
    for tool in ("auditd", "auditctl", "/lib/systemd/systemd-journal-remote"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} missing (make bench-smoke installs it)")
    audit_before = audit_settings()
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "bench.suite", "--smoke", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]

    res = json.loads((out / "smoke.json").read_text())
    ov = res["overhead"]
    configs = ("none", "monitor", "enforce", "rules1000", "auditd")
    assert {r["workload"] for r in ov["rows"]} == set(ov["workloads"]) and len(ov["rows"]) == 7
    for row in ov["rows"]:
        for c in configs:
            assert isinstance(row["configs"][c]["median"], float), (row["workload"], c)
    kinds = {
        (r["who"], r["offered_rate"], r.get("ringbuf_bytes")) for r in res["throughput"]["runs"]
    }
    assert ("sealtrail", None, 64 << 10) in kinds and ("auditd", 10000.0, None) in kinds
    for r in res["throughput"]["runs"]:
        assert r["produced"] > 0 and isinstance(r["unaccounted"], int)
        if r["who"] == "sealtrail":
            assert r["verify"]["rc"] == 0, r["verify"]  # the sealed journal verifies
            assert r["recorded"] + r["lost"] > 0
        if r["who"] == "sealtrail+collector":  # the loopback collector holds the whole journal
            assert r["collector_holds_journal"], r
    ev = res["evidence"]
    assert ev["sealtrail"]["verify_rc"] == 0
    assert ev["journald"].get("verify_rc") == 0, ev["journald"]  # FSS set up and verified
    assert ev["journald"]["sealed"] and ev["journald"]["entries"] == ev["records"]
    assert res["throughput"]["start_to_enforce"][0]["to_first_deny_s"] > 0

    md = (out / "report.md").read_text()
    for png in ("overhead.png", "throughput.png", "evidence.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and "recorded by" not in ln]
    for wl in ov["workloads"]:
        line = next(ln for ln in table if ln.startswith(f"| {wl} |"))
        assert len(re.findall(r"[+-][\d,.]+ (?:ns|µs|ms) \(", line)) == 4, line  # every column
    # the machine as found: auditd stopped, no rules, the audit settings back
    assert subprocess.run(["auditctl", "-l"], capture_output=True, text=True).stdout.strip() == (
        "No rules"
    )
    assert audit_settings() == audit_before
    assert not Path("/sys/fs/bpf/sealtrail-bench").exists()
