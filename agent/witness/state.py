"""The witness's state: per log the latest checkpoint it cosigned, and conflicting checkpoints.

``state.sqlite`` (WAL, ``synchronous = FULL``: a commit is on disk when it returns) holds, per
origin, the size, root and note of the latest cosigned checkpoint, updated by compare-and-swap
on the size in one transaction, with a counter of updates. ``conflicts`` keeps every validly
signed checkpoint that contradicted what the witness had cosigned (same size and another root,
or no valid consistency proof), with the note it had cosigned: a pair of log-signed notes that
prove a split view to anyone.

Updates are committed in groups (``advance`` takes every update judged while the previous
group was being written: one transaction, one fdatasync), and no answer is sent before its
group is on disk.

Rollback protection: after each commit the witness appends ``<counter> <origin hash> <size>
<root>`` to the high-water file and fdatasyncs it before it answers. At start the state's
counter must be at least the file's last one; a state restored from a backup or a snapshot that
the file has outgrown is refused (``StateRollback``), so the witness never cosigns from an old
view. This relies on the two files not being rolled back together: put the high-water file on
other storage than the state (``highwater`` in witness.toml), and the witness sets FS_APPEND_FL
on it where the filesystem allows (then even root must clear the flag to shorten it). It does not
protect against someone who rewinds both; a hardware monotonic counter (a TPM NV index) would.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.c2sp.keys import b64encode
from agent.journal import protect
from agent.journal.durable import write_all
from agent.witness.errors import StateRollback, WitnessError

#: Conflicting checkpoints kept per log at most (the oldest are the proof: later ones dropped).
MAX_CONFLICTS = 1000
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS logs (origin TEXT PRIMARY KEY, size INTEGER NOT NULL,
        root BLOB NOT NULL, note BLOB NOT NULL, updated_ns INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS conflicts (id INTEGER PRIMARY KEY, origin TEXT NOT NULL,
        received_ns INTEGER NOT NULL, reason TEXT NOT NULL, note BLOB NOT NULL,
        cosigned BLOB NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER)",
    "INSERT OR IGNORE INTO counter (id, n) VALUES (1, 0)",
)


@dataclass(frozen=True)
class Cosigned:
    origin: str
    size: int
    root: bytes
    note: bytes
    updated_ns: int


@dataclass(frozen=True)
class Update:
    """A cosigned checkpoint to record: ``origin`` goes from ``old_size`` to ``size``."""

    origin: str
    old_size: int
    size: int
    root: bytes
    note: bytes


@dataclass(frozen=True)
class Conflict:
    origin: str
    received_ns: int
    reason: str
    note: bytes
    cosigned: bytes


def origin_hash(origin: str) -> str:
    return hashlib.sha256(origin.encode("utf-8")).hexdigest()


class WitnessState:
    def __init__(self, path: Path, highwater: Path) -> None:
        self.path = path
        self.highwater = highwater
        self._lock = threading.Lock()
        try:
            fresh = not path.exists()
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            for statement in _SCHEMA:
                self._db.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise WitnessError(f"cannot open the witness state {path}: {exc}") from None
        self.counter = int(self._db.execute("SELECT n FROM counter").fetchone()[0])
        self._check_highwater(fresh)
        try:
            self._hw = os.open(
                highwater, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise WitnessError(
                f"cannot open the high-water file {highwater}: {exc.strerror}"
            ) from None
        protect.set_flag(highwater, protect.FS_APPEND_FL, True)

    def _check_highwater(self, fresh: bool) -> None:
        try:
            data = self.highwater.read_bytes()
        except FileNotFoundError:
            if self.counter or not fresh:
                raise StateRollback(
                    f"the high-water file {self.highwater} is missing but the state "
                    f"{self.path} exists (update {self.counter}): restore the file, or start "
                    "a new witness with a new key"
                ) from None
            return
        except OSError as exc:
            raise WitnessError(f"cannot read {self.highwater}: {exc.strerror}") from None
        lines = data.rstrip(b"\n").split(b"\n") if data.strip() else []
        last = 0
        if lines:
            try:
                last = int(lines[-1].split()[0])
            except (ValueError, IndexError):
                raise WitnessError(f"{self.highwater}: the last line is not a counter") from None
        if last > self.counter:
            raise StateRollback(
                f"the state {self.path} is older than what this witness cosigned: it holds "
                f"update {self.counter}, {self.highwater} records update {last}; cosigning from "
                "it could sign a checkpoint inconsistent with one already cosigned (a restored "
                "backup or snapshot?): refusing to start"
            )

    def latest(self, origin: str) -> Cosigned | None:
        with self._lock:
            row = self._db.execute(
                "SELECT size, root, note, updated_ns FROM logs WHERE origin = ?", (origin,)
            ).fetchone()
        if row is None:
            return None
        return Cosigned(origin, int(row[0]), bytes(row[1]), bytes(row[2]), int(row[3]))

    def logs(self) -> list[Cosigned]:
        with self._lock:
            rows = self._db.execute(
                "SELECT origin, size, root, note, updated_ns FROM logs ORDER BY origin"
            ).fetchall()
        return [Cosigned(r[0], int(r[1]), bytes(r[2]), bytes(r[3]), int(r[4])) for r in rows]

    def advance(self, updates: Sequence[Update], now_ns: int) -> None:
        """Make each update (in order) the latest of its log, every one by compare-and-swap on
        the size it extends, in one transaction; then one line per update in the high-water
        file and one fdatasync. Durable when it returns; WitnessError (nothing applied, or the
        high-water file not written) otherwise."""
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                for u in updates:
                    row = db.execute(
                        "SELECT size FROM logs WHERE origin = ?", (u.origin,)
                    ).fetchone()
                    if (0 if row is None else int(row[0])) != u.old_size:
                        raise WitnessError(
                            f"witness state {self.path}: log {u.origin} is no longer at size "
                            f"{u.old_size} (is another witness process using this state?)"
                        )
                    db.execute(
                        "INSERT INTO logs (origin, size, root, note, updated_ns)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET"
                        " size = excluded.size, root = excluded.root, note = excluded.note,"
                        " updated_ns = excluded.updated_ns",
                        (u.origin, u.size, u.root, u.note, now_ns),
                    )
                db.execute("UPDATE counter SET n = n + ?", (len(updates),))
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise WitnessError(f"witness state {self.path}: {exc}") from None
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            lines = []
            for u in updates:
                self.counter += 1
                lines.append(
                    f"{self.counter} {origin_hash(u.origin)} {u.size} {b64encode(u.root)}\n"
                )
            try:
                write_all(self._hw, "".join(lines).encode("ascii"))
                os.fdatasync(self._hw)
            except OSError as exc:
                raise WitnessError(f"cannot write {self.highwater}: {exc.strerror}") from None

    def conflict(self, origin: str, reason: str, note: bytes, cosigned: bytes, now_ns: int) -> None:
        """Keep a validly signed checkpoint that contradicts the cosigned one (proof)."""
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM conflicts WHERE origin = ?", (origin,)
            ).fetchone()
            if count >= MAX_CONFLICTS:
                return
            self._db.execute(
                "INSERT INTO conflicts (origin, received_ns, reason, note, cosigned)"
                " VALUES (?, ?, ?, ?, ?)",
                (origin, now_ns, reason, note, cosigned),
            )

    def conflicts(self, origin: str | None = None) -> list[Conflict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT origin, received_ns, reason, note, cosigned FROM conflicts"
                " WHERE ? IS NULL OR origin = ? ORDER BY id",
                (origin, origin),
            ).fetchall()
        return [Conflict(r[0], int(r[1]), r[2], bytes(r[3]), bytes(r[4])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
            os.close(self._hw)
