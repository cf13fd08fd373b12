"""The agent's service loop built from fakes: a scripted stream of raw records, an enforcer
that keeps what it is handed, a journal in a temp directory, a clock the test moves, real
signals sent to this process. No kernel, no root."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import Agent, AgentConfig, Factories, short_digest
from agent.errors import SealtrailError
from agent.journal.writer import JournalWriter
from agent.kernel.abi import Op
from agent.policy.mechanisms import HostCapabilities
from agent.sdnotify import Notifier
from agent.status import read_status
from tests.agentproc import journal_records
from tests.unit.daemon.fakes import RecordingEnforcer, ScriptedStream
from tests.unit.events.records import connect_record, exec_record, proc_record

REPO = Path(__file__).resolve().parents[3]
CAPS = HostCapabilities(lsm=False, cgroup_sock=True, fanotify=True, send_signal=True)


class RecordingNotifier(Notifier):
    def __init__(self, watchdog_s: float | None = None) -> None:
        super().__init__()
        self.watchdog_interval_s = watchdog_s
        self.sent: list[dict[str, str]] = []

    def notify(self, *, fds: Sequence[int] = (), **fields: str) -> None:
        self.sent.append(fields)


class Service:
    """One agent over fakes; ``run()`` returns the journal's records."""

    def __init__(self, tmp: Path, polls: list[list[bytes]], step_s: float = 0.05) -> None:
        self.config = AgentConfig(journal_dir=tmp / "journal", keys_dir=tmp / "keys",
                                  policies_dir=tmp / "policies", run_dir=tmp / "run")  # fmt: skip
        self.now = 0.0
        self.actions: dict[int, Callable[[], None]] = {}  # at poll n, before it returns
        self.stream = ScriptedStream(polls, on_poll=self._on_poll)
        self.enforcer = RecordingEnforcer(self.config.journal_dir, frozenset({"exec"}))
        self.notifier = RecordingNotifier()
        self.step_s = step_s
        make = Factories(
            open_stream=lambda _config: self.stream,
            open_writer=self._open_writer,
            open_enforcer=lambda _stream, _caps, _cgroup, _handover: self.enforcer,
            capabilities=lambda: CAPS,
            clock=lambda: self.now,
        )
        self.agent = Agent(self.config, make, self.notifier)

    @staticmethod
    def _open_writer(config: AgentConfig) -> JournalWriter:
        return JournalWriter.open(config.journal_dir, config.keys_dir, host="h", boot_id="b",
                                  protect_files=False)  # fmt: skip

    def _on_poll(self, n: int) -> None:
        self.now += self.step_s
        action = self.actions.get(n)
        if action is not None:
            action()

    def at(self, n: int, action: Callable[[], None]) -> None:
        self.actions[n] = action

    def run(self) -> list[dict[str, Any]]:
        """Run the agent; the journal's records but the seals."""
        self.agent.run()
        return self.records()

    def records(self) -> list[dict[str, Any]]:
        return [r for r in journal_records(self.config.journal_dir) if r["type"] != "seal"]


def send(sig: signal.Signals) -> Callable[[], None]:
    return lambda: os.kill(os.getpid(), sig)


def add_policy(policies: Path, name: str = "privileged-ports.toml") -> None:
    policies.mkdir(exist_ok=True)
    shutil.copy(REPO / "policies" / name, policies / name)


def types(records: list[dict[str, Any]]) -> list[str]:
    return [r["type"] for r in records]


def test_start_record_loop_and_graceful_stop(tmp_path: Path) -> None:
    svc = Service(tmp_path, [[exec_record(10, b"/bin/sh")], [connect_record(10, 443)]])
    svc.stream.queued = [proc_record(Op.EXIT, 10)]  # still in the ring buffer at SIGTERM
    svc.at(3, send(signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    records = svc.run()
    assert types(records) == ["start", "policy_loaded", "event", "verdict", "event", "event",
                              "stop"]  # fmt: skip
    start, loaded, stop = records[0], records[1], records[-1]
    assert start["record_kinds"] == sorted(svc.config.record_kinds)
    assert start["capabilities"]["fanotify"] is True
    assert (loaded["trigger"], loaded["files"]) == ("start", [])  # no policies: observe only
    assert stop["reason"] == "signal"
    assert (stop["recorded"], stop["lost"], stop["verdicts"]) == (3, 0, 1)
    assert svc.stream.started and svc.stream.closed and svc.enforcer.closed
    assert svc.stream.polls == 3
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers in place before
    status = read_status(svc.config.run_dir)
    assert status is not None
    assert (status["result"], status["loads"], status["pid"]) == ("loaded", 1, os.getpid())


def test_sighup_reloads_and_a_bad_reload_keeps_the_policy_in_force(tmp_path: Path) -> None:
    svc = Service(tmp_path, [])
    add_policy(svc.config.policies_dir)

    def break_policy() -> None:
        (svc.config.policies_dir / "privileged-ports.toml").write_text("name = [\n")
        os.kill(os.getpid(), signal.SIGHUP)

    svc.at(2, send(signal.SIGHUP))
    svc.at(4, break_policy)
    svc.at(6, send(signal.SIGTERM))
    records = svc.run()
    assert types(records) == ["start", "policy_loaded", "reload", "policy_loaded", "reload",
                              "policy_rejected", "stop"]  # fmt: skip
    digest = records[1]["digest"]
    assert records[1]["files"] == [str(svc.config.policies_dir / "privileged-ports.toml")]
    assert records[3]["digest"] == digest and records[3]["trigger"] == "SIGHUP"
    rejected = records[5]
    assert rejected["kept"] == digest and rejected["errors"]
    # systemd hears each reload begin and end (Type=notify-reload), a rejected one too
    sent = [m for m in svc.notifier.sent if "reloading" in m or "ready" in m]
    reload = [["monotonic_usec", "reloading"], ["ready", "status"]]
    assert [sorted(m) for m in sent] == [["ready", "status"], *reload, *reload]
    assert sent[1]["monotonic_usec"].isdigit()
    policy = f"policy {short_digest(digest)}"
    ready = [m["status"].split("; ")[0] for m in sent if "ready" in m]
    assert ready == [policy, policy, f"{policy} (reload rejected, kept)"]
    status = read_status(svc.config.run_dir)
    assert status is not None
    assert (status["result"], status["kept"], status["loads"]) == ("rejected", digest, 3)
    assert svc.enforcer.digest == digest  # the rejected set was never installed


def test_a_policy_rejected_at_start_stops_the_agent_with_the_reason(tmp_path: Path) -> None:
    svc = Service(tmp_path, [])
    svc.config.policies_dir.mkdir()
    (svc.config.policies_dir / "bad.toml").write_text('name = "x"\nmode = "sometimes"\n')
    with pytest.raises(SealtrailError, match="policy rejected, not starting"):
        svc.run()
    records = svc.records()
    assert types(records) == ["start", "policy_rejected", "stop"]
    assert records[-1]["reason"] == "error" and "not starting" in records[-1]["error"]
    assert svc.stream.closed and svc.enforcer.closed and svc.stream.polls == 0


def test_a_failure_in_the_loop_is_in_the_stop_record(tmp_path: Path) -> None:
    svc = Service(tmp_path, [[exec_record(11, b"/bin/sh")]])

    def fail() -> None:
        raise RuntimeError("stream broke")

    svc.at(2, fail)
    with pytest.raises(RuntimeError):
        svc.run()
    stop = svc.records()[-1]
    assert (stop["type"], stop["reason"]) == ("stop", "error")
    assert stop["error"] == "RuntimeError: stream broke"
    assert stop["recorded"] == 1 and svc.stream.closed and svc.enforcer.closed


def test_a_mismatch_at_install_and_later_is_journaled_and_in_status(tmp_path: Path) -> None:
    svc = Service(tmp_path, [])
    svc.enforcer.install_errors = ("mark on /etc/x missing",)
    svc.at(2, lambda: svc.enforcer.problems.append("cannot mark /srv/new"))
    svc.at(3, send(signal.SIGTERM))
    records = svc.run()
    assert types(records) == ["start", "policy_mismatch", "policy_mismatch", "stop"]
    assert records[1]["errors"] == ["mark on /etc/x missing"]
    later = records[2]
    assert (later["trigger"], later["errors"]) == ("directory change", ["cannot mark /srv/new"])
    status = read_status(svc.config.run_dir)
    assert status is not None
    assert (status["result"], status["trigger"]) == ("mismatch", "directory change")
    assert status["errors"] == ["cannot mark /srv/new"]


def test_ready_watchdog_status_and_stopping_from_the_loop(tmp_path: Path) -> None:
    """READY once started, WATCHDOG from the loop at its interval (here every 1 s of the clock,
    the loop's polls 0.25 s apart), STATUS every 10 s, STOPPING last."""
    svc = Service(tmp_path, [[connect_record(12, 443)]], step_s=0.25)
    svc.notifier.watchdog_interval_s = 1.0
    svc.at(48, send(signal.SIGTERM))  # 12 s of clock
    svc.run()
    sent = svc.notifier.sent
    assert svc.enforcer.digest is not None
    policy = f"policy {short_digest(svc.enforcer.digest)}"
    assert sent[0] == {"ready": "1", "status": f"{policy}; 0.0 events/s; recorded 0, lost 0"}
    assert sent[-1] == {"stopping": "1"}
    pings = [m for m in sent if m == {"watchdog": "1"}]
    assert 11 <= len(pings) <= 13
    statuses = [m for m in sent if set(m) == {"status"}]  # 1 event in the first 10 s
    assert statuses == [{"status": f"{policy}; 0.1 events/s; recorded 1, lost 0"}]
