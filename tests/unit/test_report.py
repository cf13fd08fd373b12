"""``sealtrail report``: journals written by the real writer (a clean one, a tampered one, one
with an unsealed tail, hosts in a real SQLite collector store), reported through the CLI; the
numbers in the page equal the journal's, a record that fails verification is listed and left
out, and attacker-controlled text (paths, binaries) is escaped."""

from __future__ import annotations

import html.parser
import re
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent.collector.store import open_store
from agent.journal.keys import KeyStore
from agent.journal.segments import iter_lines
from tests.agentproc import journal_records
from tests.collector.stored import StoredJournal, collector_dir, run_cli
from tests.unit.journal.conftest import Journal

EVIL_EXE = "/tmp/<script>document.title='owned'</script>"
EVIL_PATH = '/srv/"><img src=x onerror=alert(1)>'
DIGEST_A, DIGEST_B = "a1" * 32, "b2" * 32


def write_journal(root: Path, *, close: bool = True) -> Journal:
    """Two runs of an agent: policy loads (one rejected), events, verdicts, a loss record, a
    key rotation, seals every 25 records; the second run restarts after a clean stop."""
    j = Journal(root, "web-01")
    w = j.writer()
    w.append("start", {"version": "0.1.0", "kernel": "6.18", "pid": 100})
    w.append("policy_loaded", {"digest": DIGEST_A, "files": ["/etc/a.toml"], "trigger": "start"})
    for i in range(120):
        kind = ("exec", "connect", "open")[i % 3]
        fields: dict[str, Any] = {"kind": kind, "pid": 1000 + i, "uid": 1000, "exe": EVIL_EXE}
        if kind == "open":
            fields["path"] = EVIL_PATH
        w.append("event", fields)
        if i % 8 == 0:
            w.append("verdict", {"action": "deny" if i % 16 else "would_deny", "rule": "no-tmp",
                                 "policy": DIGEST_A, "pid": 1000 + i, "uid": 1000,
                                 "exe": EVIL_EXE, "object": {"path": EVIL_PATH}})  # fmt: skip
        if i == 60:
            w.append("loss", {"drops": {"open": 7, "exec": 2}, "count": 9, "since_ns": "5"})
            w.rotate_key()
        if i % 25 == 24:
            w.flush_and_seal()
    w.append("policy_rejected", {"errors": ["/etc/b.toml:1:1: bad"], "kept": DIGEST_A,
                                 "trigger": "SIGHUP"})  # fmt: skip
    w.close({"reason": "signal"})
    w = j.writer()
    w.append("start", {"version": "0.1.0", "kernel": "6.18", "pid": 200})
    w.append("policy_loaded", {"digest": DIGEST_B, "files": ["/etc/b.toml"], "trigger": "start"})
    for i in range(10):
        w.append("event", {"kind": "exit", "pid": 2000 + i, "uid": 0})
    if close:
        w.close({"reason": "signal"})
    else:
        w.flush_and_seal()
        for i in range(3):  # an unsealed tail: the agent runs on
            w.append("event", {"kind": "exec", "pid": 3000 + i, "uid": 0})
    return j


class Numbers(html.parser.HTMLParser):
    """The ``data-n`` values of a page, by name (one per host section)."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.found: dict[str, list[str]] = {}
        self._name: str | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._name = dict(attrs).get("data-n")

    def handle_data(self, data: str) -> None:
        if self._name is not None:
            self.found.setdefault(self._name, []).append(data)
            self._name = None

    def one(self, name: str) -> int:
        (value,) = self.found[name]
        return int(value)


def report(capsys: pytest.CaptureFixture[str], out: Path, *argv: object, rc: int = 0) -> str:
    status, stdout, stderr = run_cli(capsys, "report", *argv, "-o", out)
    assert status == rc, stderr
    assert f"report written to {out}" in stdout
    return out.read_text()


def expected(records: list[dict[str, Any]]) -> dict[str, int]:
    kinds = Counter(r["kind"] for r in records if r["type"] == "event")
    actions = Counter(r["action"] for r in records if r["type"] == "verdict")
    lost = sum(sum(r["drops"].values()) for r in records if r["type"] == "loss")
    return {**{f"event-{k}": n for k, n in kinds.items()},
            **{f"verdict-{a}": n for a, n in actions.items()},
            "period-records": len(records), "lost-events": lost}  # fmt: skip


def test_a_clean_journal_the_page_says_what_the_journal_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    j = write_journal(tmp_path)
    page = report(capsys, tmp_path / "r.html", "--journal", j.dir, "--key", j.keys / "journal.pub")
    records = journal_records(j.dir)
    n = Numbers(page)
    assert n.found["status"] == ["verified"]
    assert n.one("verified") == n.one("records") == len(records)
    assert n.one("excluded") == 0 and n.one("errors") == 0
    assert n.one("rotations") == 1 and n.one("seals") == sum(r["type"] == "seal" for r in records)
    for name, value in expected(records).items():
        assert n.one(name) == value, name
    last = [r for r in records if r["type"] == "seal"][-1]
    assert last["root"] in page and f"<td>{last['size']}</td>" in page
    genesis = KeyStore(j.keys).genesis()
    rotation = next(r for r in records if r["type"] == "key_rotation")
    assert genesis.key_id in page and rotation["new_key_id"] in page
    for digest in (DIGEST_A, DIGEST_B):  # both policy loads, and the rejected reload
        assert f"<td>{digest}</td>" in page
    assert "<td>rejected</td><td>SIGHUP</td>" in page
    for pid in (100, 200):  # both runs' starts, and their stops
        assert f"<td>start</td><td>version 0.1.0, pid {pid}, kernel 6.18" in page
    assert page.count("<td>stop</td><td>reason signal</td>") == 2
    assert page.count('src="data:image/png;base64,') == 3  # events, verdicts, denials by rule
    # attacker-controlled text never reaches the page as markup
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;document.title=&#x27;owned&#x27;&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_a_tampered_record_is_listed_and_its_batch_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    j = write_journal(tmp_path)
    before = journal_records(j.dir)
    target = next(r for r in before if r["type"] == "event" and r["pid"] == 1040)
    for line in iter_lines(j.dir):  # change its pid in place: same length, hash broken
        if b'"pid":1040,' in line.data:
            seg = j.dir / line.segment
            data = seg.read_bytes()
            seg.write_bytes(data.replace(b'"pid":1040,', b'"pid":1041,', 1))
            break  # the event only: its verdict has the same pid
    page = report(
        capsys, tmp_path / "r.html", "--journal", j.dir, "--key", j.keys / "journal.pub", rc=1
    )  # written, and the exit status says it failed
    n = Numbers(page)
    assert n.found["status"] == ["FAILED"] and n.one("errors") >= 1
    seals = [r["seq"] for r in before if r["type"] == "seal"]
    lo = max(s for s in seals if s < target["seq"]) + 1
    hi = min(s for s in seals if s > target["seq"])
    assert n.one("excluded") == hi - lo + 1
    assert f"{lo}\u2013{hi}" in page  # the seq range left out
    # every record of the batch is listed, the altered one with its own finding
    listed = re.findall(r"<tr><td>(\d+)</td>", page.split('id="excluded"', 1)[1])
    assert [int(s) for s in listed[: hi - lo + 1]] == list(range(lo, hi + 1))
    (row,) = re.findall(rf"<tr><td>{target['seq']}</td>.*?</tr>", page)
    assert "hash mismatch" in row  # the altered record's own finding, not only its batch's
    kept = [r for r in before if not lo <= r["seq"] <= hi]
    assert n.one("verified") == len(kept)
    for name, value in expected(kept).items():
        assert n.one(name) == value, name


def test_an_unsealed_tail_is_listed_not_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    j = write_journal(tmp_path, close=False)
    page = report(capsys, tmp_path / "r.html", "--journal", j.dir, "--key", j.keys / "journal.pub")
    n = Numbers(page)
    assert n.found["status"] == ["verified"]  # a live journal: not an error
    assert n.one("excluded") == 3
    assert page.count("after the last valid seal: signed by nothing (yet)") == 3
    assert "event-exec" in n.found and n.one("event-exec") == 40  # not the 3 of the tail


def test_since_and_until_bound_the_activity_not_the_verification(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    j = write_journal(tmp_path)
    records = journal_records(j.dir)
    second = next(r for r in records if r["type"] == "start" and r["pid"] == 200)
    since = f"{(int(second['ts']) - 1000) / 1e9:.6f}"  # a microsecond before it
    cut = int(float(since) * 1e9)  # as the CLI reads @EPOCH
    page = report(capsys, tmp_path / "r.html", "--journal", j.dir, "--key",
                  j.keys / "journal.pub", f"--since=@{since}")  # fmt: skip
    n = Numbers(page)
    window = [r for r in records if int(r["ts"]) >= cut]
    assert second in window and len(window) < len(records) / 4
    assert n.one("verified") == len(records)  # the whole journal is verified
    assert n.one("period-records") == len(window)
    for name, value in expected(window).items():
        assert n.one(name) == value, name
    assert n.one("event-exit") == 10 and "event-exec" not in n.found


def test_hosts_from_a_collector_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    with open_store(url) as store:
        a, b = (
            StoredJournal(tmp_path / "hosts", h, n) for h, n in (("host-a", 150), ("host-b", 60))
        )
        for fingerprint, host in (("a" * 64, a), ("b" * 64, b)):
            host.enroll(store, time.time_ns(), fingerprint)
            host.forward(store)
    coll = collector_dir(tmp_path, url)
    page = report(capsys, tmp_path / "r.html", "--collector", coll)
    n = Numbers(page)
    assert n.found["status"] == ["verified", "verified"]
    assert [int(v) for v in n.found["verified"]] == [len(a.lines), len(b.lines)]
    assert "Host host-a" in page and "Host host-b" in page
    only = report(capsys, tmp_path / "b.html", "--collector", coll, "--host", "host-b")
    assert "Host host-a" not in only
    assert Numbers(only).one("event-exec") == 60
    rc, _, err = run_cli(capsys, "report", "--collector", coll, "--host", "nobody", "-o",
                         tmp_path / "x.html")  # fmt: skip
    assert rc != 0 and "nobody" in err and "Traceback" not in err


def test_usage_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "report", "--journal", tmp_path, "-o", tmp_path / "r.html")
    assert rc == 2 and "--journal needs --key PUB" in err
    j = write_journal(tmp_path / "j")
    rc, _, err = run_cli(capsys, "report", "--journal", j.dir, "--key", j.keys / "journal.pub",
                         "--since", "whenever", "-o", tmp_path / "r.html")  # fmt: skip
    assert rc == 2 and "--since 'whenever': not a time" in err
    # a relative time without "=", as journal query and journalctl take it
    rc, _, err = run_cli(capsys, "report", "--journal", j.dir, "--key", j.keys / "journal.pub",
                         "--since", "-1h", "-o", tmp_path / "r.html")  # fmt: skip
    assert rc == 0 and (tmp_path / "r.html").exists(), err


def test_a_record_changed_in_the_store_is_listed_and_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "store.sqlite"
    with open_store(f"sqlite:///{db}") as store:
        a, b = (StoredJournal(tmp_path / "hosts", h, 100) for h in ("host-a", "host-b"))
        for fingerprint, host in (("a" * 64, a), ("b" * 64, b)):
            host.enroll(store, time.time_ns(), fingerprint)
            host.forward(store)
    seq = a.seq_of(b'"pid":1050,')
    with sqlite3.connect(db) as conn:  # behind the collector's back: one stored line changed
        (host_id,) = conn.execute("SELECT id FROM hosts WHERE name = 'host-a'").fetchone()
        rows = conn.execute("SELECT first_seq, lines FROM batches WHERE host_id = ?", (host_id,))
        first, lines = next((f, bytes(ln)) for f, ln in rows if b'"pid":1050,' in bytes(ln))
        changed = lines.replace(b'"pid":1050,', b'"pid":1051,')
        conn.execute("UPDATE batches SET lines = ? WHERE host_id = ? AND first_seq = ?",
                     (changed, host_id, first))  # fmt: skip
    coll = collector_dir(tmp_path, f"sqlite:///{db}")
    page = report(capsys, tmp_path / "r.html", "--collector", coll, rc=1)
    n = Numbers(page)
    assert n.found["status"] == ["FAILED", "verified"]
    excluded_a, excluded_b = (int(v) for v in n.found["excluded"])
    assert excluded_b == 0 and excluded_a > 0
    verified_a, verified_b = (int(v) for v in n.found["verified"])
    assert verified_a + excluded_a == len(a.lines) and verified_b == len(b.lines)
    section_a = page.split("Host host-a", 1)[1].split("Host host-b", 1)[0]
    assert f"<tr><td>{seq}</td>" in section_a  # the changed record is listed
    assert "the stored record hash is not the hash of the stored line" in section_a
