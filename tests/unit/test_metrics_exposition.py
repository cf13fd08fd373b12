"""The agent's Prometheus endpoint (agent.metrics): the address rule, the config key, and the
exposition scraped over real HTTP from the real service loop (over the scripted stream of
tests/unit/daemon), its values compared with the journal at the moment of the scrape."""

from __future__ import annotations

import dataclasses
import signal
import socket
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import native
from agent.config import AgentSettings, load_settings
from agent.errors import ConfigError, SealtrailError, UsageError
from agent.events import model
from agent.forward.client import Answer
from agent.kernel.abi import Op
from agent.metrics import HELP, MetricsAddress
from tests.agentproc import journal_records
from tests.forward.fakes import FakeCollector
from tests.forward.test_daemon import with_forwarder
from tests.unit.daemon.fakes import ScriptedStream
from tests.unit.daemon.test_service import Service, send
from tests.unit.events.records import connect_record, exec_record


def test_loopback_is_the_default_and_anything_else_must_be_asked_for() -> None:
    assert MetricsAddress.parse("127.0.0.1:9464") == MetricsAddress("127.0.0.1", 9464)
    assert MetricsAddress.parse("9464") == MetricsAddress("127.0.0.1", 9464)
    assert str(MetricsAddress.parse("[::1]:9464")) == "[::1]:9464"
    for public in ("0.0.0.0:9464", "192.0.2.7:9464", "[::]:9464"):
        with pytest.raises(UsageError, match=r"not a loopback address.*--metrics-remote"):
            MetricsAddress.parse(public)
        assert MetricsAddress.parse(public, remote=True).port == 9464
    with pytest.raises(UsageError, match="must be an IP address"):
        MetricsAddress.parse("localhost:9464")
    with pytest.raises(UsageError, match="port must be a number"):
        MetricsAddress.parse("127.0.0.1:99999")


def test_the_config_key_and_the_flag(tmp_path: Path) -> None:
    assert AgentSettings().metrics_address() is None  # off by default
    path = tmp_path / "agent.toml"
    path.write_text('journal = "j"\nmetrics = "0.0.0.0:9464"\n')
    with pytest.raises(ConfigError, match=r"line 2: metrics: '0.0.0.0:9464' is not a loopback"):
        load_settings(path)
    path.write_text('metrics = "0.0.0.0:9464"\nmetrics_remote = true\n')
    assert load_settings(path).metrics_address() == MetricsAddress("0.0.0.0", 9464)
    flagged = AgentSettings().override({"metrics": "127.0.0.2:1"})
    assert flagged.metrics_address() == MetricsAddress("127.0.0.2", 1)
    with pytest.raises(UsageError, match=r"^--metrics: "):
        AgentSettings().override({"metrics": "10.1.1.1:1"})
    assert "\nmetrics_remote = false\n" in AgentSettings().to_toml()
    again = tmp_path / "again.toml"
    again.write_text(load_settings(path).to_toml())
    assert load_settings(again) == load_settings(path)


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def by_label(samples: list[tuple[dict[str, str], float]], *labels: str) -> dict[Any, float]:
    return {tuple(s[k] for k in labels) if len(labels) > 1 else s[labels[0]]: v
            for s, v in samples}  # fmt: skip


@pytest.mark.parametrize("batches", [False, True], ids=["python-path", "native-path"])
def test_scraped_values_are_the_journals(tmp_path: Path, batches: bool) -> None:
    if batches and not native.available():
        pytest.fail("the native core is not built (make native)")
    polls = [
        [exec_record(10, b"/bin/sh"), connect_record(10, 443), connect_record(11, 80)],
        [connect_record(12, 22, Op.BIND), exec_record(13, b"/bin/true")],
        [connect_record(14, 8080, Op.ACCEPT)],
    ]
    svc = Service(tmp_path, polls)
    svc.stream = ScriptedStream(polls, batches=batches, on_poll=svc._on_poll)
    svc.stream.losses.append(
        model.LossEvent(ts_ns=1, since_ns=0, count=5, by_kind={"open": 3, "connect": 2})
    )
    svc.agent.config = dataclasses.replace(svc.config, metrics=MetricsAddress("127.0.0.1", 0))
    svc.agent.counters.native_kinds = True
    seen: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []

    def look() -> None:  # from inside the loop: nothing is journaled while it scrapes
        assert svc.agent._metrics is not None
        seen.append((scrape(svc.agent._metrics.port), journal_records(svc.config.journal_dir)))

    svc.at(5, look)
    svc.at(6, send(signal.SIGTERM))
    svc.run()
    metrics, every = seen[0]
    records = [r for r in every if r["type"] != "seal"]
    events = Counter(r["kind"] for r in records if r["type"] == "event")
    assert events == {"exec": 2, "connect": 2, "bind": 1, "accept": 1}
    assert by_label(metrics["sealtrail_events_total"], "kind") == events
    if batches:  # the network events took the native record path
        assert svc.agent.counters.recorded_native == 4
    drops: Counter[str] = Counter()
    for r in records:
        if r["type"] == "loss":
            drops.update(r["drops"])
    assert by_label(metrics["sealtrail_kernel_drops_total"], "kind") == drops == {
        "open": 3, "connect": 2
    }  # fmt: skip
    verdicts = Counter((r["action"], r["rule"]) for r in records if r["type"] == "verdict")
    assert verdicts == {("deny", "r1"): 2}  # the fake enforcer judges exec
    assert by_label(metrics["sealtrail_verdicts_total"], "action", "rule") == verdicts
    loaded = [r for r in records if r["type"] == "policy_loaded"]
    (info,) = metrics["sealtrail_policy_info"]
    assert info == ({"digest": loaded[-1]["digest"]}, 1.0)
    assert by_label(metrics["sealtrail_policy_loads_total"], "result") == {"loaded": 1}
    assert metrics["sealtrail_policy_load_duration_seconds"][0][1] >= 0
    assert metrics["sealtrail_journal_seq"] == [({}, float(every[-1]["seq"]))]
    sealed = [r for r in every if r["type"] == "seal"][-1]
    assert metrics["sealtrail_journal_sealed_records"] == [({}, float(sealed["seq"] + 1))]
    assert metrics["sealtrail_journal_writable"] == [({}, 1.0)]
    assert metrics["sealtrail_journal_seconds_since_last_seal"][0][1] >= 0
    (key,) = metrics["sealtrail_journal_key_info"]
    assert len(key[0]["key_id"]) == 32
    assert "sealtrail_forward_lag_records" not in metrics  # not forwarding
    assert "process_cpu_seconds_total" in metrics


def test_every_metric_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    for name in HELP:
        assert f"`sealtrail_{name}" in doc, name


def test_forwarding_lag_and_rejects_are_the_journals(tmp_path: Path) -> None:
    svc = Service(tmp_path, [[exec_record(10 + i, b"/bin/sh")] for i in range(3)])
    collector = FakeCollector("h")
    collector.hook = lambda start, body: Answer(
        422, {"error": "tamper", "detail": "hash mismatch", "seq": start}, None
    )
    with_forwarder(svc, collector)
    svc.agent.config = dataclasses.replace(svc.config, metrics=MetricsAddress("127.0.0.1", 0))
    seen: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []

    def look() -> None:
        assert svc.agent._metrics is not None
        seen.append((scrape(svc.agent._metrics.port), journal_records(svc.config.journal_dir)))

    svc.at(3, lambda: time.sleep(0.5))  # sealed, sent, rejected, its forward_error handed back
    svc.at(5, look)
    svc.at(6, send(signal.SIGTERM))
    svc.run()
    metrics, records = seen[0]
    errors = Counter(r["error"] for r in records if r["type"] == "forward_error")
    assert errors["rejected"] == 1  # each rejection journaled once
    assert metrics["sealtrail_forward_rejects_total"] == [({}, 1.0)]
    assert by_label(metrics["sealtrail_forward_errors_total"], "error") == errors
    assert metrics["sealtrail_forward_rejected"] == [({}, 1.0)]
    assert metrics["sealtrail_forward_sent_records_total"] == [({}, 0.0)]
    lag = metrics["sealtrail_forward_lag_records"][0][1]
    sealed = metrics["sealtrail_journal_sealed_records"][0][1]
    assert lag == sealed > 0  # nothing acknowledged: every durable record is lag


def test_a_port_in_use_stops_the_agent_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        svc = Service(tmp_path, [])
        svc.agent.config = dataclasses.replace(
            svc.config, metrics=MetricsAddress("127.0.0.1", port)
        )
        with pytest.raises(SealtrailError, match=rf"metrics endpoint 127.0.0.1:{port}: cannot "):
            svc.run()
    stop = [r for r in journal_records(svc.config.journal_dir) if r["type"] == "stop"][-1]
    assert stop["reason"] == "error" and "cannot listen" in stop["error"]
