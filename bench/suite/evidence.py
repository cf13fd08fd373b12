"""Evidence cost: verifying sealtrail's journal against verifying a journald journal sealed
with Forward Secure Sealing, holding the same records; bytes per record of each.

sealtrail: journal_bench writes N records of the agent's mix with the real writer (seal every
100 ms or 8192 records), then `sealtrail journal verify` (the CLI, wall time) checks it.

journald: the same N records, one journal entry each (every top-level field a journal field,
nested values as JSON, a MESSAGE line), in Journal Export Format, written by
`systemd-journal-remote --seal=yes` into a directory of ours, with a sealing key made by
`journalctl --setup-keys`. Both tools take the key and machine id from fixed places
(/var/log/journal/MACHINE-ID/fss, /etc/machine-id), so they run in a private mount namespace
(`unshare -m`): a tmpfs over /var/log/journal and a machine id of ours bound over
/etc/machine-id; the machine's own journal and id are never touched. Then
`journalctl --directory=D --verify --verify-key=KEY` (wall time) checks every file.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import journal_bench
from benchlib import REPO

SEALTRAIL = REPO / ".venv" / "bin" / "sealtrail"
JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
MACHINE_ID = "5ea17a11be4c45e0a5ea17a11be4c45e"
#: the entries' wall-clock times start this far after now: journal-remote writes the seal tags
#: by the real clock, and an entry older than a tag already written fails verification
#: ("Older entry after newer tag"); writing and keying take seconds
START_AHEAD_US = 120_000_000

SETUP = rf"""
set -e
D=$1; INTERVAL=$2
mount -t tmpfs tmpfs /var/log/journal
echo {MACHINE_ID} > "$D/machine-id"
mount --bind "$D/machine-id" /etc/machine-id
mkdir -p /var/log/journal/{MACHINE_ID}
journalctl --setup-keys --interval="$INTERVAL" > "$D/verify-key" 2> "$D/setup-keys.log"
mkdir "$D/journal"
start=$(date +%s%N)
{JOURNAL_REMOTE} --seal=yes --output="$D/journal/remote.journal" "$D/export" 2> "$D/remote.log"
echo $(( $(date +%s%N) - start )) > "$D/remote-ns"
"""


def export_entry(rtype: str, fields: dict[str, Any], i: int, start_us: int) -> bytes:
    """One record as a Journal Export Format entry, ``i`` x 10 µs after ``start_us``: FSS
    seals by the entries' wall-clock time, which must not be older than the sealing key, and
    10 µs apart is 100 k records/s, the rate sealtrail's writer appends at."""
    lines = [
        f"__REALTIME_TIMESTAMP={start_us + 10 * i}",
        f"__MONOTONIC_TIMESTAMP={10 * i}",
        f"_BOOT_ID={MACHINE_ID}",
        f"MESSAGE={rtype} {fields.get('kind', fields.get('action', ''))}",
        f"SEALTRAIL_TYPE={rtype}",
    ]
    for k, v in fields.items():
        text = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        lines.append(f"{k.upper()}={text}")
    return ("\n".join(lines) + "\n\n").encode()


def used_bytes(path: Path) -> int:
    """Bytes of a journal file up to the end of its last object (header.tail_object_offset +
    that object's size): the file itself is allocated in 8 MiB steps."""
    with path.open("rb") as f:
        head = f.read(160)
        tail = struct.unpack_from("<Q", head, 136)[0]
        f.seek(tail + 8)
        size = struct.unpack("<Q", f.read(8))[0]
    return int(tail + ((size + 7) & ~7))


def timed(cmd: list[str], repeat: int) -> tuple[list[float], subprocess.CompletedProcess[str]]:
    walls, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
    assert out is not None
    return walls, out


def sealtrail_side(
    records: list[tuple[str, dict[str, Any]]], work: Path, repeat: int
) -> dict[str, Any]:
    root = work / "sealtrail"
    append_rate = journal_bench.bench_append(root, records)
    segs = sorted((root / "journal").glob("seg-*"))
    nrec = sum(p.read_bytes().count(b"\n") for p in segs)
    seals = sum(p.read_bytes().count(b'"type":"seal"') for p in segs)
    cmd = [str(SEALTRAIL), "journal", "verify", "--journal", str(root / "journal"), "--key",
           str(root / "keys" / "journal.pub")]  # fmt: skip
    walls, out = timed(cmd, repeat)
    in_process = max(journal_bench.bench_verify(root, None)[0] for _ in range(repeat))
    size = sum(p.stat().st_size for p in segs)
    return {
        "records": nrec, "events": len(records), "seals": seals, "bytes": size,
        "bytes_per_record": size / nrec, "append_per_s": append_rate, "verify_wall_s": walls,
        "verify_per_s": nrec / min(walls), "verify_in_process_per_s": in_process,
        "verify_rc": out.returncode,
        "verify_summary": (out.stdout.strip().splitlines() or [out.stderr.strip()])[-1],
        "seal_interval": "100 ms or 8192 records", "command": " ".join(cmd),
    }  # fmt: skip


def journald_side(
    records: list[tuple[str, dict[str, Any]]], work: Path, repeat: int, interval: str
) -> dict[str, Any]:
    d = work / f"journald-{interval}"
    d.mkdir(parents=True)
    start_us = time.time_ns() // 1000 + START_AHEAD_US
    with (d / "export").open("wb") as f:
        for i, (rtype, fields) in enumerate(records):
            f.write(export_entry(rtype, fields, i, start_us))
    setup = subprocess.run(["unshare", "-m", "bash", "-c", SETUP, "setup", str(d), interval],
                           capture_output=True, text=True)  # fmt: skip
    if setup.returncode:
        logs = " ".join((d / n).read_text()[-500:] for n in ("setup-keys.log", "remote.log")
                        if (d / n).exists())  # fmt: skip
        return {"error": f"FSS set-up failed ({setup.returncode}): {setup.stderr[-800:]} {logs}"}
    key = (d / "verify-key").read_text().strip()
    files = sorted((d / "journal").glob("*.journal"))
    cmd = ["journalctl", f"--directory={d / 'journal'}", "--verify", f"--verify-key={key}"]
    walls, out = timed(cmd, repeat)
    headers = [subprocess.run(["journalctl", f"--file={p}", "--header"], capture_output=True,
                              text=True).stdout for p in files]  # fmt: skip

    def count(name: str) -> int:
        return sum(int(m[1]) for h in headers for m in re.finditer(rf"^{name}: (\d+)", h, re.M))

    entries = count("Entry objects")
    used = sum(used_bytes(p) for p in files)
    alloc = sum(p.stat().st_size for p in files)
    sealed = "SEALED" in "".join(headers)
    write_s = int((d / "remote-ns").read_text()) / 1e9
    return {
        "entries": entries, "files": len(files), "tags": count("Tag objects"), "sealed": sealed,
        "bytes_used": used, "bytes_allocated": alloc, "bytes_per_record": used / max(entries, 1),
        "bytes_allocated_per_record": alloc / max(entries, 1), "write_per_s": entries / write_s,
        "verify_wall_s": walls, "verify_per_s": entries / min(walls),
        "verify_rc": out.returncode,
        "verify_summary": f"{(out.stdout + out.stderr).count('PASS: ')} files PASS, "
        f"{(out.stdout + out.stderr).count('FAIL: ')} FAIL",
        "verify_output": (out.stdout + out.stderr)[-2000:],
        "seal_interval": interval, "command": " ".join([*cmd[:-1], "--verify-key=KEY"]),
        "export_bytes": (d / "export").stat().st_size,
    }  # fmt: skip


def measure(n: int, work: Path, repeat: int) -> dict[str, Any]:
    rnd = random.Random(5)
    records = [journal_bench.realistic(rnd, i) for i in range(n)]
    try:
        return {
            "records": n,
            "sealtrail": sealtrail_side(records, work, repeat),
            "journald": journald_side(records, work, repeat, "15min"),
            "journald_100ms": journald_side(records, work, repeat, "100ms"),
        }
    finally:
        from agent.journal import protect

        if (work / "sealtrail" / "journal").exists():
            protect.clear_all(work / "sealtrail" / "journal")
        shutil.rmtree(work, ignore_errors=True)
