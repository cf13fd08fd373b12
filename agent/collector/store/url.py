"""Which backend a store URL names: ``postgresql://...``, ``sqlite:///ABS/PATH`` or a path."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from agent.collector.errors import StoreError

_POSTGRES = ("postgresql://", "postgres://")
_SQLITE = "sqlite://"


def check_store_url(url: str) -> tuple[Literal["sqlite", "postgresql"], str]:
    """(backend, target): a PostgreSQL conninfo URL as given, or a SQLite file path."""
    if url.startswith(_POSTGRES):
        return "postgresql", url
    if url.startswith(_SQLITE):
        path = url[len(_SQLITE) :]
        if not path.startswith("/"):
            raise StoreError(
                f"store {url!r}: a SQLite URL names an absolute path (sqlite:///var/lib/x.sqlite);"
                " give a relative one as a bare path"
            )
        return "sqlite", path
    if "://" in url:
        raise StoreError(
            f"store {url!r}: unknown scheme; use postgresql://..., sqlite:///PATH or a file path"
        )
    if not url:
        raise StoreError("store: an empty path")
    return "sqlite", str(Path(url))
