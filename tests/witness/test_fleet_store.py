"""The fleet log's tables in both store backends (SQLite, a real PostgreSQL server)."""

from __future__ import annotations

import pytest

from agent.collector.store import Store
from agent.journal.keys import SigningKey

KEY_A = SigningKey.generate().public.to_line()
KEY_B = SigningKey.generate().public.to_line()
STATE = '{"opaque":"to the store"}'


def _append(store: Store, host: str, size: int, host_size: int, entry: bytes) -> bool:
    return store.append(host, size, [], [], STATE, None, None, 1, fleet_entry=(host_size, entry))


def test_entries_in_order_found_by_host_and_published(store: Store) -> None:
    store.enroll("web-01", "a" * 64, KEY_A, 1)
    store.enroll("db-01", "b" * 64, KEY_B, 1)
    assert store.fleet_size() == 0 and store.fleet_published() is None
    assert _append(store, "web-01", 0, 10, b"w10")
    assert _append(store, "db-01", 0, 5, b"d5")
    assert _append(store, "web-01", 0, 30, b"w30")
    assert not _append(store, "web-01", 7, 40, b"lost")  # the CAS fails: no entry either
    assert store.fleet_size() == 3
    assert list(store.fleet_entries(0, 3)) == [b"w10", b"d5", b"w30"]
    assert list(store.fleet_entries(1, 2)) == [b"d5"]
    assert store.fleet_find("web-01", 9, 3) == (0, b"w10")
    assert store.fleet_find("web-01", 10, 3) == (2, b"w30")
    assert store.fleet_find("web-01", 10, 2) is None  # not in the fleet checkpoint of size 2
    assert store.fleet_last_of("web-01", 3) == (2, 30)
    assert store.fleet_last_of("db-01", 1) is None
    store.fleet_publish(2, b"note 2", 1)
    store.fleet_publish(3, b"note 3", 2)
    store.fleet_publish(3, b"note 3 again", 3)  # the same size cosigned anew
    store.fleet_publish(2, b"older", 4)  # never goes back
    assert store.fleet_published() == (3, b"note 3 again")


def test_a_name_enrolled_again_is_another_journal(store: Store) -> None:
    store.enroll("web-01", "a" * 64, KEY_A, 1)
    assert _append(store, "web-01", 0, 10, b"old journal")
    store.enroll("web-01", "c" * 64, KEY_B, 2, replace=True)  # a new genesis key
    assert store.fleet_find("web-01", 3, 1) is None
    assert store.fleet_last_of("web-01", 1) is None
    assert _append(store, "web-01", 0, 4, b"new journal")
    assert store.fleet_find("web-01", 3, 2) == (1, b"new journal")


def test_entries_are_read_in_chunks(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.collector.store import sql

    monkeypatch.setattr(sql, "CHUNK_ROWS", 2)
    store.enroll("web-01", "a" * 64, KEY_A, 1)
    for i in range(7):
        assert _append(store, "web-01", 0, i + 1, b"e%d" % i)
    assert list(store.fleet_entries(0, 7)) == [b"e%d" % i for i in range(7)]
