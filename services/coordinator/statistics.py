"""Planner statistics for the tables a live journey fills.

A contacts import or a live journey can grow these tables from nothing to
hundreds of thousands of rows in a minute, faster than autovacuum's
default analyze, which waits for its one-minute nap. Until then
PostgreSQL plans from an empty table: it scanned every in-progress step
of a tile for each batch of contacts, and every entry of the journey for
each page the coordinator fed. On a 5,000-contact run those scans took
most of the database's CPU. Each tick the coordinator therefore analyzes
any of these tables in which more than 1,000 rows plus a fifth of its rows
changed since its last analyze, which also makes prepared statements plan
again. While it feeds a segment it does the same after every page, because
the tiles start on a page's contacts at once. In a 20,000-contact benchmark
whose statistics waited for the tick's last page, scanning all sends of the
email tile for each contact took 30 % of the database's statement time.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

logger = logging.getLogger(__name__)

# The outbox is left out: its rows are deleted within a second of their
# insert, so it would be analyzed every tick, and only its age index is read.
TABLES = (
    "contacts",
    "segment_members",
    "entries",
    "steps",
    "sends",
    "timers",
    "interactions",
)

# Changed rows that make a table's statistics stale: a floor, so that small
# tables are left alone, plus a share of the rows at the last analyze.
STALE_ROWS = 1_000
STALE_SHARE = 0.2

# The same test as autovacuum's, on the row count of the last analyze
# (reltuples, -1 when unknown, as after TRUNCATE).
_STALE_TABLES = """
SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = current_schema() AND s.relname = ANY(%s)
  AND s.n_mod_since_analyze > %s + %s * greatest(c.reltuples, 0)
ORDER BY s.relname
"""


def refresh_statistics(conn: psycopg.Connection) -> list[str]:
    """Analyze the journey tables whose statistics are stale and return their names.

    SKIP_LOCKED leaves a table that another coordinator or autovacuum is
    analyzing at that moment to them. Such a table is still in the list.
    """
    # PostgreSQL sends a session's row counts to the statistics views in
    # batches, not at each commit. Sending them now lets the query below
    # count what this session just fed. PostgreSQL 14 and older lack the
    # function and send the counts later.
    if conn.info.server_version >= 150000:
        conn.execute("SELECT pg_stat_force_next_flush()")
    stale = [
        row[0]
        for row in conn.execute(
            _STALE_TABLES, (list(TABLES), STALE_ROWS, STALE_SHARE)
        ).fetchall()
    ]
    for table in stale:
        conn.execute(sql.SQL("ANALYZE (SKIP_LOCKED) {}").format(sql.Identifier(table)))
    if stale:
        logger.debug("analyzed %s", ", ".join(stale))
    return stale
