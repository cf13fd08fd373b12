"""The collector's store fixtures (SQLite and a real PostgreSQL server) for the fleet tests."""

from tests.collector.conftest import pg_server, pg_url, store, store_url

__all__ = ["pg_server", "pg_url", "store", "store_url"]
