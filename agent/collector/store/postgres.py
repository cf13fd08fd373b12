"""The fleet store: PostgreSQL through psycopg 3, a batch inserted as one row of two bytea.

Several collector processes may share one database: the head's compare-and-swap (see ``sql``)
keeps two of them receiving the same host from forking it or storing a record twice. A commit
returns once PostgreSQL flushed its WAL (``synchronous_commit`` on; the session turns it back on
if the server's default is off, since a receipt follows every commit). Connections come from a
``psycopg_pool`` pool, which replaces broken ones after a server restart.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolTimeout

from agent.collector.errors import StoreError
from agent.collector.store.sql import Duplicate, SqlStore

log = logging.getLogger(__name__)

CONNECT_SECONDS = 10
POOL_SIZE = 8
TYPES = {
    "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    "int": "BIGINT",
    "blob": "BYTEA",
    "without_rowid": "",
    "lines_compression": "",
}
#: Any constant key for pg_advisory_xact_lock, shared by every process migrating this schema.
_SCHEMA_LOCK = 0x5EA17A11


@functools.lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    return sql.replace("?", "%s")


class PgCursor:
    """A psycopg cursor that takes the store's ``?`` placeholders."""

    def __init__(self, raw: psycopg.Cursor[Any]) -> None:
        self.raw = raw

    @property
    def rowcount(self) -> int:
        return self.raw.rowcount

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> object:
        return self.raw.execute(_placeholders(sql), params)

    def fetchone(self) -> Any:
        return self.raw.fetchone()

    def fetchall(self) -> list[Any]:
        return self.raw.fetchall()


class PostgresStore(SqlStore[PgCursor]):
    def __init__(self, url: str, *, quarantine_limit: int, pool_size: int = POOL_SIZE) -> None:
        self.quarantine_limit = quarantine_limit
        self.where = describe(url)
        # one connection first, to report why it fails (the pool only says it timed out)
        try:
            psycopg.connect(url, connect_timeout=CONNECT_SECONDS).close()
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to the store {self.where}: {_first_line(exc)}"
            ) from None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"connect_timeout": CONNECT_SECONDS},
            configure=_configure,
            open=False,
            name="sealtrail-store",
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_SECONDS)
            self._migrate(self._types())
        except PoolTimeout:
            self._pool.close()
            raise StoreError(f"cannot connect to the store {self.where}") from None
        except BaseException:
            self._pool.close()
            raise

    def _types(self) -> dict[str, str]:
        """TYPES, with lz4 for the lines if this server has it (PostgreSQL 14 on, built with
        lz4, as Debian's and most are)."""
        with self._read() as cur:
            cur.execute(
                "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'"
                " AND 'lz4' = ANY(enumvals)"
            )
            lz4 = cur.fetchone() is not None
        return {**TYPES, "lines_compression": " COMPRESSION lz4" if lz4 else ""}

    @contextmanager
    def _write(self) -> Iterator[PgCursor]:
        try:
            # the pool's block commits when it ends without an error, rolls back otherwise
            with (
                self._pool.connection(timeout=CONNECT_SECONDS) as conn,
                conn.cursor(binary=True) as raw,
            ):
                yield PgCursor(raw)
        except psycopg.errors.UniqueViolation as exc:
            raise Duplicate(f"store {self.where}: {_first_line(exc)}") from None
        except psycopg.Error as exc:
            raise StoreError(f"store {self.where}: {_first_line(exc)}") from None
        except PoolTimeout:
            raise StoreError(
                f"store {self.where}: no connection within {CONNECT_SECONDS} s"
            ) from None

    _read = _write

    def _lock_schema(self, cur: PgCursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))

    def close(self) -> None:
        self._pool.close()


def describe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{info.get('host') or ''}{port}/{info.get('dbname') or ''}"


def _configure(conn: psycopg.Connection[Any]) -> None:
    setting = conn.execute("SHOW synchronous_commit").fetchone()
    if setting is not None and setting[0] == "off":
        log.warning("PostgreSQL synchronous_commit is off; turned on for the collector's sessions")
        conn.execute("SET synchronous_commit = on")
    conn.commit()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
