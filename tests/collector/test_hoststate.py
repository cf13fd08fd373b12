"""A host's state (``host_state``, pure) and ``collector hosts`` over real journals in real
stores, at controlled times."""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path

import pytest

from agent.cli import main
from agent.collector.config import make_config
from agent.collector.hoststate import HostState, host_state, survey
from agent.collector.store import Head, Status, Store
from tests.collector.stored import StoredJournal, collector_dir

S = 1_000_000_000
NOW = 1_800_000_000 * S
CONFIG = make_config(Path("/coll"), "coll-1", heartbeat_seconds=10, silent_after=3)


def head(last_seal_ns: int | None, status: Status = Status.OK, size: int = 5) -> Head:
    return Head(
        host="web-01",
        size=size,
        state=None,
        last_hash=None,
        checkpoint=None,
        last_seal_ns=last_seal_ns,
        last_receive_ns=None if last_seal_ns is None else last_seal_ns + S,
        status=status,
        detail="",
        updated_ns=NOW - 1000 * S,
        quarantine_dropped=0,
    )


# ------------------------------------------------------------------------------ pure
@pytest.mark.parametrize(
    ("age_ns", "state"),
    [
        (0, HostState.OK),
        (-5 * S, HostState.OK),  # a host clock ahead of the collector's
        (10 * S, HostState.OK),  # exactly one heartbeat: the next seal is due, not late
        (10 * S + 1, HostState.LAGGING),
        (30 * S - 1, HostState.LAGGING),
        (30 * S, HostState.SILENT),  # silent_after heartbeats without a seal
        (3600 * S, HostState.SILENT),
    ],
)
def test_state_follows_the_age_of_the_last_seal(age_ns: int, state: HostState) -> None:
    since = None if state is HostState.OK else NOW - age_ns
    assert host_state(head(NOW - age_ns), NOW, CONFIG, enrolled_ns=0) == (state, since)


@pytest.mark.parametrize(
    ("enrolled_age", "state"),
    [(5 * S, HostState.OK), (15 * S, HostState.LAGGING), (40 * S, HostState.SILENT)],
)
def test_a_host_that_never_sealed_counts_from_its_enrollment(
    enrolled_age: int, state: HostState
) -> None:
    enrolled = NOW - enrolled_age
    since = None if state is HostState.OK else enrolled
    for size in (0, 7):  # records without a seal are no sign of life
        assert host_state(head(None, size=size), NOW, CONFIG, enrolled_ns=enrolled) == (
            state,
            since,
        )


@pytest.mark.parametrize("status", [s for s in Status if s is not Status.OK])
def test_a_stored_status_wins_over_time(status: Status) -> None:
    for seal in (NOW, NOW - 3600 * S, None):
        assert host_state(head(seal, status), NOW, CONFIG, enrolled_ns=0) == (
            HostState(status.value),
            None,
        )


def test_the_heartbeat_and_silent_after_come_from_the_config() -> None:
    fast = make_config(Path("/coll"), "coll-1", heartbeat_seconds=0.5, silent_after=1)
    # silent_after 1: no lagging; silent from one heartbeat on (silent is judged first)
    assert host_state(head(NOW - S // 2 + 1), NOW, fast, enrolled_ns=0)[0] is HostState.OK
    assert host_state(head(NOW - S // 2), NOW, fast, enrolled_ns=0)[0] is HostState.SILENT
    slow = make_config(Path("/coll"), "coll-1", heartbeat_seconds=60, silent_after=5)
    assert host_state(head(NOW - 299 * S), NOW, slow, enrolled_ns=0)[0] is HostState.LAGGING
    assert host_state(head(NOW - 300 * S), NOW, slow, enrolled_ns=0)[0] is HostState.SILENT


def test_the_states_are_the_stored_statuses_and_the_two_of_time() -> None:
    assert {s.value for s in HostState} == {s.value for s in Status} | {"lagging", "silent"}
    assert [s.value for s in HostState] == [
        "ok", "lagging", "silent", "gap", "fork", "tamper", "rollback", "unenrolled-key",
    ]  # fmt: skip


# ------------------------------------------------------------------------------ store
def _clock(start: int) -> object:
    ticks = itertools.count(start)
    return lambda: next(ticks)


@pytest.fixture
def fleet(tmp_path: Path, store: Store) -> dict[str, int]:
    """Hosts whose last seals are 2 s, 15 s and 45 s old, one forked, one enrolled now and
    one enrolled 100 s ago that never sent anything; returns each one's last seal time."""
    now = time.time_ns()
    seals: dict[str, int] = {}
    for n, (name, age) in enumerate([("ok-01", 2), ("lag-01", 15), ("sil-01", 45), ("fork-01", 1)]):
        journal = StoredJournal(tmp_path, name, 30, seal_every=10, clock=_clock(now - age * S))
        journal.enroll(store, now - 200 * S, fingerprint=f"{n:x}" * 64)
        journal.forward(store, batches=2)
        seals[name] = store.head(name).last_seal_ns or 0
    store.set_status("fork-01", Status.FORK, "record 7 differs from the one accepted", now)
    StoredJournal(tmp_path, "new-01", 1).enroll(store, now, fingerprint="a" * 64)
    StoredJournal(tmp_path, "old-01", 1).enroll(store, now - 100 * S, fingerprint="b" * 64)
    return seals


def test_survey_of_a_fleet(store: Store, fleet: dict[str, int]) -> None:
    now = time.time_ns()
    rows = {row.host.name: row for row in survey(store, CONFIG, now)}
    assert list(rows) == ["fork-01", "lag-01", "new-01", "ok-01", "old-01", "sil-01"]
    states = {name: (row.state, row.since_ns) for name, row in rows.items()}
    old_enrolled = rows["old-01"].host.enrolled_ns
    assert states == {
        "fork-01": (HostState.FORK, None),
        "lag-01": (HostState.LAGGING, fleet["lag-01"]),
        "new-01": (HostState.OK, None),
        "ok-01": (HostState.OK, None),
        "old-01": (HostState.SILENT, old_enrolled),
        "sil-01": (HostState.SILENT, fleet["sil-01"]),
    }
    assert rows["sil-01"].lag_seconds == pytest.approx((now - fleet["sil-01"]) / S)
    assert rows["new-01"].lag_seconds is None and rows["new-01"].head.size == 0


def test_cli_hosts_lists_every_state(
    tmp_path: Path,
    store: Store,
    store_url: str,
    fleet: dict[str, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["collector", "hosts", "--dir", str(collector_dir(tmp_path, store_url))]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    header, *lines = out.splitlines()
    assert header.split() == ["HOST", "SIZE", "LAST", "SEAL", "LAST", "RECEIVE", "LAG", "STATE"]
    by_name = {line.split()[0]: line for line in lines}
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    size = store.head("ok-01").size
    assert re.fullmatch(rf"ok-01 +{size} +{stamp} +{stamp} +\d\.\ds +ok", by_name["ok-01"])
    assert re.search(rf" 1[5-9]\.\ds +lagging since {stamp}$", by_name["lag-01"])
    assert re.search(rf" 4\d\.\ds +silent since {stamp}$", by_name["sil-01"])
    assert by_name["fork-01"].endswith(" fork: record 7 differs from the one accepted")
    assert re.fullmatch(r"new-01 +0 +- +- +- +ok", by_name["new-01"])
    assert re.fullmatch(rf"old-01 +0 +- +- +- +silent since {stamp}", by_name["old-01"])
    # the columns line up
    assert len({line.index(" ok") for line in lines if line.endswith(" ok")}) == 1


def test_cli_hosts_json_and_a_slower_heartbeat(
    tmp_path: Path,
    store: Store,
    store_url: str,
    fleet: dict[str, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    coll = collector_dir(tmp_path, str(tmp_path / "unused.sqlite"), heartbeat_seconds=20)
    assert main(["collector", "hosts", "--dir", str(coll), "--store", store_url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["heartbeat_seconds"], doc["silent_after"]) == (20, 3)
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert {name: h["state"] for name, h in hosts.items()} == {
        "fork-01": "fork",
        "lag-01": "ok",  # 15 s: less than one heartbeat of 20 s
        "new-01": "ok",
        "ok-01": "ok",
        "old-01": "silent",
        "sil-01": "lagging",  # 45 s: more than one heartbeat, less than three
    }
    sil = hosts["sil-01"]
    assert sil["since_ns"] == sil["last_seal_ns"] == str(fleet["sil-01"])
    assert 45 <= sil["lag_seconds"] < 120 and sil["size"] == store.head("sil-01").size
    assert hosts["fork-01"]["detail"] == "record 7 differs from the one accepted"
    assert hosts["new-01"]["last_seal_ns"] is None and hosts["new-01"]["last_hash"] is None


def test_cli_hosts_of_an_empty_store_and_errors(
    tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    coll = collector_dir(tmp_path, store_url)
    assert main(["collector", "hosts", "--dir", str(coll)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "no host is enrolled" in err
    (coll / "collector.toml").write_text('name = "c"\n[heartbeat]\nsilent_after = 0\n')
    assert main(["collector", "hosts", "--dir", str(coll)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 3: [heartbeat] silent_after" in err
