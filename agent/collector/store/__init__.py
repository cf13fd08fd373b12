"""The collector's store: one interface (``base.Store``), SQLite by default, PostgreSQL for
fleets. ``open_store`` picks the backend from the URL and creates or migrates the schema."""

from __future__ import annotations

from pathlib import Path

from agent.collector.errors import StoreError
from agent.collector.store.base import Head, Host, QuarantineEntry, Status, Store
from agent.collector.store.url import check_store_url

__all__ = [
    "DEFAULT_QUARANTINE_LIMIT",
    "Head",
    "Host",
    "QuarantineEntry",
    "Status",
    "Store",
    "open_store",
]

DEFAULT_QUARANTINE_LIMIT = 64 << 20


def open_store(url: str, *, quarantine_limit: int = DEFAULT_QUARANTINE_LIMIT) -> Store:
    """``postgresql://...`` (or ``postgres://``), ``sqlite:///ABS/PATH`` or a SQLite file path."""
    backend, target = check_store_url(url)
    if backend == "postgresql":
        try:
            from agent.collector.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"a PostgreSQL store needs psycopg 3 ({exc}); pip install 'psycopg[binary,pool]'"
            ) from None
        return PostgresStore(target, quarantine_limit=quarantine_limit)
    from agent.collector.store.sqlite import SqliteStore

    return SqliteStore(Path(target), quarantine_limit=quarantine_limit)
