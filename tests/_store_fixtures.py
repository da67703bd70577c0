"""Fixtures that give a test a fresh, empty Store of each backend.

Import them into `tests/conftest.py`:

    from _store_fixtures import *  # noqa: F403  (store fixtures)

Backends: "sqlite" (a file in the test's tmp dir) and "postgres" (a fresh
schema in the server at $RAYFLOW_TEST_POSTGRES_URL; start one with
`export RAYFLOW_TEST_POSTGRES_URL="$(scripts/postgres.sh)"`). Without that
variable the PostgreSQL tests fail when $CI is set and are skipped otherwise.

Fixtures:
- `store_backend`  "sqlite" | "postgres"; the tests using it run once per
  backend (PostgreSQL ones carry the `postgres` marker).
- `store_url`      a URL for a fresh empty store of `store_backend`.
- `store`          that store, opened and migrated; closed after the test.
- `store_url_for`  a factory, `store_url_for("postgres")` -> fresh URL (any
  number per test; all removed afterwards).
- `session_store_url_for`  the same, session-scoped (for a Ray session).
- `postgres_server_url`    the server URL itself (session-scoped).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _ci import skip_or_fail

from rayflow.store import Store, open_store

POSTGRES_URL_ENV = "RAYFLOW_TEST_POSTGRES_URL"
STORE_BACKENDS = ("sqlite", "postgres")

__all__ = [
    "postgres_server_url",
    "session_store_url_for",
    "store",
    "store_backend",
    "store_url",
    "store_url_for",
]


def require_postgres_url() -> str:
    """The test server's URL; fails (under CI) or skips the test without one."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        return url
    message = (
        f"{POSTGRES_URL_ENV} is not set, so the PostgreSQL store cannot be tested;"
        f' start a server with: export {POSTGRES_URL_ENV}="$(scripts/postgres.sh)"'
    )
    skip_or_fail(message)


def _with_search_path(url: str, schema: str) -> str:
    # libpq's `options` URL parameter: every connection uses this schema
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def create_postgres_schema(server_url: str) -> tuple[str, str]:
    """Create an empty schema; returns (schema name, URL that uses it)."""
    import psycopg

    schema = "rf_test_" + uuid.uuid4().hex[:12]
    try:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as e:
        pytest.fail(
            f"cannot reach the PostgreSQL server at ${POSTGRES_URL_ENV}: {e}; is it"
            " running? (scripts/postgres.sh starts it)",
            pytrace=False,
        )
    return schema, _with_search_path(server_url, schema)


def drop_postgres_schema(server_url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


class StoreUrls:
    """Hands out fresh store URLs and removes what they created."""

    def __init__(self, tmp_dir: Path) -> None:
        self._tmp_dir = tmp_dir
        self._schemas: list[tuple[str, str]] = []

    def __call__(self, backend: str) -> str:
        if backend == "sqlite":
            path = self._tmp_dir / f"store-{uuid.uuid4().hex[:8]}.db"
            return f"sqlite:///{path}"
        if backend == "postgres":
            server_url = require_postgres_url()
            schema, url = create_postgres_schema(server_url)
            self._schemas.append((server_url, schema))
            return url
        raise ValueError(f"unknown store backend {backend!r}; use one of {STORE_BACKENDS}")

    def cleanup(self) -> None:
        for server_url, schema in self._schemas:
            drop_postgres_schema(server_url, schema)
        self._schemas.clear()


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    return require_postgres_url()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def store_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
def store_url_for(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    urls = StoreUrls(tmp_path)
    yield urls
    urls.cleanup()


@pytest.fixture(scope="session")
def session_store_url_for(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], str]]:
    urls = StoreUrls(tmp_path_factory.mktemp("stores"))
    yield urls
    urls.cleanup()


@pytest.fixture
def store_url(store_backend: str, store_url_for: Callable[[str], str]) -> str:
    return store_url_for(store_backend)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()
