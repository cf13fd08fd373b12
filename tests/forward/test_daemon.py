"""The service loop with a forwarder: started once the journal is open, told what is durable,
its receipts journaled by the loop, stopped after the final seal (everything forwarded)."""

from __future__ import annotations

import dataclasses
import re
import signal
import time
from pathlib import Path

from agent.daemon import AgentConfig, Forwarding
from agent.forward.forwarder import Forwarder
from agent.forward.pacing import Pacing
from agent.forward.source import JournalSource
from agent.journal.segments import iter_lines
from agent.journal.writer import JournalWriter
from agent.status import read_status
from tests.forward.fakes import FakeCollector, down
from tests.unit.daemon.test_service import Service, send
from tests.unit.events.records import connect_record, exec_record


def with_forwarder(svc: Service, collector: FakeCollector) -> list[Forwarder]:
    made: list[Forwarder] = []

    def open_forwarder(config: AgentConfig, journal: JournalWriter) -> Forwarding:
        fwd = Forwarder(
            JournalSource(config.journal_dir),
            collector,
            collector.key.public,
            host=journal.host,
            durable=journal.sealed_size,
            collector="https://collector.test",
            pacing=Pacing(rate=0, stop_wait=5.0, backoff_base=0.05, backoff_cap=0.1),
            status_dir=config.run_dir,
        )
        made.append(fwd)
        return fwd

    svc.agent.make = dataclasses.replace(svc.agent.make, open_forwarder=open_forwarder)
    return made


def test_the_agent_forwards_its_journal_and_journals_the_receipts(tmp_path: Path) -> None:
    polls = [[exec_record(10 + i, b"/bin/sh")] for i in range(3)] + [[connect_record(10, 443)]]
    svc = Service(tmp_path, polls)
    collector = FakeCollector("h")
    made = with_forwarder(svc, collector)
    svc.at(3, lambda: time.sleep(0.4))  # sealed, forwarded, its receipt back
    svc.at(6, send(signal.SIGTERM))
    records = svc.run()
    assert len(made) == 1
    lines = [line.data for line in iter_lines(svc.config.journal_dir)]
    assert collector.lines == lines  # up to the final seal, before the agent exited
    receipts = [r for r in records if r["type"] == "receipt"]
    assert receipts and receipts[0]["collector"] == "coll"
    assert records[-1]["type"] == "stop"
    status = read_status(svc.config.run_dir, "forward.json")
    assert status is not None and status["state"] == "stopped"
    assert status["lag_records"] == 0 and status["acknowledged"] == len(lines)
    # systemd's STATUS= says what the collector does not hold yet (at READY: a start record)
    ready = svc.notifier.sent[0]
    assert re.fullmatch(r"policy \w{12}; .*; forward lag \d+ records, \d+\.\d s", ready["status"])


def test_a_collector_down_costs_the_stop_only_its_wait(tmp_path: Path) -> None:
    svc = Service(tmp_path, [[exec_record(10, b"/bin/sh")]])
    collector = FakeCollector("h")
    collector.script = [down() for _ in range(100_000)]
    with_forwarder(svc, collector)
    svc.at(2, lambda: time.sleep(0.2))
    svc.at(3, send(signal.SIGTERM))
    started = time.monotonic()
    records = svc.run()
    assert time.monotonic() - started < 8.0  # the 5 s wait, bounded
    errors = [r for r in records if r["type"] == "forward_error"]
    assert [e["error"] for e in errors] == ["unreachable"]  # journaled once
    assert collector.lines == []
