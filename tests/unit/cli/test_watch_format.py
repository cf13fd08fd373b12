"""Pure parts of `sealtrail watch`: argument checks, kernel filter keys, output lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.cli.watch import format_human, format_json, parse_kinds
from agent.errors import UsageError
from agent.events import model
from agent.events.stream import StreamConfig, prefix_entries
from agent.journal.writer import JournalWriter
from agent.kernel import abi
from agent.recorder import event_fields, text_safe


def test_only_rejects_unknown_kinds_naming_them() -> None:
    assert parse_kinds("exec, connect") == {"exec", "connect"}
    with pytest.raises(UsageError, match=r"unknown kind.*opne.*known: exec"):
        parse_kinds("exec,opne")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path_prefixes": ("etc",)}, "must be an absolute path"),
        ({"ringbuf_bytes": 5000}, "power of two"),
        ({"path_prefixes": ("/" + "x" * 300,)}, "longer than 255 bytes"),
    ],
)
def test_stream_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        StreamConfig(**kwargs)  # type: ignore[arg-type]


def test_prefix_matches_directory_exactly_and_everything_below() -> None:
    exact, below = prefix_entries("/etc/")
    assert exact == abi.prefix_key(b"/etc\0")  # /etc itself (the key includes the NUL)
    assert below == abi.prefix_key(b"/etc/")  # /etc/... but not /etcfoo
    assert prefix_entries("/") == [abi.prefix_key(b"/")]


def _exec(argv: tuple[str, ...]) -> model.ExecEvent:
    return model.ExecEvent(
        ts_ns=0,
        pid=42,
        tid=42,
        ppid=1,
        uid=0,
        gid=0,
        cgroup_id=1,
        comm="sh",
        exe="/usr/bin/sh",
        filename="/bin/sh",
        argv=argv,
        argc=len(argv),
        cwd="/",
    )


def test_human_line_is_one_line_even_with_newlines_in_argv() -> None:
    line = format_human(_exec(("sh", "-c", "echo a\necho b")))
    assert "\n" not in line and "echo a\\x0aecho b" in line
    assert " 42 " in line and "exec" in line and "/usr/bin/sh" in line


def test_json_line_round_trips() -> None:
    obj = json.loads(format_json(_exec(("ls", "-l"))))
    assert obj["kind"] == "exec" and obj["argv"] == ["ls", "-l"] and obj["pid"] == 42


def test_loss_line_says_how_many_what_and_since_when() -> None:
    loss = model.LossEvent(
        ts_ns=2_000_000_000, since_ns=1_000_000_000, count=12, by_kind={"open": 10, "exec": 2}
    )
    line = format_human(loss)
    assert "LOST 12 events" in line and "exec 2, open 10" in line and "since" in line
    assert json.loads(format_json(loss))["count"] == 12


def _exec_with_raw_bytes() -> model.ExecEvent:
    raw = os.fsdecode(b"/tmp/\xff\xfeevil")  # not UTF-8: decoded with surrogateescape
    return model.ExecEvent(
        ts_ns=1, pid=2, tid=2, ppid=1, uid=0, gid=0, cgroup_id=1 << 60, comm="evil",
        exe=raw, filename=raw, argv=(raw, "--ok"), argc=2, cwd="/tmp",
    )  # fmt: skip


def test_bytes_that_are_not_utf8_are_escaped_not_fatal(tmp_path: Path) -> None:
    """A file name that is not UTF-8 must neither stop the agent nor `watch`: such bytes are
    written as \\xNN and the record says "escaped": true."""
    ev = _exec_with_raw_bytes()
    line = json.loads(format_json(ev))
    assert line["filename"] == "/tmp/\\xff\\xfeevil" and line["escaped"] is True
    assert line["argv"] == ["/tmp/\\xff\\xfeevil", "--ok"]
    fields = event_fields(ev)
    assert fields["exe"] == "/tmp/\\xff\\xfeevil" and fields["escaped"] is True
    writer = JournalWriter.open(tmp_path / "j", tmp_path / "k", host="h", boot_id="b",
                                protect_files=False)  # fmt: skip
    writer.append("event", fields)
    writer.close()
    assert b'"escaped":true' in (tmp_path / "j" / "seg-000001.jsonl").read_bytes()


def test_journal_integers_stay_json_safe() -> None:
    """A process that ran for more than 104 days exits with duration_ns > 2**53."""
    ev = model.ExitEvent(
        ts_ns=1, pid=2, tid=2, ppid=1, uid=0, gid=0, cgroup_id=7, comm="old", exe=None,
        exit_code=0, signal=None, core_dumped=False, duration_ns=2**60,
    )  # fmt: skip
    fields = event_fields(ev)
    assert fields["duration_ns"] == str(2**60) and fields["cgroup_id"] == "7"
    assert "escaped" not in fields


def test_verdict_fields_are_escaped_inside_nested_objects() -> None:
    odd = os.fsdecode(b"/srv/\xff")
    fields = text_safe({"rule": "r", "object": {"path": odd, "new_path": None}, "n": [odd]})
    assert fields == {
        "rule": "r", "object": {"path": "/srv/\\xff", "new_path": None}, "n": ["/srv/\\xff"],
        "escaped": True,
    }  # fmt: skip
    clean = {"rule": "r", "object": {"path": "/srv/caf\u00e9"}}
    assert text_safe(dict(clean)) == clean  # valid UTF-8 stays as it is, no flag
