"""The recorder over a scripted stream of raw ring-buffer records, on both record paths: the
native encoder (where the native core is built) and Python. No kernel, no root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import native
from agent.events import model
from agent.journal.writer import JournalWriter
from agent.kernel.abi import Op
from agent.recorder import Recorder
from tests.agentproc import journal_records
from tests.unit.daemon.fakes import RecordingEnforcer, ScriptedStream, verdict_on
from tests.unit.events.records import connect_record, exec_record, guard_record, proc_record

PATHS = [
    "python",
    pytest.param(
        "native",
        marks=pytest.mark.skipif(not native.available(), reason="native core not built"),
    ),
]


@pytest.fixture
def journal(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[JournalWriter]:
    use_native = getattr(request, "param", "python") == "native"
    writer = JournalWriter.open(tmp_path / "journal", tmp_path / "keys", host="h", boot_id="b",
                                protect_files=False, seal_interval=3600.0,
                                use_native=use_native)  # fmt: skip
    yield writer
    writer.close()


def recorder_for(
    journal: JournalWriter, polls: list[list[bytes]], judged: frozenset[str] = frozenset()
) -> tuple[Recorder, ScriptedStream, RecordingEnforcer]:
    stream = ScriptedStream(polls, batches=journal.takes_events)
    enforcer = RecordingEnforcer(journal.directory, judged)
    return Recorder(journal, stream, enforcer), stream, enforcer


def records(journal: JournalWriter, *types: str) -> list[dict[str, Any]]:
    return [r for r in journal_records(journal.directory) if r["type"] in types]


MIXED = [
    exec_record(20, b"/usr/bin/curl", b"curl", b"example.org"),
    connect_record(20, 443),
    proc_record(Op.FORK, 20),
    connect_record(21, 80, Op.BIND),
    proc_record(Op.EXIT, 20),
]


@pytest.mark.parametrize("journal", PATHS, indirect=True)
def test_events_are_journaled_in_order_and_counted(journal: JournalWriter) -> None:
    recorder, _, _ = recorder_for(journal, [MIXED[:2], MIXED[2:]])
    recorder.poll(50)
    recorder.poll(50)
    events = records(journal, "event")
    assert [(e["kind"], e["pid"]) for e in events] == [
        ("exec", 20), ("connect", 20), ("fork", 20), ("bind", 21), ("exit", 20),
    ]  # fmt: skip
    assert events[1]["exe"] == "/usr/bin/curl"  # the process table, on either path
    assert recorder.native is journal.takes_events
    counters = recorder.counters
    assert counters.recorded == 5 and counters.lost == counters.verdicts == 0
    # connect, fork, bind and exit
    assert counters.recorded_native == (4 if recorder.native else 0)


def test_both_paths_write_the_same_event_fields(tmp_path: Path) -> None:
    if not native.available():
        pytest.skip("native core not built")
    fields = []
    for use_native in (False, True):
        writer = JournalWriter.open(tmp_path / f"j{use_native}", tmp_path / "keys", host="h",
                                    boot_id="b", protect_files=False, use_native=use_native,
                                    clock=lambda: 1_800_000_000_000_000_000)  # fmt: skip
        stream = ScriptedStream([MIXED], batches=True)
        stream.decoder.clock.offset_ns = 1_000  # both streams: the same wall-clock stamps
        recorder = Recorder(writer, stream, RecordingEnforcer(writer.directory))
        recorder.poll(50)
        assert recorder.native is use_native
        fields.append(
            [{k: v for k, v in e.items() if k != "prev"} for e in records(writer, "event")]
        )
        writer.close()
    assert fields[0] == fields[1]


@pytest.mark.parametrize("journal", PATHS, indirect=True)
def test_what_the_enforcer_acts_on_is_journaled_before_it_acts(journal: JournalWriter) -> None:
    recorder, _, enforcer = recorder_for(journal, [MIXED], judged=frozenset({"exec", "connect"}))
    recorder.poll(50)
    assert [ev.kind for ev, _ in enforcer.handled] == ["exec", "connect"]
    for ev, seen in enforcer.handled:
        last = seen[-1]
        assert (last["type"], last["kind"], last["pid"]) == ("event", ev.kind, ev.pid)
    kinds = [r.get("kind", r["type"]) for r in records(journal, "event", "verdict")]
    # the verdicts follow their events, at the end of the run of decoded records
    if recorder.native:  # fork, bind and exit went the native way, after that run
        assert kinds == ["exec", "connect", "verdict", "verdict", "fork", "bind", "exit"]
    else:
        assert kinds == ["exec", "connect", "fork", "bind", "exit", "verdict", "verdict"]
    assert kinds.count("verdict") == 2 and recorder.counters.verdicts == 2
    assert recorder.counters.recorded_native == (3 if recorder.native else 0)


@pytest.mark.parametrize("journal", PATHS, indirect=True)
def test_verdicts_made_meanwhile_are_journaled_at_the_next_poll(journal: JournalWriter) -> None:
    """A decision the enforcer's own thread made (fanotify) waits for no decoded record: a
    poll of only network events (all native, where it is loaded) journals it too."""
    recorder, _, enforcer = recorder_for(journal, [[connect_record(30, 443)]])
    exec_ev = recorder.stream.decode_records([exec_record(31, b"/tmp/x")])[0]
    assert isinstance(exec_ev, model.ExecEvent)
    enforcer.verdicts.append(verdict_on(exec_ev))
    recorder.poll(50)
    verdicts = records(journal, "verdict")
    assert [(v["pid"], v["action"], v["operation"]) for v in verdicts] == [(31, "deny", "exec")]
    assert not enforcer.verdicts


def test_stops_are_logged_with_their_journal_fields(
    journal: JournalWriter, caplog: pytest.LogCaptureFixture
) -> None:
    """What was stopped (or would be) is logged too, with the fields the systemd journal keeps
    (agent.logsetup): rule, policy digest, and the seq of its record here; allow and audit
    verdicts are journaled only."""
    recorder, _, enforcer = recorder_for(journal, [[]])
    exec_ev = recorder.stream.decode_records([exec_record(32, b"/tmp/x")])[0]
    for action in ("allow", "audit", "would_deny", "deny"):
        enforcer.verdicts.append(verdict_on(exec_ev, action))
    with caplog.at_level("INFO", logger="agent.recorder"):
        recorder.poll(50)
    seqs = [v["seq"] for v in records(journal, "verdict")]
    logged = [(r.getMessage(), r.SEALTRAIL_ACTION, r.SEALTRAIL_SEQ) for r in caplog.records]
    assert logged == [
        ("would_deny exec by rule r1 (policy p): pid 32 /tmp/x", "would_deny", seqs[2]),
        ("deny exec by rule r1 (policy p): pid 32 /tmp/x", "deny", seqs[3]),
    ]
    last = caplog.records[-1]
    fields = (last.SEALTRAIL_RULE, last.SEALTRAIL_POLICY, last.SEALTRAIL_EVENT)
    assert fields == ("r1", "d" * 64, "verdict")


@pytest.mark.parametrize("journal", PATHS, indirect=True)
def test_guard_decisions_go_to_the_enforcer_not_into_event_records(
    journal: JournalWriter,
) -> None:
    recorder, _, enforcer = recorder_for(journal, [[guard_record(40, 22), connect_record(40, 22)]])
    recorder.poll(50)
    assert [type(ev).__name__ for ev, _ in enforcer.handled] == ["GuardEvent"]
    assert [(e["kind"], e["pid"]) for e in records(journal, "event")] == [("connect", 40)]
    assert recorder.counters.recorded == 1


@pytest.mark.parametrize("journal", PATHS, indirect=True)
def test_loss_is_journaled_and_counted(journal: JournalWriter) -> None:
    recorder, stream, _ = recorder_for(journal, [[connect_record(50, 443)]])
    stream.losses.append(model.LossEvent(ts_ns=9, since_ns=7, count=3, by_kind={"open": 3}))
    recorder.poll(50)
    (loss,) = records(journal, "loss")
    assert (loss["count"], loss["drops"], loss["since_ns"]) == (3, {"open": 3}, "7")
    assert recorder.counters.lost == 3


@pytest.mark.parametrize("journal", PATHS, indirect=True)
def test_drain_journals_what_the_kernel_queued(journal: JournalWriter) -> None:
    recorder, stream, _ = recorder_for(journal, [])
    stream.queued = [proc_record(Op.EXIT, 60)]
    recorder.drain()
    assert [(e["kind"], e["pid"]) for e in records(journal, "event")] == [("exit", 60)]


def test_python_path_where_the_stream_gives_no_batches(tmp_path: Path) -> None:
    writer = JournalWriter.open(tmp_path / "j", tmp_path / "k", host="h", boot_id="b",
                                protect_files=False)  # fmt: skip
    stream = ScriptedStream([[connect_record(70, 443)]], batches=False)
    recorder = Recorder(writer, stream, RecordingEnforcer(writer.directory))
    assert not recorder.native
    recorder.poll(50)
    assert recorder.counters.recorded == 1 and recorder.counters.recorded_native == 0
    writer.close()
