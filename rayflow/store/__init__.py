"""Durable state behind rayflow: the Store protocol and its implementations."""

from __future__ import annotations

from rayflow.store.base import Store


def open_store(
    url: str,
    *,
    sqlite_synchronous: str = "FULL",
    pool_min_size: int = 1,
    pool_max_size: int = 8,
) -> Store:
    """Open (and migrate) the store at `url`.

    `sqlite:///path/to/file.db` or a plain path → SQLite;
    `postgresql://…` / `postgres://…` → PostgreSQL, with a pool of
    `pool_min_size`..`pool_max_size` connections in this process.
    """
    store: Store
    if url.startswith(("postgresql://", "postgres://")):
        from rayflow.store.postgres import PostgresStore

        store = PostgresStore(url, min_size=pool_min_size, max_size=pool_max_size)
    else:
        from rayflow.store.sqlite import SQLiteStore

        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
        store = SQLiteStore(path, synchronous=sqlite_synchronous)
    store.migrate()
    return store


__all__ = ["Store", "open_store"]
