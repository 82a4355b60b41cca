"""Connection pool and schema migrations for PostgreSQL."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

import psycopg
from psycopg_pool import ConnectionPool

from shared.config import get_settings

logger = logging.getLogger(__name__)

# Any constant works; it only has to differ from the other advisory locks.
_MIGRATION_LOCK = 7_100_001
_pool: ConnectionPool | None = None
_pool_lock = threading.Lock()


def get_pool() -> ConnectionPool:
    """Return this process's pool, opening it on first use.

    Connections are in autocommit mode: callers open transactions explicitly
    with `conn.transaction()`, so nothing stays open between steps.
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            settings = get_settings()
            _pool = ConnectionPool(
                settings.database_url,
                min_size=1,
                max_size=settings.db_pool_size,
                kwargs={"autocommit": True},
                configure=_configure,
                open=False,
                name="journeys",
            )
            _pool.open(wait=True, timeout=30)
        return _pool


def _configure(conn: psycopg.Connection) -> None:
    """Set up the engine's sessions for short statements that look rows up by key.

    JIT compilation is off, because compiling a misestimated statement can
    take 100 ms. Plans are generic: they estimate `tile = $2` from the
    number of distinct tiles, not from the tiles the last ANALYZE saw. A
    tile that contacts reached after that ANALYZE would otherwise count as
    empty, and each batch of 50 would scan every step of the tile. Generic
    plans also spare the email tile's per-email statement a new plan per
    execution: in a 20,000-contact benchmark its time in the database fell
    from 0.24 to 0.20 ms.
    """
    conn.execute("SET jit = off")
    conn.execute("SET plan_cache_mode = force_generic_plan")


@contextmanager
def custom_plans(conn: psycopg.Connection) -> Iterator[None]:
    """Plan the block's statements for their parameter values, in one
    transaction.

    Use it for a range whose share of the table depends on the value, such
    as the timers due by now. A generic plan assumes a third of the table
    and scans it. A plan for the value reads the few due rows by index.
    """
    with conn.transaction():
        conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        yield


def close_pool() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close()
            _pool = None


def migrate(conninfo: str | None = None) -> list[str]:
    """Apply the SQL files under shared/migrations that are not applied yet.

    Each file runs in its own transaction under an advisory lock, so several
    processes starting at once apply each file exactly once.
    """
    applied: list[str] = []
    with psycopg.connect(
        conninfo or get_settings().database_url, autocommit=True
    ) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                row[0] for row in conn.execute("SELECT name FROM schema_migrations")
            }
            for name, sql in _migration_files():
                if name in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (name) VALUES (%s)", (name,)
                    )
                logger.info("applied migration %s", name)
                applied.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied


def _migration_files() -> list[tuple[str, str]]:
    folder = resources.files("shared") / "migrations"
    files = sorted(
        (entry.name, entry.read_text("utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    )
    return files
