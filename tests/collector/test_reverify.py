"""``collector verify`` on real journals in real stores (SQLite and PostgreSQL): clean, then
changed behind the collector's back in the store's own SQL, each change found with its seq."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from agent.cli import main
from agent.collector.reverify import HostReport, verify_host
from agent.collector.store import Store
from agent.journal.canonical import canonical
from agent.journal.checkpoint import Checkpoint, SignedCheckpoint
from agent.journal.record import parse_line, record_hash
from agent.journal.segments import Chunk
from agent.journal.verify import Finding, Verifier
from tests.collector.stored import StoredJournal, collector_dir, forwarded, run_cli
from tests.collector.test_store import HOST_ID, cut_records, raw_execute, raw_query, tamper
from tests.unit.journal.conftest import first_error_seq


@pytest.fixture
def url(store_url: str) -> str:
    """The store's URL, to change it behind its back (``raw_execute``)."""
    return store_url


@pytest.fixture
def web(tmp_path: Path, store: Store) -> StoredJournal:
    """web-01: 400 events, sealed every 25, a key rotation every 150, forwarded in 4 batches."""
    return forwarded(store, tmp_path, "web-01", 400, batches=4, seal_every=25, rotate_every=150)


def check(store: Store, name: str = "web-01") -> tuple[HostReport, list[Finding]]:
    found: list[Finding] = []
    host = store.host(name)
    assert host is not None
    return verify_host(store, host, emit=found.append), found


def errors(found: list[Finding]) -> list[str]:
    return [str(f) for f in found if f.severity == "error"]


# ------------------------------------------------------------------------------ clean
def test_a_clean_store_verifies_and_the_head_matches(store: Store, web: StoredJournal) -> None:
    report, found = check(store)
    assert report.ok and errors(found) == []
    s = report.summary
    assert (s.records, s.rotations, s.host, s.clean_end) == (len(web.lines), 2, "web-01", True)
    assert s.seals == web.bytes.count(b'"type":"seal"')
    assert report.head.size == len(web.lines)


def test_a_host_still_sending_verifies_up_to_its_last_seal(tmp_path: Path, store: Store) -> None:
    live = StoredJournal(tmp_path, "db-01", 90, seal_every=40, close=False)
    live.enroll(store, 1)
    live.forward(store, batches=2)
    report, found = check(store, "db-01")
    assert report.ok, errors(found)
    assert report.head.size == live.seq_of(b'"size":%d,' % (report.head.size - 1)) + 1
    assert report.summary.unsealed == 0 and not report.summary.clean_end
    assert [f.severity for f in found] == ["warning"]  # no stop record yet


def test_unsealed_records_in_the_store_are_an_error(tmp_path: Path, store: Store) -> None:
    """Ingest stores only sealed records; unsealed ones appended behind its back (with a
    matching head) are authenticated by nothing."""
    live = StoredJournal(tmp_path, "db-01", 90, seal_every=40, close=False)
    live.enroll(store, 1)
    live.forward(store, batches=1)
    size = store.head("db-01").size
    verifier = Verifier(live.genesis, expected_host="db-01")
    list(verifier.feed_chunk(Chunk("all", 0, live.bytes)))
    tail = live.lines[size:]
    assert tail and store.append(
        "db-01", size, tail, [record_hash(line) for line in tail],
        json.dumps(verifier.state().to_dict()), None, None, 2,
    )  # fmt: skip
    _report, found = check(store, "db-01")
    assert [(f.seq, f.seq_end) for f in found if f.severity == "error"] == [
        (size, len(live.lines) - 1)
    ]
    assert "ingest stores only sealed records" in errors(found)[0]


def test_a_host_without_records_is_ok(store: Store, web: StoredJournal, tmp_path: Path) -> None:
    fresh = StoredJournal(tmp_path, "new-01", 5)
    fresh.enroll(store, 1, fingerprint="e" * 64)
    report, found = check(store, "new-01")
    assert report.ok and found == [] and report.summary.records == 0


def test_big_hosts_are_read_in_runs_and_judged_the_same(
    tmp_path: Path, store: Store, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.collector import reverify

    monkeypatch.setattr(reverify, "CHUNK_BYTES", 2000)  # a run of a few records
    journal = StoredJournal(tmp_path, "web-01", 400, seal_every=25, rotate_every=150)
    journal.enroll(store, 1)
    journal.forward(store, batches=3)
    assert check(store)[0].ok
    seq = journal.seq_of(b'"pid":1201,')
    cut_records(url, "web-01", seq, seq + 1)
    report, found = check(store)
    assert not report.ok and first_error_seq(report.summary) == seq
    assert any(f.segment is not None and f.segment.startswith("store:web-01@") for f in found)


# ------------------------------------------------------------------------------ tampering
def test_a_changed_line_is_found_with_its_seq(store: Store, web: StoredJournal, url: str) -> None:
    seq = web.seq_of(b'"pid":1180,')
    changed = web.lines[seq].replace(b'"pid":1180,', b'"pid":1181,')
    tamper(url, "web-01", seq, line=changed)  # one byte changed inside its batch's lines
    report, found = check(store)
    assert not report.ok
    assert first_error_seq(report.summary) == seq, errors(found)
    assert any(
        f.seq == seq and "stored record hash is not the hash of the stored line" in f.message
        for f in found
    )
    assert any(f.seq == seq and "hash mismatch" in f.message for f in found)


def test_a_changed_last_line_is_found(store: Store, web: StoredJournal, url: str) -> None:
    last = len(web.lines) - 1
    changed = web.lines[last].replace(b'"type":"seal"', b'"type":"seal" ', 1)
    tamper(url, "web-01", last, line=changed)
    report, found = check(store)
    assert not report.ok
    assert any(f.seq == last and f.message.startswith("malformed record") for f in found)
    # the stop record before it lost its seal with it
    assert (last - 1, last) in [(f.seq, f.seq_end) for f in found if "only sealed" in f.message]


@pytest.mark.parametrize("change", ["extra-field", "padding-bits"])
def test_a_final_seal_changed_with_its_hash_is_found(
    store: Store, web: StoredJournal, url: str, change: str
) -> None:
    """The final seal is covered by no later record: every byte of it must be signed."""
    last = len(web.lines) - 1
    seal = json.loads(web.lines[last])
    if change == "extra-field":
        seal["note"] = "all clear"
    else:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        sig = seal["sig"]
        seal["sig"] = sig[:-3] + alphabet[alphabet.index(sig[-3]) ^ 1] + "=="
    changed = canonical(seal)
    tamper(url, "web-01", last, line=changed, digest=record_hash(changed))
    report, found = check(store)
    assert not report.ok
    expected = "nothing signs" if change == "extra-field" else "not canonical base64"
    assert any(f.seq == last and expected in f.message for f in found), errors(found)


def test_a_store_cut_back_behind_its_fleet_log_is_found(
    store: Store, web: StoredJournal, url: str
) -> None:
    """Batches deleted and the head set back consistently (what a database admin can do): the
    records left verify on their own, but the fleet log holds the host's later checkpoint."""
    assert check(store)[0].ok
    rows = raw_query(
        url, f"SELECT first_seq, count FROM batches WHERE host_id = {HOST_ID} ORDER BY first_seq",
        ("web-01",),
    )  # fmt: skip
    keep = int(rows[0][1])
    cut_records(url, "web-01", keep)
    verifier = Verifier(web.genesis, expected_host="web-01")
    list(verifier.feed_chunk(Chunk("x", 0, b"".join(ln + b"\n" for ln in web.lines[:keep]))))
    seal = parse_line(web.lines[keep - 1])
    cp, sig = Checkpoint.from_seal(seal)
    raw_execute(
        url,
        "UPDATE heads SET size = ?, state = ?, last_hash = ?, checkpoint = ?"
        f" WHERE host_id = {HOST_ID}",
        (keep, json.dumps(verifier.state().to_dict()), record_hash(web.lines[keep - 1]),
         json.dumps(SignedCheckpoint(cp, sig, seal.seq).to_dict()), "web-01"),
    )  # fmt: skip
    report, found = check(store)
    assert not report.ok
    (finding,) = [f for f in found if "fleet log" in f.message]
    last_seal = len(web.lines) - 1
    assert f"checkpoint of {last_seal} records of web-01" in finding.message
    assert f"the store holds {keep} records" in finding.message
    assert (finding.seq, finding.seq_end) == (keep, last_seal)


def test_a_line_changed_with_its_hash_is_found_by_the_chain(
    store: Store, web: StoredJournal, url: str
) -> None:
    seq = web.seq_of(b'"pid":1042,')
    changed = web.lines[seq].replace(b'"pid":1042,', b'"pid":1043,')
    tamper(url, "web-01", seq, line=changed, digest=record_hash(changed))
    report, found = check(store)
    assert first_error_seq(report.summary) == seq, errors(found)
    assert not any("stored record hash" in f.message for f in found)


def test_a_changed_hash_column_is_found(store: Store, web: StoredJournal, url: str) -> None:
    tamper(url, "web-01", 77, digest=bytes(32))
    _report, found = check(store)
    assert errors(found) == [
        "record 77 in store:web-01: the stored record hash is not the hash of the stored "
        "line: the store was changed behind the collector's back"
    ]


def test_a_deleted_row_is_found_with_its_seq(store: Store, web: StoredJournal, url: str) -> None:
    cut_records(url, "web-01", 123, 124)
    report, found = check(store)
    assert first_error_seq(report.summary) == 123
    assert any(f.seq == 123 and f.message.startswith("missing") for f in found)


def test_deleted_rows_at_the_end_are_found(store: Store, web: StoredJournal, url: str) -> None:
    size = len(web.lines)
    cut_records(url, "web-01", size - 3)
    _report, found = check(store)
    kept = web.lines[: size - 3]  # the last seal, the stop record and the final seal go
    last_seal = max(i for i, line in enumerate(kept) if b'"type":"seal"' in line)
    assert last_seal < size - 4
    assert [(f.seq, f.seq_end) for f in found if f.severity == "error"] == [
        (last_seal + 1, size - 4),  # left after the last seal that is still there
        (size - 3, size - 1),
    ]
    assert "the head holds" in errors(found)[1]


def test_a_row_beyond_the_head_is_found(store: Store, web: StoredJournal, url: str) -> None:
    size = len(web.lines)
    raw_execute(
        url,
        "INSERT INTO batches (host_id, first_seq, count, lines, hashes)"
        f" SELECT host_id, ?, count, lines, hashes FROM batches WHERE host_id = {HOST_ID}"
        " AND first_seq = 0",
        (size + 10, "web-01"),
    )
    _report, found = check(store)
    assert [f.seq for f in found if f.severity == "error"] == [size + 10]
    assert "stored beyond the head" in errors(found)[0]


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        ("state", '{"format":"x"}', "the head's chain state is not valid"),
        ("state", "boot", "the head's chain state is not the one its records give (boot)"),
        ("last_hash", bytes(32), "the head's last hash is not the hash of record"),
        ("checkpoint", "not json", "the head's checkpoint is not valid"),
        ("checkpoint", "earlier", "is that of seal"),
        ("checkpoint", "resigned", "is not the one seal"),
    ],
)
def test_a_changed_head_is_found(
    store: Store, web: StoredJournal, url: str, column: str, value: object, words: str
) -> None:
    head = store.head("web-01")
    assert head.state is not None and head.checkpoint is not None
    if value == "boot":
        state = json.loads(head.state)
        value = json.dumps(dict(state, boot="another-boot"))
    elif value in ("earlier", "resigned"):
        doc = json.loads(head.checkpoint)
        if value == "earlier":
            doc["seal_seq"] = doc["checkpoint"]["size"] = doc["seal_seq"] - 1
        else:
            doc["sig"] = doc["sig"][:4] + ("A" if doc["sig"][4] != "A" else "B") + doc["sig"][5:]
        value = json.dumps(doc)
    raw_execute(url, f"UPDATE heads SET {column} = ? WHERE host_id = {HOST_ID}", (value, "web-01"))
    report, found = check(store)
    assert not report.ok
    (message,) = errors(found)
    assert words in message and "changed behind the collector's back" in message


# ------------------------------------------------------------------------------ command
def test_cli_verify_every_host_clean_and_then_tampered(
    tmp_path: Path,
    store: Store,
    store_url: str,
    web: StoredJournal,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = StoredJournal(tmp_path, "db-01", 60, seal_every=10)
    other.enroll(store, 1, fingerprint="d" * 64)
    other.forward(store, batches=2)
    coll = collector_dir(tmp_path, store_url)
    rc, out, err = run_cli(capsys, "collector", "verify", "--dir", coll)
    assert rc == 0 and err == "", err
    lines = out.splitlines()
    assert lines[0].startswith(f"db-01: OK: {len(other.lines)} records,")
    assert "(status ok)" in lines[0]
    assert lines[1].startswith(f"web-01: OK: {len(web.lines)} records, ")
    total = len(web.lines) + len(other.lines)
    assert lines[-1] == f"store OK: 2 hosts, {total} records verified"

    cut_records(store_url, "web-01", 200, 201)
    rc, out, _ = run_cli(capsys, "collector", "verify", "--dir", coll)
    assert rc == 1
    assert "error: web-01: record 200 in store:web-01@0 at byte " in out
    assert "web-01: FAILED: " in out and out.splitlines()[-1].startswith("store FAILED: 1 of 2")
    rc, out, _ = run_cli(capsys, "collector", "verify", "--dir", coll, "--host", "db-01")
    assert rc == 0 and "web-01" not in out

    rc, out, _ = run_cli(capsys, "collector", "verify", "--dir", coll, "--json")
    doc = json.loads(out)
    assert rc == 1 and doc["ok"] is False
    assert [(h["host"], h["ok"], h["stored_size"]) for h in doc["hosts"]] == [
        ("db-01", True, len(other.lines)),
        ("web-01", False, len(web.lines)),
    ]
    assert doc["hosts"][1]["findings"][0]["seq"] == 200


def test_cli_verify_store_override_and_errors(
    tmp_path: Path,
    store: Store,
    store_url: str,
    web: StoredJournal,
    capsys: pytest.CaptureFixture[str],
) -> None:
    coll = collector_dir(tmp_path, str(tmp_path / "elsewhere.sqlite"))
    rc, out, _ = run_cli(capsys, "collector", "verify", "--dir", coll, "--store", store_url)
    assert rc == 0 and "web-01: OK" in out
    for argv, words in [
        (["--dir", coll, "--store", store_url, "--host", "nope"], "no host 'nope' is enrolled"),
        (["--dir", tmp_path / "none"], "collector.toml does not exist"),
        (["--dir", coll, "--store", "mysql://x"], "unknown scheme"),
    ]:
        rc, out, err = run_cli(capsys, "collector", "verify", *argv)
        assert rc == 1 and out == "" and err.startswith("sealtrail: error: "), err
        assert err.count("\n") == 1 and words in err, err


def test_cli_verify_shows_a_progress_bar_on_a_terminal(
    tmp_path: Path, store: Store, store_url: str, web: StoredJournal,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    coll = collector_dir(tmp_path, store_url)
    with capsys.disabled():
        terminal, stdout = Terminal(), io.StringIO()
        monkeypatch.setattr("sys.stderr", terminal)
        monkeypatch.setattr("sys.stdout", stdout)
        assert main(["collector", "verify", "--dir", str(coll)]) == 0
        monkeypatch.undo()
    assert "verifying" in terminal.getvalue() and "records" in terminal.getvalue()
    assert stdout.getvalue().startswith("web-01: OK")  # findings and results stay on stdout


def test_cli_verify_without_a_terminal_shows_no_bar(
    tmp_path: Path,
    store: Store,
    store_url: str,
    web: StoredJournal,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, _, err = run_cli(capsys, "collector", "verify", "--dir", collector_dir(tmp_path, store_url))
    assert rc == 0 and err == ""


def test_cli_verify_of_a_live_host_says_it_has_no_stop_yet_without_warning(
    tmp_path: Path, store: Store, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    live = StoredJournal(tmp_path, "db-01", 90, seal_every=40, close=False)
    live.enroll(store, 1)
    live.forward(store, batches=2)
    coll = collector_dir(tmp_path, store_url)
    rc, out, _ = run_cli(capsys, "collector", "verify", "--dir", coll)
    assert rc == 0 and "warning" not in out
    assert re.search(r", last seal at seq \d+; no stop record yet \(status ok\)$", out, re.M)
    rc, out, _ = run_cli(capsys, "collector", "verify", "--dir", coll, "--json")
    (host,) = json.loads(out)["hosts"]
    assert [f["severity"] for f in host["findings"]] == ["warning"]  # all of them, in JSON
