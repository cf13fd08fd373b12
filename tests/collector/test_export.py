"""``collector export``: the stored records of a host as a journal directory, which
``sealtrail journal verify`` checks on its own (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.collector.errors import CollectorError
from agent.collector.export import export_host
from agent.collector.store import Store
from agent.journal.keys import PublicKey
from agent.journal.segments import list_segments
from tests.collector.stored import StoredJournal, collector_dir, forwarded, run_cli
from tests.collector.test_store import tamper


@pytest.fixture
def web(tmp_path: Path, store: Store) -> StoredJournal:
    return forwarded(store, tmp_path, "web-01", 500, seal_every=30, rotate_every=200)


def test_export_then_journal_verify_ok_and_byte_identical(
    tmp_path: Path,
    store: Store,
    store_url: str,
    web: StoredJournal,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "export"
    rc, stdout, err = run_cli(
        capsys, "collector", "export", "--dir", collector_dir(tmp_path, store_url),
        "--host", "web-01", "--out", out,
    )  # fmt: skip
    assert rc == 0, err
    assert stdout.startswith(f"exported {len(web.lines)} records of host web-01 to {out} in 1 ")
    assert f"sealtrail journal verify --journal {out} --key {out / 'journal.pub'}" in err
    assert sorted(p.name for p in out.iterdir()) == ["journal.pub", "seg-000001.jsonl"]
    assert (out / "seg-000001.jsonl").read_bytes() == web.bytes
    assert PublicKey.load(out / "journal.pub") == web.genesis
    assert (out.stat().st_mode & 0o777, (out / "seg-000001.jsonl").stat().st_mode & 0o777) == (
        0o700,
        0o640,
    )
    rc, stdout, err = run_cli(
        capsys, "journal", "verify", "--journal", out, "--key", out / "journal.pub", "--strict"
    )
    assert rc == 0, stdout
    assert stdout.startswith(f"journal OK: {len(web.lines)} records in 1 segments, ")
    assert "2 key rotations" in stdout and "ends with the agent's stop and final seal" in stdout


def test_segments_are_split_as_the_writer_splits_them(
    tmp_path: Path, store: Store, web: StoredJournal
) -> None:
    """The journal was written with 6000-byte segments; exported with the same size, every
    segment file is the writer's, byte for byte."""
    done = export_host(store, "web-01", tmp_path / "export", segment_bytes=6000)
    written = [(p.name, p.read_bytes()) for _, p in list_segments(web.journal.dir)]
    exported = [(p.name, p.read_bytes()) for p in done.segments]
    assert len(written) > 3 and exported == written
    assert done.records == len(web.lines) and done.key_id == web.genesis.key_id


def test_a_tampered_store_exports_as_stored_and_journal_verify_finds_it(
    tmp_path: Path,
    store: Store,
    store_url: str,
    web: StoredJournal,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seq = web.seq_of(b'"pid":1300,')
    changed = web.lines[seq].replace(b'"pid":1300,', b'"pid":1301,')
    tamper(store_url, "web-01", seq, line=changed)
    out = tmp_path / "export"
    export_host(store, "web-01", out)
    assert (out / "seg-000001.jsonl").read_bytes() == web.bytes.replace(web.lines[seq], changed)
    rc, stdout, _ = run_cli(
        capsys, "journal", "verify", "--journal", out, "--key", out / "journal.pub"
    )
    assert rc == 1 and f"error: record {seq} in seg-000001.jsonl" in stdout


def test_export_refuses_a_non_empty_out_and_writes_nothing(
    tmp_path: Path,
    store: Store,
    store_url: str,
    web: StoredJournal,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    directory = collector_dir(tmp_path, store_url)
    base = ["collector", "export", "--dir", directory, "--store", store_url]
    rc, stdout, err = run_cli(capsys, *base, "--host", "web-01", "--out", out)
    assert rc == 1 and stdout == "" and err.count("\n") == 1
    assert "is not empty" in err and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    for argv, words in [
        (["--host", "nope", "--out", tmp_path / "x"], "no host 'nope' is enrolled"),
        (["--host", "web-01", "--out", out / "notes.txt"], "exists and is not a directory"),
        (["--host", "web-01", "--out", tmp_path / "y", "--segment-bytes", "0"], "at least 1"),
    ]:
        rc, stdout, err = run_cli(capsys, *base, *argv)
        assert rc == 1 and err.startswith("sealtrail: error: ") and err.count("\n") == 1, err
        assert words in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    # an empty directory is fine
    (tmp_path / "empty").mkdir()
    assert run_cli(capsys, *base, "--host", "web-01", "--out", tmp_path / "empty")[0] == 0


def test_a_host_without_records_has_nothing_to_export(
    tmp_path: Path, store: Store, web: StoredJournal
) -> None:
    StoredJournal(tmp_path, "new-01", 1).enroll(store, 1, fingerprint="e" * 64)
    with pytest.raises(CollectorError, match="host new-01 has no records yet"):
        export_host(store, "new-01", tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_a_failed_export_removes_what_it_wrote(
    tmp_path: Path, store: Store, web: StoredJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.collector import export

    def fail(path: Path, data: bytes, mode: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "create_file", fail)
    with pytest.raises(CollectorError, match=r"cannot export to .*: No space left on device"):
        export_host(store, "web-01", tmp_path / "export", segment_bytes=6000)
    assert not (tmp_path / "export").exists()
