"""``sealtrail status`` over real status files and a real journal; ``journal_end`` reads the
journal's end without reading the journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.journal.reader import journal_end
from agent.status import write_status
from tests.unit.journal.conftest import Journal, journal

__all__ = ["journal"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_journal_end_is_the_last_record_and_the_last_seal(journal: Journal) -> None:
    w = journal.fill(300, seal_every=20, close=False)
    w.flush_and_seal()
    w.append("event", {"kind": "exec", "pid": 1})
    with open(journal.segments()[-1], "ab") as f:
        f.write(b'{"boot_id":"boot-1","ho')  # being written
    end = journal_end(journal.dir, block=512)
    assert end.last is not None and end.seal is not None
    assert end.last.seq == w.next_seq - 1 and end.last.type == "event"
    assert end.seal.seq == w.sealed_size - 1 and end.seal.type == "seal"


def test_journal_end_of_an_empty_or_unsealed_journal(tmp_path: Path, journal: Journal) -> None:
    journal.dir.mkdir(parents=True)
    assert journal_end(journal.dir) == (None, None)
    w = journal.writer()
    w.append("start", {"version": "0.1.0"})
    end = journal_end(journal.dir)
    assert end.last is not None and end.last.seq == 0 and end.seal is None
    w.close({"reason": "test"})


def status_files(run_dir: Path, pid: int) -> None:
    write_status(run_dir, {"pid": pid, "loads": 1, "trigger": "start", "result": "loaded",
                           "digest": "ab" * 32, "files": ["/p/a.toml"], "recorded": 1200,
                           "events_per_s": 120.5, "updated_ns": str(1)})  # fmt: skip
    forward = {"pid": pid, "collector": "https://coll:8443", "state": "backoff", "head": 90,
               "acknowledged": 90, "durable": 100, "lag_records": 10, "lag_seconds": 2.5,
               "last_receipt": {"collector": "c", "size": 90, "ts": "1764146065000000000"},
               "last_error": {"error": "unreachable", "detail": "connection refused",
                              "at_ns": "1764146066000000000"},
               "rejected": None}  # fmt: skip
    write_status(run_dir, forward, "forward.json")


def test_status_of_a_running_agent(
    tmp_path: Path, journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    journal.fill(50, seal_every=20)
    status_files(tmp_path / "run", os.getpid())
    argv = ["status", "--run-dir", str(tmp_path / "run"), "--journal", str(journal.dir)]
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["agent"]["running"] is True and doc["policy"]["digest"] == "ab" * 32
    assert doc["events_per_s"] == 120.5
    end = journal_end(journal.dir)
    assert end.last is not None
    assert doc["journal"]["last"]["seq"] == end.last.seq == doc["journal"]["last_seal"]["seq"]
    fwd = doc["forwarding"]
    assert fwd["current"] is True and fwd["lag_records"] == 10 and fwd["lag_seconds"] == 2.5
    assert doc["last_error"]["error"] == "unreachable"
    assert main(argv) == 0
    text = capsys.readouterr().out
    for words in ("running, pid", "ab" * 32, "120.5", f"seq {end.last.seq}", "backoff",
                  "10 records, 2.5 s", "unreachable: connection refused"):  # fmt: skip
        assert words in text, text


def test_status_of_a_stopped_agent(
    tmp_path: Path, journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = dead_pid()
    status_files(tmp_path / "run", pid)
    argv = ["status", "--run-dir", str(tmp_path / "run"), "--journal", str(journal.dir)]
    assert main(argv) == 3
    text = capsys.readouterr().out
    assert f"not running (last pid {pid})" in text and "last run's status" in text
    assert "does not exist" in text  # no journal there
    assert main(["status", "--run-dir", str(tmp_path / "none"), "--journal", str(tmp_path)]) == 3
    assert "no status file" in capsys.readouterr().out
