"""`sealtrail journal ...` and `sealtrail keys init` through ``agent.cli.main``."""

from __future__ import annotations

import json
import logging
import queue
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import journal as journal_cli
from agent.cli import main
from agent.journal.query import parse_time
from agent.journal.reader import latest_checkpoint

from .conftest import Journal


@pytest.fixture(autouse=True)
def _no_stale_log_handlers() -> Iterator[None]:
    """``main`` configures logging onto the captured stderr; drop that handler afterwards."""
    yield
    logging.getLogger().handlers.clear()


@pytest.fixture
def filled(journal: Journal) -> Journal:
    journal.fill(120, seal_every=15, rotate_every=50)
    return journal


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_keys_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "keys", "init", "--keys", str(tmp_path / "k"))
    assert rc == 0 and out.startswith("sealtrail-ed25519 ") and "enroll" in err
    assert (tmp_path / "k" / "journal.pub").read_text() == out
    (private,) = (tmp_path / "k").glob("epoch-*.key")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    rc, _, err = run(capsys, "keys", "init", "--keys", str(tmp_path / "k"))
    assert rc == 1 and "already exists" in err


def test_verify_ok_and_json(filled: Journal, capsys: pytest.CaptureFixture[str]) -> None:
    pub = str(filled.keys / "journal.pub")
    rc, out, _ = run(capsys, "journal", "verify", "--journal", str(filled.dir), "--key", pub)
    assert rc == 0 and out.startswith("journal OK:") and "2 key rotations" in out
    rc, out, _ = run(
        capsys,
        "journal",
        "verify",
        "--journal",
        str(filled.dir),
        "--key",
        pub,
        "--json",
        "--strict",
    )
    report = json.loads(out)
    assert rc == 0 and report["ok"] and report["rotations"] == 2 and report["findings"] == []


def test_verify_fails_naming_seq_segment_offset(
    filled: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    seg = filled.segments()[1]
    lines = seg.read_bytes().splitlines()
    offset = len(lines[0]) + 1 + len(lines[1]) + 1
    seq = json.loads(lines[2])["seq"]
    lines[2] = lines[2].replace(b'"pid":', b'"pid":9', 1)
    filled.rewrite(seg, lines)
    pub = str(filled.keys / "journal.pub")
    rc, out, _ = run(capsys, "journal", "verify", "--journal", str(filled.dir), "--key", pub)
    assert rc == 1 and "journal FAILED" in out
    assert f"error: record {seq} in {seg.name} at byte {offset}: hash mismatch" in out


def test_verify_strict_fails_on_a_journal_cut_at_a_seal(
    filled: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    last = filled.segments()[-1]
    lines = last.read_bytes().splitlines()
    assert [json.loads(ln)["type"] for ln in lines[-2:]] == ["stop", "seal"]
    if len(lines) > 2:  # delete the stop record and its seal: the journal ends at a seal
        filled.rewrite(last, lines[:-2])
    else:
        last.unlink()
    base = ["journal", "verify", "--journal", str(filled.dir), "--key"]
    base.append(str(filled.keys / "journal.pub"))
    rc, out, _ = run(capsys, *base, "--strict")
    assert rc == 1 and "journal FAILED: 1 errors" in out
    assert "error: record" in out and "does not end with the agent's stop record" in out
    rc, out, _ = run(capsys, *base)
    assert rc == 0 and "warning: record" in out and "cut or crash" in out


def test_verify_without_key_names_the_default_and_the_option(
    filled: Journal,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "no-keys" / "journal.pub"
    monkeypatch.setattr(journal_cli, "_DEFAULT_KEY", missing)
    rc, _, err = run(capsys, "journal", "verify", "--journal", str(filled.dir))
    assert rc == 1 and str(missing) in err and "--key PUB" in err
    assert "Traceback" not in err


def test_verify_against_and_unsealed_tail_strict(
    filled: Journal, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub = str(filled.keys / "journal.pub")
    rc, out, _ = run(capsys, "journal", "checkpoint", "--journal", str(filled.dir))
    cp = tmp_path / "cp.json"
    cp.write_text(out)
    assert rc == 0 and json.loads(out)["format"] == "sealtrail-checkpoint/v1"
    w = filled.writer()  # a clean reopen, then records nobody sealed yet
    w.append("event", {"kind": "exec"})
    base = ["journal", "verify", "--journal", str(filled.dir), "--key", pub]
    rc, out, _ = run(capsys, *base, "--against", str(cp))
    assert rc == 0 and "unsealed tail, 1 records" in out
    rc, out, _ = run(capsys, *base, "--strict")
    assert rc == 1 and "unsealed tail, 1 records" in out
    w.close()
    for seg in filled.segments()[-2:]:
        seg.unlink()
    rc, out, _ = run(capsys, *base, "--against", str(cp))
    assert rc == 1 and "truncated" in out


def test_prove_and_verify_proof(
    filled: Journal, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub = str(filled.keys / "journal.pub")
    rc, out, _ = run(capsys, "journal", "prove", "42", "--journal", str(filled.dir))
    assert rc == 0
    proof = tmp_path / "proof.json"
    proof.write_text(out)
    rc, out, _ = run(capsys, "journal", "verify-proof", str(proof), "--key", pub)
    assert rc == 0 and out.startswith("OK: record 42 ") and "2 rotations" in out
    doc = json.loads(proof.read_text())
    doc["record"] = doc["record"].replace('"pid":', '"pid":1', 1)
    proof.write_text(json.dumps(doc))
    rc, _, err = run(capsys, "journal", "verify-proof", str(proof), "--key", pub)
    assert rc == 1 and "not included" in err
    other = tmp_path / "other"
    run(capsys, "keys", "init", "--keys", str(other))
    proof.write_text(out if out else json.dumps(doc))
    rc, out, _ = run(capsys, "journal", "prove", "42", "--journal", str(filled.dir))
    proof.write_text(out)
    rc, _, err = run(
        capsys, "journal", "verify-proof", str(proof), "--key", str(other / "journal.pub")
    )
    assert rc == 1 and "rotation" in err
    signed = latest_checkpoint(filled.dir)
    rc, _, err = run(
        capsys, "journal", "prove", str(signed.checkpoint.size + 5), "--journal", str(filled.dir)
    )
    assert rc == 1 and "not covered" in err


def test_tail_filters_and_json(filled: Journal, capsys: pytest.CaptureFixture[str]) -> None:
    j = ["--journal", str(filled.dir)]
    rc, out, _ = run(capsys, "journal", "tail", *j, "-n", "5", "--json")
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 5
    stored = b"".join(p.read_bytes() for p in filled.segments()).decode().splitlines()
    assert lines == stored[-5:]  # exactly as stored
    rc, out, _ = run(
        capsys, "journal", "tail", *j, "-n", "1000", "--verdict", "deny", "--rule", "r1"
    )
    rows = out.splitlines()
    assert rows and all(" verdict " in r and "deny" in r and "rule=r1" in r for r in rows)
    assert "\x1b[" not in out  # no colour when not a terminal
    rc, out, _ = run(capsys, "journal", "tail", *j, "--type", "seal,key_rotation", "-n", "100")
    kinds = {r.split()[3] for r in out.splitlines()}
    assert kinds == {"seal", "key_rotation"}
    rc, out, _ = run(capsys, "journal", "tail", *j, "--since", "1h", "--type", "start")
    assert len(out.splitlines()) == 1
    rc, out, _ = run(capsys, "journal", "tail", *j, "--since", "@9999999999")
    assert out == ""


def test_tail_rows_are_aligned(filled: Journal, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "journal", "tail", "--journal", str(filled.dir), "-n", "30")
    rows = out.splitlines()
    assert len({len(r.split(" verdict ")[0]) for r in rows if " verdict " in r}) == 1
    starts = {r.index(r.split()[3]) for r in rows}
    assert len(starts) == 1  # the type column starts at the same place on every row


def test_since_forms() -> None:
    assert parse_time("10m", now=1000.0) == int(400 * 1e9)
    assert parse_time("@12.5") == 12_500_000_000
    assert parse_time("2026-01-01T00:00:00+00:00") == 1767225600 * 10**9
    with pytest.raises(ValueError, match="not a time"):
        parse_time("the day before")


def test_tail_follow_crosses_segment_rotation(journal: Journal) -> None:
    w = journal.writer(segment_bytes=2000)
    w.append("start", {})
    w.flush_and_seal()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "journal",
            "tail",
            "-f",
            "-n",
            "0",
            "--json",
            "--type",
            "event",
            "--journal",
            str(journal.dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    stdout = proc.stdout
    assert stdout is not None
    printed: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stdout:
            printed.put(line)

    threading.Thread(target=pump, daemon=True).start()

    def next_pid(deadline: float) -> int | None:
        """The pid of the next event tail prints, None if it prints none before ``deadline``."""
        try:
            line = printed.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        return int(json.loads(line)["pid"])

    try:
        # -n 0 starts at the end tail finds: on a loaded machine that may be after records
        # written "soon after" it started, so mark until tail shows it is following.
        deadline = time.monotonic() + 60
        while True:
            w.append("event", {"kind": "exec", "pid": -1})
            w.flush_and_seal()
            if next_pid(time.monotonic() + 0.5) == -1:
                break
            assert time.monotonic() < deadline, "journal tail -f printed nothing in 60 s"
        while (pid := next_pid(time.monotonic() + 0.5)) is not None:  # later markers
            assert pid == -1
        first_segments = len(journal.segments())
        for i in range(60):
            w.append("event", {"kind": "exec", "pid": i})
            if i % 10 == 9:
                w.flush_and_seal()
        w.close()
        assert len(journal.segments()) > first_segments + 1
        got = [next_pid(time.monotonic() + 30) for _ in range(60)]
        assert got == list(range(60))
    finally:
        proc.kill()
        proc.wait()


def test_verify_progress_bar_on_a_terminal_only(
    filled: Journal, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(journal_cli, "_PROGRESS_MIN_BYTES", 0)
    pub = str(filled.keys / "journal.pub")
    argv = ["journal", "verify", "--journal", str(filled.dir), "--key", pub]
    _, _, err = run(capsys, *argv)
    assert "verifying [" not in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    rc, _, err = run(capsys, *argv)
    assert rc == 0 and "verifying [" in err


def test_consistency_proof_between_two_checkpoints(
    filled: Journal, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub = str(filled.keys / "journal.pub")
    j = ["--journal", str(filled.dir)]
    _, out, _ = run(capsys, "journal", "checkpoint", *j)
    old = tmp_path / "old.json"
    old.write_text(out)
    filled.fill(90, seal_every=15, rotate_every=40)  # more records, seals and a rotation
    rc, out, _ = run(capsys, "journal", "prove", "--consistency-from", str(old), *j)
    proof = tmp_path / "consistency.json"
    proof.write_text(out)
    doc = json.loads(out)
    assert rc == 0 and doc["format"] == "sealtrail-consistency-proof/v1" and doc["path"]
    assert doc["new"]["checkpoint"]["size"] > doc["old"]["checkpoint"]["size"]
    rc, out, _ = run(capsys, "journal", "verify-proof", str(proof), "--key", pub)
    assert rc == 0 and out.startswith("OK: the checkpoint of size ") and "extends" in out
    doc["path"][0] = "00" * 32  # a proof that does not lead to the roots
    proof.write_text(json.dumps(doc))
    rc, _, err = run(capsys, "journal", "verify-proof", str(proof), "--key", pub)
    assert rc == 1 and "does not extend" in err and "Traceback" not in err
    rc, _, err = run(capsys, "journal", "prove", "3", "--consistency-from", str(old), *j)
    assert rc != 0 and "either SEQ or --consistency-from" in err


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("rotations",), "nope", "rotations"),
        (("rotations",), [1], "rotations[0]"),
        (("seal_seq",), "7", "seal_seq"),
        (("checkpoint", "size"), "007", "size"),
        (("checkpoint", "ts"), "007", "ts"),
        (("checkpoint", "ts"), 7, "ts"),
        (("sig",), 5, "sig"),
        (("checkpoint",), [], "checkpoint"),
    ],
)
def test_verify_against_a_malformed_checkpoint_is_one_clear_line(
    filled: Journal,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    path: tuple[str, ...],
    value: object,
    named: str,
) -> None:
    _, out, _ = run(capsys, "journal", "checkpoint", "--journal", str(filled.dir))
    doc = json.loads(out)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    cp = tmp_path / "cp.json"
    cp.write_text(json.dumps(doc))
    pub = str(filled.keys / "journal.pub")
    argv = ["journal", "verify", "--journal", str(filled.dir), "--key", pub, "--against"]
    rc, out, err = run(capsys, *argv, str(cp))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 1 and len(lines) == 1 and named in lines[0], err
    assert "Traceback" not in err and out == ""


def test_hostile_documents_are_one_line_errors_not_tracebacks(
    filled: Journal, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub = str(filled.keys / "journal.pub")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    rc, _, err = run(
        capsys, "journal", "verify", "--journal", str(filled.dir), "--key", pub, "--against",
        str(deep),
    )  # fmt: skip
    assert rc == 1 and "nested too deeply" in err and "Traceback" not in err
    rc, _, err = run(capsys, "journal", "verify-proof", str(deep), "--key", pub)
    assert rc == 1 and "nested too deeply" in err and "Traceback" not in err
    rc, out, _ = run(capsys, "journal", "checkpoint", "--journal", str(filled.dir))
    doc = json.loads(out)
    doc["rotations"][0] = {**doc["rotations"][0], "type": "verdict", "action": [], "policy": "p",
                           "rule": "r"}  # fmt: skip
    cp = tmp_path / "cp.json"
    cp.write_text(json.dumps(doc))
    rc, _, err = run(
        capsys, "journal", "verify", "--journal", str(filled.dir), "--key", pub, "--against",
        str(cp),
    )  # fmt: skip
    assert rc == 1 and "verdict action" in err and "Traceback" not in err
