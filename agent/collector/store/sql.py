"""The store in SQL, once for both backends; ``sqlite`` and ``postgres`` supply connections,
transactions, the bulk insert and their column types.

Statements use ``?`` placeholders (the PostgreSQL backend translates them). The head advances
only by ``UPDATE heads SET size = new ... WHERE host_id = ? AND size = expected``, run *before*
the batch is inserted: in PostgreSQL that row lock makes a second collector appending to the
same host wait, re-read the row and match nothing, so it returns False instead of colliding on
the batches' primary key; in SQLite the write transaction (BEGIN IMMEDIATE) already serialises.

Records are kept one row per accepted batch (``batches``: host_id, first_seq, count, the lines
joined with ``\n``, the 32-byte record hashes concatenated), not one row per record: a row costs
the same few microseconds whatever its size, so a batch of 5 000 records costs one insert
instead of 5 000. ``records`` and ``record_hashes`` slice the batches back into records.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Generic, Protocol, TypeVar

from agent.collector.errors import EnrollmentConflict, StoreError, UnknownHost
from agent.collector.names import check_host_name
from agent.collector.store.base import Head, Host, QuarantineEntry, Status, Store
from agent.journal.keys import PublicKey
from agent.journal.record import is_hex64

SCHEMA_VERSION = 3
#: Seqs per query when streaming records: a query reads the batches that start in a window of
#: this many seqs (about 2 MB of lines, plus the rest of the last batch, which the server's body
#: limit bounds to 16 MiB).
CHUNK_ROWS = 4096
#: A v1 store's records are regrouped into batches of at most this many bytes of lines.
MIGRATE_BATCH_BYTES = 4 << 20
#: What one quarantined entry costs beside its body (row, reason), for the per-host bound.
_ENTRY_OVERHEAD = 256
_REASON_MAX = 4096

# The tables of both backends; {id} {int} {blob} {without_rowid} {lines_compression} are their
# types and options.
_HOSTS_HEADS_QUARANTINE = (
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
    """CREATE TABLE quarantine (
        id {id}, host_id {int} NOT NULL REFERENCES hosts (id), received_ns {int} NOT NULL,
        reason TEXT NOT NULL, size {int} NOT NULL, kept {int} NOT NULL, body {blob} NOT NULL)""",
    "CREATE INDEX quarantine_host ON quarantine (host_id, id)",
)
#: Version 1 kept one row per record (kept here to migrate from, and for the tests).
RECORDS_V1 = """CREATE TABLE records (
        host_id {int} NOT NULL, seq {int} NOT NULL, line {blob} NOT NULL, hash {blob} NOT NULL,
        PRIMARY KEY (host_id, seq)){without_rowid}"""
SCHEMA_V1 = (*_HOSTS_HEADS_QUARANTINE, RECORDS_V1)
# Version 2: one row per accepted batch, records first_seq .. first_seq + count - 1; ``lines``
# is the lines joined with "\n" (no newline at the end), ``hashes`` their 32-byte record hashes
# one after the other. No foreign key: it would cost a lookup per append, and every insert
# comes from ``append``, which has just resolved the host in the same transaction. A table
# with a rowid in SQLite, not WITHOUT ROWID: its rows are large (SQLite's advice). PostgreSQL
# compresses the lines with lz4 where the server has it (twice the append rate of its default
# pglz, about as small).
BATCHES = """CREATE TABLE batches (
        host_id {int} NOT NULL, first_seq {int} NOT NULL, count {int} NOT NULL,
        lines {blob}{lines_compression} NOT NULL, hashes {blob} NOT NULL,
        PRIMARY KEY (host_id, first_seq))"""
# Version 3: the fleet log (agent.collector.fleet): one row per accepted host checkpoint, in
# the order of the tree's leaves (``idx`` from 0, gapless: the next one comes from ``fleet_head``
# under its row lock, in the transaction that accepts the batch), and the fleet checkpoints
# published (signed notes with their witnesses' cosignatures). Entries name the host binding
# (``hosts.id``), not the name: a name enrolled again with a new genesis key is another journal.
# (Idempotent: a store made by a later version and labelled older opens the same.)
FLEET = (
    """CREATE TABLE IF NOT EXISTS fleet (
        idx {int} PRIMARY KEY, host_id {int} NOT NULL, host_size {int} NOT NULL,
        entry {blob} NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS fleet_host ON fleet (host_id, host_size)",
    "CREATE TABLE IF NOT EXISTS fleet_head (id {int} PRIMARY KEY, size {int} NOT NULL)",
    "INSERT INTO fleet_head (id, size) SELECT 1, 0 WHERE NOT EXISTS (SELECT 1 FROM fleet_head)",
    """CREATE TABLE IF NOT EXISTS fleet_published (
        size {int} PRIMARY KEY, note {blob} NOT NULL, published_ns {int} NOT NULL)""",
)
SCHEMA = (*_HOSTS_HEADS_QUARANTINE, BATCHES, *FLEET)

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
            if version == 0:
                for statement in SCHEMA:
                    cur.execute(statement.format(**types))
            elif version == 1:
                self._from_v1(cur, types)
            if version in (1, 2):
                for statement in FLEET:
                    cur.execute(statement.format(**types))
            if row is None:
                cur.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version != SCHEMA_VERSION:
                cur.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def _from_v1(self, cur: C, types: dict[str, str]) -> None:
        """One row per record to one row per run of consecutive seqs (at most
        ``MIGRATE_BATCH_BYTES`` of lines each), in the transaction that opens the store: every
        record is kept byte for byte with its stored hash, then the old table goes."""
        cur.execute(BATCHES.format(**types))
        host_id = -1
        while True:  # each host, by index seeks (DISTINCT would read every row's line)
            cur.execute("SELECT MIN(host_id) FROM records WHERE host_id > ?", (host_id,))
            found = cur.fetchone()[0]
            if found is None:
                break
            host_id = int(found)
            self._regroup_v1(cur, host_id)
        cur.execute("DROP TABLE records")

    def _regroup_v1(self, cur: C, host_id: int) -> None:
        first, lines, hashes, size = 0, list[bytes](), list[bytes](), 0

        def flush() -> None:
            nonlocal lines, hashes, size
            if lines:
                _insert_batch(cur, host_id, first, len(lines), b"\n".join(lines), b"".join(hashes))
            lines, hashes, size = [], [], 0

        last = -1
        while True:
            cur.execute(
                "SELECT seq, line, hash FROM records WHERE host_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (host_id, last, CHUNK_ROWS),
            )
            rows = cur.fetchall()
            if not rows:
                break
            for raw_seq, raw_line, raw_hash in rows:
                seq, line, digest = int(raw_seq), bytes(raw_line), bytes(raw_hash)
                # a row a batch cannot hold faithfully among others (only a change behind the
                # collector's back makes one) becomes a batch of its own, kept as it is
                odd = b"\n" in line or len(digest) != 32
                if lines and (
                    odd or seq != first + len(lines) or size + len(line) > MIGRATE_BATCH_BYTES
                ):
                    flush()
                if not lines:
                    first = seq
                lines.append(line)
                hashes.append(digest)
                size += len(line) + 1
                if odd:
                    flush()
            last = int(rows[-1][0])
        flush()

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
        *,
        fleet_entry: tuple[int, bytes] | None = None,
    ) -> bool:
        if type(expected_size) is not int or expected_size < 0:
            raise StoreError(f"append: expected size must be an integer >= 0, not {expected_size}")
        if len(lines) != len(hashes):
            raise StoreError(f"append: {len(lines)} lines but {len(hashes)} hashes")
        if any(map((32).__ne__, map(len, hashes))):
            raise StoreError("append: a record hash has 32 bytes")
        joined = b"\n".join(lines)
        if joined.count(b"\n") != max(0, len(lines) - 1):
            raise StoreError("append: a line holds a newline")
        end = expected_size + len(lines)
        try:
            with self._write() as cur:
                host_id = self._host_id(cur, host)
                cur.execute(
                    "UPDATE heads SET size = ?, state = ?, last_hash = COALESCE(?, last_hash),"
                    " checkpoint = COALESCE(?, checkpoint),"
                    " last_seal_ns = COALESCE(?, last_seal_ns), last_receive_ns = ?,"
                    " updated_ns = ? WHERE host_id = ? AND size = ?",
                    (
                        end,
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
                    # the batch that starts last before the new one's end is the only one that
                    # can overlap it if the stored batches do not overlap each other, which
                    # this check keeps true
                    stored = _batch_before(cur, host_id, end)
                    if stored is not None and stored[0] + stored[1] > expected_size:
                        raise _overlap(host, expected_size, end, stored)
                    _insert_batch(cur, host_id, expected_size, len(lines), joined, b"".join(hashes))
                if fleet_entry is not None:
                    self._fleet_append(cur, host_id, *fleet_entry)
        except Duplicate:
            raise _overlap(host, expected_size, end, None) from None
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

    # ------------------------------------------------------------------------------ fleet log
    def _fleet_append(self, cur: C, host_id: int, host_size: int, entry: bytes) -> None:
        # the row lock on fleet_head orders concurrent collectors: one index each, no gap
        cur.execute("UPDATE fleet_head SET size = size + 1 WHERE id = 1")
        cur.execute("SELECT size FROM fleet_head WHERE id = 1")
        idx = int(cur.fetchone()[0]) - 1
        cur.execute(
            "INSERT INTO fleet (idx, host_id, host_size, entry) VALUES (?, ?, ?, ?)",
            (idx, host_id, host_size, entry),
        )

    def fleet_size(self) -> int:
        with self._read() as cur:
            cur.execute("SELECT size FROM fleet_head WHERE id = 1")
            return int(cur.fetchone()[0])

    def fleet_entries(self, start: int, end: int) -> Iterator[bytes]:
        pos = start
        while pos < end:
            with self._read() as cur:
                cur.execute(
                    "SELECT idx, entry FROM fleet WHERE idx >= ? AND idx < ? ORDER BY idx",
                    (pos, min(end, pos + CHUNK_ROWS)),
                )
                rows = cur.fetchall()
            if not rows:
                return
            for idx, entry in rows:
                if int(idx) != pos:
                    raise StoreError(f"the fleet log lacks entry {pos}")
                yield bytes(entry)
                pos += 1

    def fleet_find(self, host: str, seq: int, below: int) -> tuple[int, bytes] | None:
        with self._read() as cur:
            cur.execute(
                f"SELECT idx, entry FROM fleet WHERE host_id = ({_ACTIVE}) AND host_size > ?"
                " AND idx < ? ORDER BY host_size, idx LIMIT 1",
                (host, seq, below),
            )
            row = cur.fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def fleet_last_of(self, host: str, below: int) -> tuple[int, int] | None:
        with self._read() as cur:
            cur.execute(
                f"SELECT idx, host_size FROM fleet WHERE host_id = ({_ACTIVE}) AND idx < ?"
                " ORDER BY host_size DESC, idx DESC LIMIT 1",
                (host, below),
            )
            row = cur.fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def fleet_publish(self, size: int, note: bytes, now_ns: int) -> None:
        with self._write() as cur:
            cur.execute("SELECT MAX(size) FROM fleet_published")
            top = cur.fetchone()[0]
            if top is not None and int(top) >= size:
                cur.execute(
                    "UPDATE fleet_published SET note = ?, published_ns = ? WHERE size = ?",
                    (note, now_ns, size),
                )
                return
            cur.execute(
                "INSERT INTO fleet_published (size, note, published_ns) VALUES (?, ?, ?)",
                (size, note, now_ns),
            )

    def fleet_published(self) -> tuple[int, bytes] | None:
        with self._read() as cur:
            cur.execute("SELECT size, note FROM fleet_published ORDER BY size DESC LIMIT 1")
            row = cur.fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    # ------------------------------------------------------------------------------ records
    def records(self, host: str, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        return self._stream(host, start, end, "lines", _lines_of)

    def record_hashes(self, host: str, start: int, end: int) -> Iterator[bytes]:
        return self._stream(host, start, end, "hashes", _hashes_of)

    def _stream(
        self, host: str, start: int, end: int, column: str, split: _Split[T]
    ) -> Iterator[T]:
        with self._read() as cur:  # resolved now, so an unknown host fails at the call
            host_id = self._host_id(cur, host)
            last = _batch_before(cur, host_id, None)
        stored_end = -1 if last is None else last[0] + last[1]
        return self._chunks(host_id, max(start, 0), min(end, stored_end), column, split)

    def _chunks(
        self, host_id: int, start: int, end: int, column: str, split: _Split[T]
    ) -> Iterator[T]:
        # One short query per window of CHUNK_ROWS seqs (the batches that start in it), so no
        # lock or cursor is held while the caller works on the records, and no query returns
        # more than a window whatever plan the database picks; no LIMIT (with stale statistics
        # PostgreSQL once sorted a whole host for every page), MIN and MAX are index seeks.
        if start >= end:
            return
        with self._read() as cur:
            holding = _batch_before(cur, host_id, start + 1)
        pos = holding[0] if holding is not None and holding[0] + holding[1] > start else start
        while pos < end:
            stop = min(end, pos + CHUNK_ROWS)
            with self._read() as cur:
                cur.execute(
                    f"SELECT first_seq, count, {column} FROM batches WHERE host_id = ?"
                    " AND first_seq >= ? AND first_seq < ? ORDER BY first_seq",
                    (host_id, pos, stop),
                )
                rows = cur.fetchall()
                if not rows:  # a hole (rows deleted behind the collector's back): skip it
                    cur.execute(
                        "SELECT MIN(first_seq) FROM batches WHERE host_id = ? AND first_seq >= ?"
                        " AND first_seq < ?",
                        (host_id, stop, end),
                    )
                    found = cur.fetchone()[0]
                    if found is None:
                        return
                    pos = int(found)
                    continue
            for first, count, blob in rows:
                first, count = int(first), int(count)
                lo, hi = max(start, first), min(end, first + count)
                if lo < hi:
                    yield from split(first, count, bytes(blob), lo - first, hi - first)
                pos = max(stop, first + count)

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


_Split = Callable[[int, int, bytes, int, int], Iterable[T]]


def _lines_of(first: int, count: int, blob: bytes, lo: int, hi: int) -> Iterator[tuple[int, bytes]]:
    """(seq, line) for the records lo .. hi-1 of the batch (indices in it). A blob whose lines
    are not ``count`` any more (changed behind the collector's back) is read as it is: the
    newlines after the count-1st stay in the last line, missing ones leave the last seqs out,
    so no seq outside the batch is ever given and verification finds the change."""
    parts = blob.split(b"\n", count - 1) if hi == count else blob.split(b"\n", hi)[:hi]
    return zip(range(first + lo, first + len(parts)), parts[lo:], strict=False)


def _hashes_of(first: int, count: int, blob: bytes, lo: int, hi: int) -> Iterator[bytes]:
    del first, count
    for i in range(lo, hi):
        digest = blob[32 * i : 32 * i + 32]
        if not digest:
            return
        yield digest


def _insert_batch(
    cur: Cursor, host_id: int, first: int, count: int, lines: bytes, hashes: bytes
) -> None:
    cur.execute(
        "INSERT INTO batches (host_id, first_seq, count, lines, hashes) VALUES (?, ?, ?, ?, ?)",
        (host_id, first, count, lines, hashes),
    )


def _batch_before(cur: Cursor, host_id: int, end: int | None) -> tuple[int, int] | None:
    """(first_seq, count) of the batch that starts last before seq ``end`` (None: of all)."""
    bound = "" if end is None else " AND first_seq < ?"
    params = (host_id,) if end is None else (host_id, end)
    cur.execute(
        "SELECT first_seq, count FROM batches WHERE host_id = ? AND first_seq ="
        f" (SELECT MAX(first_seq) FROM batches WHERE host_id = ?{bound})",
        (host_id, *params),
    )
    row = cur.fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def _overlap(host: str, start: int, end: int, stored: tuple[int, int] | None) -> StoreError:
    held = "" if stored is None else f" (a stored batch holds {stored[0]}..{sum(stored) - 1})"
    return StoreError(
        f"host {host}: records {start}..{end - 1} are already stored{held} although the head"
        f" says {start}: the store was changed behind the collector's back"
        " (sealtrail collector verify)"
    )


def _cost(reason: str, kept: int) -> int:
    return kept + len(reason.encode()) + _ENTRY_OVERHEAD


def _host(row: Any) -> Host:
    return Host(name=row[0], fingerprint=row[1], genesis_key=row[2], enrolled_ns=int(row[3]))


def _unknown(host: str) -> UnknownHost:
    return UnknownHost(
        f"host {host!r} is not enrolled (sealtrail collector enroll --host {host} ...)"
    )
