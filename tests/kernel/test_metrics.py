"""Kernel e2e: the real `sealtrail agent --metrics` on this kernel, scraped over HTTP; what it
says equals what the journal holds.

The agent records nothing by default here (``--record ""``): the only events are the opens of
files under a directory this test created, which its policy watches (an audit rule) and one of
which it denies (fanotify or BPF-LSM), so every event and verdict in the journal is the test's
own and the counts can be compared exactly once the journal is quiet.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.enforce.guard import cgroup2_root
from tests.agentproc import agent_log, journal_records, start_agent, stop_agent

pytestmark = pytest.mark.kernel
SLOW = 10 if os.environ.get("SEALTRAIL_VM") else 1

POLICY = """
name = "metrics-test"
description = "opens below a directory the test made: watched, one file denied"
mode = "enforce"

[[rules]]
id = "no-secret-write"
description = "the secret is never written"
operation = "open"
access = ["write"]
targets.paths = ["{work}/secret"]
action = "deny"
fallback = "kill"

[[rules]]
id = "watch-notes"
description = "every open below notes/"
operation = "open"
targets.paths = ["{work}/notes/"]
action = "audit"
"""

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def from_journal(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the metrics should say, counted in the journal."""
    kinds = Counter(r["kind"] for r in records if r["type"] == "event")
    verdicts = Counter((r["action"], r["rule"]) for r in records if r["type"] == "verdict")
    return {
        "events": {(("kind", k),): float(n) for k, n in kinds.items()},
        "verdicts": {(("action", a), ("rule", r)): float(n) for (a, r), n in verdicts.items()},
        "seq": float(records[-1]["seq"]),
    }


def test_scraped_metrics_match_the_journal(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "notes").mkdir(parents=True)
    (work / "secret").write_text("s\n")
    for i in range(3):
        (work / "notes" / f"n{i}").write_text("x\n")
    policies, journal, run = tmp_path / "policies", tmp_path / "journal", tmp_path / "run"
    policies.mkdir()
    (policies / "m.toml").write_text(POLICY.format(work=work))
    cgroup = cgroup2_root() / f"sealtrail-metrics-{os.getpid()}"
    cgroup.mkdir()
    port = free_port()
    log = tmp_path / "agent.log"
    agent = start_agent(
        "--journal", str(journal), "--keys", str(tmp_path / "keys"), "--policies",
        str(policies), "--run-dir", str(run), "--cgroup", str(cgroup), "--record", "",
        "--metrics", f"127.0.0.1:{port}", log=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30 * SLOW
        first: Samples | None = None
        loaded = run / "status.json"  # written once the policy load is journaled
        while first is None or "sealtrail_policy_info" not in first or not loaded.exists():
            assert agent.poll() is None, agent_log(agent, log)
            assert time.monotonic() < deadline, "the metrics endpoint never answered"
            time.sleep(0.1)
            try:
                first = scrape(port)
            except (urllib.error.URLError, ConnectionError):
                continue
        status = json.loads(loaded.read_text())
        assert status["result"] == "loaded", status

        for i in range(3):
            (work / "notes" / f"n{i}").read_text()
        denied = 0
        for _ in range(2):
            try:
                with open(work / "secret", "a") as f:
                    f.write("y")
            except PermissionError:
                denied += 1
        assert denied == 2

        # quiet: two scrapes alike with the journal read between them, and equal to it
        deadline = time.monotonic() + 20 * SLOW
        while True:
            before = scrape(port)
            # longer than the agent's poll (daemon.POLL_MS): a verdict the fanotify thread made
            # is journaled at the next poll, which then comes between the two scrapes
            time.sleep(0.2)
            records = journal_records(journal)
            after = scrape(port)
            want = from_journal(records)
            got = {
                "events": after.get("sealtrail_events_total", {}),
                "verdicts": after.get("sealtrail_verdicts_total", {}),
                "seq": after["sealtrail_journal_seq"][()],
            }
            quiet = before["sealtrail_journal_seq"] == after["sealtrail_journal_seq"]
            if quiet and got == want and want["verdicts"]:
                break
            assert time.monotonic() < deadline, (got, want)
            time.sleep(0.3)
        verdicts = want["verdicts"]
        assert verdicts[(("action", "deny"), ("rule", "no-secret-write"))] == 2
        assert verdicts[(("action", "audit"), ("rule", "watch-notes"))] >= 3
        assert want["events"][(("kind", "open"),)] >= 3
        loads = [r for r in records if r["type"] == "policy_loaded"]
        assert after["sealtrail_policy_info"] == {(("digest", loads[-1]["digest"]),): 1.0}
        assert after["sealtrail_policy_loads_total"] == {(("result", "loaded"),): 1.0}
        seals = [r for r in records if r["type"] == "seal"]
        assert after["sealtrail_journal_sealed_records"][()] == seals[-1]["seq"] + 1
        assert after["sealtrail_journal_writable"][()] == 1.0
        assert 0 <= after["sealtrail_journal_seconds_since_last_seal"][()] < 11 * SLOW
        drops = Counter[str]()
        for r in records:
            if r["type"] == "loss":
                drops.update(r["drops"])
        got_drops = after.get("sealtrail_kernel_drops_total", {})
        assert got_drops == {(("kind", k),): float(n) for k, n in drops.items()}
    finally:
        stop_agent(agent, 30 * SLOW, cgroup, journal)
