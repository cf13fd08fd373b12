"""The store in SQL, once for both backends; ``sqlite`` and ``postgres`` supply connections,
transactions, the bulk insert and their column types.

Statements use ``?`` placeholders (the PostgreSQL backend translates them). The head advances
only by ``UPDATE heads SET size = new ... WHERE host_id = ? AND size = expected``, run *before*
the records are inserted: in PostgreSQL that row lock makes a second collector appending to the
same host wait, re-read the row and match nothing, so it returns False instead of colliding on
the records' primary key; in SQLite the write transaction (BEGIN IMMEDIATE) already serialises.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Generic, Protocol, TypeVar

from agent.collector.errors import EnrollmentConflict, StoreError, UnknownHost
from agent.collector.names import check_host_name
from agent.collector.store.base import Head, Host, QuarantineEntry, Status, Store
from agent.journal.keys import PublicKey
from agent.journal.record import is_hex64

SCHEMA_VERSION = 1
#: Rows per query when streaming records: about 2 MB of lines at a time.
CHUNK_ROWS = 4096
#: What one quarantined entry costs beside its body (row, reason), for the per-host bound.
_ENTRY_OVERHEAD = 256
_REASON_MAX = 4096

# Version 1 of the schema, for both backends; {id} {int} {blob} {without_rowid} are their types.
# records has no foreign key: each row would cost a lookup on the hot path, and every insert
# comes from ``append``, which has just resolved the host in the same transaction.
_SCHEMA_V1 = (
    """CREATE TABLE hosts (
        id {id}, name TEXT NOT NULL, fingerprint TEXT NOT NULL, genesis_key TEXT NOT NULL,
        enrolled_ns {int} NOT NULL, retired_ns {int})""",
    "CREATE UNIQUE INDEX hosts_name ON hosts (name) WHERE retired_ns IS NULL",
    "CREATE UNIQUE INDEX hosts_fingerprint ON hosts (fingerprint) WHERE retired_ns IS NULL",
    """CREATE TABLE heads (
        host_id {int} PRIMARY KEY REFERENCES hosts (id), size {int} NOT NULL, state TEXT,
        last_hash {blob}, checkpoint TEXT, last_seal_ns {int}, last_receive_ns {int},
        status TEXT NOT NULL, detail TEXT NOT NULL, updated_ns {int} NOT NULL,
        quarantine_dropped {int} NOT NULL)""",
    """CREATE TABLE records (
        host_id {int} NOT NULL, seq {int} NOT NULL, line {blob} NOT NULL, hash {blob} NOT NULL,
        PRIMARY KEY (host_id, seq)){without_rowid}""",
    """CREATE TABLE quarantine (
        id {id}, host_id {int} NOT NULL REFERENCES hosts (id), received_ns {int} NOT NULL,
        reason TEXT NOT NULL, size {int} NOT NULL, kept {int} NOT NULL, body {blob} NOT NULL)""",
    "CREATE INDEX quarantine_host ON quarantine (host_id, id)",
)
MIGRATIONS: tuple[tuple[str, ...], ...] = (_SCHEMA_V1,)

_ACTIVE = "SELECT id FROM hosts WHERE name = ? AND retired_ns IS NULL"
_HOST_COLUMNS = "name, fingerprint, genesis_key, enrolled_ns"


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> object: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


C = TypeVar("C", bound=Cursor)
T = TypeVar("T")


class Duplicate(StoreError):
    """A backend reports a unique-key violation (``enroll`` and ``append`` say what it means)."""


class SqlStore(Store, Generic[C]):
    """Everything but the connection; subclasses call ``_migrate`` once connected."""

    quarantine_limit: int

    @abstractmethod
    def _write(self) -> AbstractContextManager[C]:
        """One transaction, committed durably when the block ends, rolled back on an error;
        raises ``Duplicate`` for unique-key violations and ``StoreError`` for other errors."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[C]:
        """Statements that only read."""

    @abstractmethod
    def _insert_records(
        self, cur: C, host_id: int, start: int, lines: Sequence[bytes], hashes: Sequence[bytes]
    ) -> None:
        """Insert rows (host_id, start + i, lines[i], hashes[i]) in bulk."""

    @abstractmethod
    def _lock_schema(self, cur: C) -> None:
        """Keep other processes from migrating at the same time, until the transaction ends."""

    # ------------------------------------------------------------------------------ schema
    def _migrate(self, types: dict[str, str]) -> None:
        with self._write() as cur:
            self._lock_schema(cur)
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            cur.execute("SELECT version FROM schema_version")
            row = cur.fetchone()
            version = 0 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the store has schema version {version}, newer than this sealtrail "
                    f"({SCHEMA_VERSION}): upgrade sealtrail to use it"
                )
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    cur.execute(statement.format(**types))
            if row is None:
                cur.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version != SCHEMA_VERSION:
                cur.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    # ------------------------------------------------------------------------------ hosts
    def enroll(
        self,
        host: str,
        cert_fingerprint: str,
        genesis_key: str,
        now_ns: int,
        *,
        replace: bool = False,
    ) -> None:
        check_host_name(host)
        if not is_hex64(cert_fingerprint):
            raise StoreError("a certificate fingerprint is 64 lowercase hex digits (SHA-256)")
        key = PublicKey.from_line(genesis_key).to_line()
        try:
            with self._write() as cur:
                self._enroll(cur, host, cert_fingerprint, key, now_ns, replace)
        except Duplicate:  # another process enrolled the same name or certificate just now
            raise EnrollmentConflict(
                f"host {host} or its certificate was enrolled by someone else meanwhile; "
                "look with `sealtrail collector hosts` and enroll again"
            ) from None

    def _enroll(self, cur: C, host: str, fp: str, key: str, now_ns: int, replace: bool) -> None:
        cur.execute(
            "SELECT name FROM hosts WHERE fingerprint = ? AND retired_ns IS NULL AND name <> ?",
            (fp, host),
        )
        other = cur.fetchone()
        if other is not None:
            raise EnrollmentConflict(
                f"certificate {fp[:16]}... is already bound to host {other[0]}; every host "
                "needs a certificate of its own"
            )
        cur.execute(
            "SELECT id, fingerprint, genesis_key FROM hosts WHERE name = ? AND retired_ns IS NULL",
            (host,),
        )
        row = cur.fetchone()
        if row is not None:
            host_id, old_fp, old_key = int(row[0]), str(row[1]), str(row[2])
            if (old_fp, old_key) == (fp, key):
                return
            if not replace:
                what = "genesis journal key" if old_key != key else "certificate"
                raise EnrollmentConflict(
                    f"host {host} is enrolled with another {what}; pass --replace to bind the "
                    + (
                        "new key: a new journal for this name (the old records are kept aside)"
                        if old_key != key
                        else "new certificate (the old one stops working)"
                    )
                )
            if old_key == key:
                cur.execute("UPDATE hosts SET fingerprint = ? WHERE id = ?", (fp, host_id))
                return
            cur.execute("UPDATE hosts SET retired_ns = ? WHERE id = ?", (now_ns, host_id))
        cur.execute(
            "INSERT INTO hosts (name, fingerprint, genesis_key, enrolled_ns) VALUES (?, ?, ?, ?) "
            "RETURNING id",
            (host, fp, key, now_ns),
        )
        new_id = int(cur.fetchone()[0])
        cur.execute(
            "INSERT INTO heads (host_id, size, status, detail, updated_ns, quarantine_dropped) "
            "VALUES (?, 0, ?, '', ?, 0)",
            (new_id, Status.OK.value, now_ns),
        )

    def host(self, name: str) -> Host | None:
        with self._read() as cur:
            cur.execute(
                f"SELECT {_HOST_COLUMNS} FROM hosts WHERE name = ? AND retired_ns IS NULL", (name,)
            )
            row = cur.fetchone()
        return None if row is None else _host(row)

    def host_by_fingerprint(self, fingerprint: str) -> Host | None:
        with self._read() as cur:
            cur.execute(
                f"SELECT {_HOST_COLUMNS} FROM hosts WHERE fingerprint = ? AND retired_ns IS NULL",
                (fingerprint,),
            )
            row = cur.fetchone()
        return None if row is None else _host(row)

    def hosts(self) -> list[Host]:
        with self._read() as cur:
            cur.execute(
                f"SELECT {_HOST_COLUMNS} FROM hosts WHERE retired_ns IS NULL ORDER BY name", ()
            )
            return [_host(row) for row in cur.fetchall()]

    # ------------------------------------------------------------------------------ head
    def head(self, host: str) -> Head:
        with self._read() as cur:
            cur.execute(
                "SELECT size, state, last_hash, checkpoint, last_seal_ns, last_receive_ns, status,"
                " detail, updated_ns, quarantine_dropped FROM heads"
                f" WHERE host_id = ({_ACTIVE})",
                (host,),
            )
            row = cur.fetchone()
        if row is None:
            raise _unknown(host)
        return Head(
            host=host,
            size=int(row[0]),
            state=row[1],
            last_hash=None if row[2] is None else bytes(row[2]),
            checkpoint=row[3],
            last_seal_ns=row[4],
            last_receive_ns=row[5],
            status=Status(row[6]),
            detail=row[7],
            updated_ns=int(row[8]),
            quarantine_dropped=int(row[9]),
        )

    def append(
        self,
        host: str,
        expected_size: int,
        lines: Sequence[bytes],
        hashes: Sequence[bytes],
        state_json: str,
        checkpoint_json: str | None,
        last_seal_ns: int | None,
        now_ns: int,
    ) -> bool:
        if type(expected_size) is not int or expected_size < 0:
            raise StoreError(f"append: expected size must be an integer >= 0, not {expected_size}")
        if len(lines) != len(hashes):
            raise StoreError(f"append: {len(lines)} lines but {len(hashes)} hashes")
        if not all(len(h) == 32 for h in hashes):
            raise StoreError("append: a record hash has 32 bytes")
        try:
            with self._write() as cur:
                host_id = self._host_id(cur, host)
                cur.execute(
                    "UPDATE heads SET size = ?, state = ?, last_hash = COALESCE(?, last_hash),"
                    " checkpoint = COALESCE(?, checkpoint),"
                    " last_seal_ns = COALESCE(?, last_seal_ns), last_receive_ns = ?,"
                    " updated_ns = ? WHERE host_id = ? AND size = ?",
                    (
                        expected_size + len(lines),
                        state_json,
                        hashes[-1] if hashes else None,
                        checkpoint_json,
                        last_seal_ns,
                        now_ns,
                        now_ns,
                        host_id,
                        expected_size,
                    ),
                )
                if cur.rowcount != 1:
                    return False  # nothing was written: the empty transaction commits
                if lines:
                    self._insert_records(cur, host_id, expected_size, lines, hashes)
        except Duplicate:
            raise StoreError(
                f"host {host}: records from seq {expected_size} on are already stored although the"
                f" head says {expected_size}: the store was changed behind the collector's back"
                " (sealtrail collector verify)"
            ) from None
        return True

    def set_status(self, host: str, status: Status, detail: str, now_ns: int) -> None:
        self._update_head(
            host,
            "status = ?, detail = ?, updated_ns = ?",
            (Status(status).value, detail, now_ns),
        )

    def touch(self, host: str, now_ns: int) -> None:
        self._update_head(host, "last_receive_ns = ?", (now_ns,))

    def _update_head(self, host: str, assignments: str, params: tuple[Any, ...]) -> None:
        with self._write() as cur:
            cur.execute(
                f"UPDATE heads SET {assignments} WHERE host_id = ({_ACTIVE})", (*params, host)
            )
            if cur.rowcount != 1:
                raise _unknown(host)

    # ------------------------------------------------------------------------------ records
    def records(self, host: str, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        return self._stream(host, start, end, "line", lambda row: (int(row[0]), bytes(row[1])))

    def record_hashes(self, host: str, start: int, end: int) -> Iterator[bytes]:
        return self._stream(host, start, end, "hash", lambda row: bytes(row[1]))

    def _stream(
        self, host: str, start: int, end: int, column: str, make: Callable[[Any], T]
    ) -> Iterator[T]:
        with self._read() as cur:  # resolved now, so an unknown host fails at the call
            host_id = self._host_id(cur, host)
            cur.execute("SELECT MAX(seq) FROM records WHERE host_id = ?", (host_id,))
            last = cur.fetchone()[0]
        return self._chunks(
            host_id, start, min(end, -1 if last is None else int(last) + 1), column, make
        )

    def _chunks(
        self, host_id: int, start: int, end: int, column: str, make: Callable[[Any], T]
    ) -> Iterator[T]:
        # One short query per range of CHUNK_ROWS seqs, so no lock or cursor is held while the
        # caller works on the rows, and no query can return more than a chunk whatever plan
        # the database picks (a LIMIT with stale statistics made PostgreSQL sort the whole
        # host for every page). Seqs are dense, so a range is a full chunk.
        while start < end:
            stop = min(end, start + CHUNK_ROWS)
            with self._read() as cur:
                cur.execute(
                    f"SELECT seq, {column} FROM records WHERE host_id = ? AND seq >= ?"
                    " AND seq < ? ORDER BY seq",
                    (host_id, start, stop),
                )
                rows = cur.fetchall()
            for row in rows:
                yield make(row)
            start = stop

    # ------------------------------------------------------------------------------ quarantine
    def quarantine(self, host: str, reason: str, body: bytes, now_ns: int) -> int:
        reason = reason[:_REASON_MAX]
        # cut so that the newest entry always fits: a huge rejected body is kept in part
        kept = bytes(body[: max(0, self.quarantine_limit - _cost(reason, 0))])
        with self._write() as cur:
            host_id = self._host_id(cur, host)
            cur.execute(
                "INSERT INTO quarantine (host_id, received_ns, reason, size, kept, body)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (host_id, now_ns, reason, len(body), len(kept), kept),
            )
            entry = int(cur.fetchone()[0])
            cur.execute(
                "SELECT id, kept, reason FROM quarantine WHERE host_id = ? ORDER BY id DESC",
                (host_id,),
            )
            total, dropped, newest_dropped = 0, 0, None
            for qid, size, text in cur.fetchall():
                total += _cost(text, int(size))
                if total > self.quarantine_limit:
                    dropped += 1
                    if newest_dropped is None:
                        newest_dropped = int(qid)
            if newest_dropped is not None:
                # once the bound is passed every older entry goes too: one range delete
                cur.execute(
                    "DELETE FROM quarantine WHERE host_id = ? AND id <= ?",
                    (host_id, newest_dropped),
                )
                cur.execute(
                    "UPDATE heads SET quarantine_dropped = quarantine_dropped + ?"
                    " WHERE host_id = ?",
                    (dropped, host_id),
                )
        return entry

    def quarantined(self, host: str) -> list[QuarantineEntry]:
        with self._read() as cur:
            host_id = self._host_id(cur, host)
            cur.execute(
                "SELECT id, received_ns, reason, size, body FROM quarantine WHERE host_id = ?"
                " ORDER BY id",
                (host_id,),
            )
            rows = cur.fetchall()
        return [
            QuarantineEntry(int(r[0]), int(r[1]), str(r[2]), int(r[3]), bytes(r[4])) for r in rows
        ]

    # ------------------------------------------------------------------------------ helpers
    def _host_id(self, cur: C, host: str) -> int:
        cur.execute(_ACTIVE, (host,))
        row = cur.fetchone()
        if row is None:
            raise _unknown(host)
        return int(row[0])


def _cost(reason: str, kept: int) -> int:
    return kept + len(reason.encode()) + _ENTRY_OVERHEAD


def _host(row: Any) -> Host:
    return Host(name=row[0], fingerprint=row[1], genesis_key=row[2], enrolled_ns=int(row[3]))


def _unknown(host: str) -> UnknownHost:
    return UnknownHost(
        f"host {host!r} is not enrolled (sealtrail collector enroll --host {host} ...)"
    )
