"""The embedded store: one SQLite file in WAL mode with ``synchronous=FULL``.

Why FULL: in WAL mode, FULL fsyncs the write-ahead log at every commit, so a transaction that
returned is on disk before the collector signs a receipt for it, at the cost of one fsync per
batch (the least any durable commit costs). NORMAL syncs the log only at checkpoints: a power
loss may then take back commits already acknowledged, which a signed receipt must never allow;
forcing a checkpoint after each commit to avoid that would copy pages into the database file
and fsync both files, more work for the same guarantee.

One connection, behind a lock, serves every thread of the process (SQLite has one writer at a
time anyway); other processes wait for the write lock up to ``BUSY_SECONDS``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.collector.errors import StoreError
from agent.collector.store.sql import Duplicate, SqlStore

BUSY_SECONDS = 30.0
TYPES = {
    "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "int": "INTEGER",
    "blob": "BLOB",
    "without_rowid": " WITHOUT ROWID",
    "lines_compression": "",
}


class SqliteStore(SqlStore[sqlite3.Cursor]):
    def __init__(self, path: Path, *, quarantine_limit: int) -> None:
        self.path = Path(path)
        self.quarantine_limit = quarantine_limit
        self._lock = threading.Lock()
        self._conn = self._connect()
        try:
            self._migrate(TYPES)
        except BaseException:
            self._conn.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            # the store holds every host's journal: readable by its owner only, from creation
            # (SQLite gives the -wal and -shm files the database file's mode)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            conn = sqlite3.connect(
                self.path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from None
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(
                    f"store {self.path}: SQLite cannot use WAL mode here (got {mode!r}); put the "
                    "store on a local filesystem"
                )
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA cache_size = -65536")  # 64 MiB
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"store {self.path}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                # IMMEDIATE takes the write lock now: the head read and its update cannot be
                # interleaved with another process's transaction
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                except BaseException:
                    self._conn.rollback()
                    raise
                cur.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                if self._conn.in_transaction:
                    self._conn.rollback()
                raise Duplicate(f"store {self.path}: {exc}") from None
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.rollback()
                raise StoreError(f"store {self.path}: {exc}") from None
            finally:
                cur.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                yield cur
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from None
            finally:
                cur.close()

    def _lock_schema(self, cur: sqlite3.Cursor) -> None:
        pass  # BEGIN IMMEDIATE already excludes every other writer

    def close(self) -> None:
        with self._lock:
            self._conn.close()
