"""Collector test fixtures: a real PostgreSQL server, and ``store_url``/``store`` parametrised
over both backends so one suite tests both.

The server (``pgserver``: Debian's ``initdb`` and ``pg_ctl`` in a temporary directory on a free
loopback port, as ``nobody`` when the tests run as root) is started once per session and stopped
when the session ends.
Each test gets a database of its own. Without the binaries the PostgreSQL tests skip on a
developer's machine and FAIL under CI (``make bootstrap`` installs them: a skip would hide that).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.collector.store import Store, open_store
from tests.collector.pgserver import NoPostgres, PgServer, temporary_server

IN_CI = bool(os.environ.get("CI"))
_databases = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        with temporary_server() as server:
            yield server
    except NoPostgres as exc:
        if IN_CI:
            pytest.fail(f"{exc}: required under CI")
        pytest.skip(str(exc))


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh database on the session's server."""
    import psycopg

    name = f"t{os.getpid()}_{next(_databases)}"
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield pg_server.url(name)
    finally:
        with psycopg.connect(pg_server.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite")
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with open_store(store_url, quarantine_limit=64 << 10) as opened:
        yield opened
