"""The coordinator: start times across zones, go-live checks against the
database, and feeding a large segment in bounded memory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pika
import pytest

from examples.make_contacts import write_csv
from services.coordinator.loop import feed_journey, tick
from services.coordinator.statistics import refresh_statistics
from services.tiles import actors  # noqa: F401  (the stub broker needs the actors)
from shared.config import get_settings
from shared.contacts import import_contacts
from shared.db import custom_plans, get_pool
from shared.golive import go_live_paths
from tests.support import (
    rss_peak_mb,
    simple_contacts,
    tree_pids,
    wait_until,
    write_contacts,
    write_definitions,
)

pytestmark = pytest.mark.integration

MEMORY_CEILING_MB = 300


def test_nothing_enters_before_the_local_start(db, tmp_path):
    """Europe/Amsterdam 2027-07-01 09:00 is 07:00Z: a tick at 06:59:59Z feeds
    nobody, a tick at 07:00Z feeds everybody."""
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(3)))
    path = write_definitions(
        tmp_path,
        start="2027-07-01 09:00",
        end="2027-07-02 09:00",
        timezone="Europe/Amsterdam",
    )
    outcome = go_live_paths(db, [path], datetime(2027, 6, 1, tzinfo=UTC))
    assert not outcome.errors
    start = db.execute("SELECT start_at FROM journeys").fetchone()[0]
    assert start == datetime(2027, 7, 1, 7, 0, tzinfo=UTC)

    tick(get_settings(), now=datetime(2027, 7, 1, 6, 59, 59, tzinfo=UTC))
    assert db.execute("SELECT count(*) FROM entries").fetchone() == (0,)
    tick(get_settings(), now=datetime(2027, 7, 1, 7, 0, tzinfo=UTC))
    assert db.execute("SELECT count(*) FROM entries").fetchone() == (3,)


def test_go_live_rejects_tile_with_unpublished_email(db, tmp_path):
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(2)))
    path = write_definitions(tmp_path, emails={"hello": "draft"})
    outcome = go_live_paths(db, [path], datetime.now(UTC))
    messages = [str(problem) for problem in outcome.errors]
    assert len(messages) == 1
    assert "tile 'send-hello'" in messages[0]
    assert "email 'hello', which is not published" in messages[0]
    assert db.execute("SELECT count(*) FROM journeys").fetchone() == (0,)


def test_go_live_rejects_tile_without_email(db, tmp_path):
    path = write_definitions(
        tmp_path, tiles=[{"id": "mail", "type": "email", "email": "missing"}]
    )
    outcome = go_live_paths(db, [path], datetime.now(UTC))
    messages = [str(problem) for problem in outcome.errors]
    assert any(
        "tile 'mail'" in m and "email 'missing', which is not defined" in m
        for m in messages
    )


def test_go_live_warns_about_empty_audience(db, tmp_path):
    path = write_definitions(
        tmp_path, segment={"where": [{"field": "country", "op": "eq", "value": "NL"}]}
    )
    outcome = go_live_paths(db, [path], datetime.now(UTC))
    assert not outcome.errors
    warnings = [
        str(problem) for problem in outcome.problems if problem.severity == "warning"
    ]
    assert any("segment 'audience' has no members now" in w for w in warnings)
    assert db.execute("SELECT status FROM journeys").fetchone() == ("live",)


def test_going_live_twice_changes_nothing(db, tmp_path):
    path = write_definitions(tmp_path)
    first = go_live_paths(db, [path], datetime.now(UTC))
    second = go_live_paths(db, [path], datetime.now(UTC))
    assert first.journeys[0].created
    assert not second.journeys[0].created
    assert db.execute("SELECT count(*) FROM journey_versions").fetchone() == (1,)


def _entered(db) -> int:
    return int(db.execute("SELECT count(*) FROM entries").fetchone()[0])


def _queued_contacts(broker_url: str, queue: str) -> list[int]:
    """Drain a queue and return the contacts its messages carry."""
    import json

    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    contacts: list[int] = []
    try:
        channel = connection.channel()
        while True:
            method, _, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return contacts
            contacts.extend(json.loads(body)["args"][0]["contacts"])
    finally:
        connection.close()


@pytest.mark.slow
def test_large_segment_fed_once_in_bounded_memory(db, processes, tmp_path):
    """200,000 members; the coordinator is killed half-way and restarted. Every
    member enters exactly once, and no process passes the memory ceiling."""
    total = 200_000
    processes.env["JOURNEYS_OUTBOX_RETRY_SECONDS"] = "2"
    contacts = tmp_path / "contacts.csv"
    write_csv(contacts, total, 5)
    report = import_contacts(db, contacts)
    assert report.inserted == total
    path = write_definitions(tmp_path, tiles=[{"id": "done", "type": "exit"}])
    assert not go_live_paths(db, [path], datetime.now(UTC)).errors

    coordinator = processes.start_coordinator()
    peaks: dict[str, float] = {}
    wait_until(
        lambda: _entered(db) >= total // 2,
        300,
        what="half the segment entered",
        interval=0.5,
    )
    peaks["coordinator before kill"] = rss_peak_mb(coordinator.pid)
    processes.kill(coordinator)
    half = _entered(db)

    coordinator = processes.start_coordinator()
    wait_until(
        lambda: _entered(db) == total,
        300,
        what="the whole segment entered",
        interval=0.5,
    )
    wait_until(
        lambda: db.execute("SELECT count(*) FROM outbox").fetchone() == (0,),
        60,
        what="outbox empty",
    )
    peaks["coordinator after restart"] = rss_peak_mb(coordinator.pid)

    queued = _queued_contacts(processes.broker_url, "tile.audience")
    assert len(set(queued)) == total
    members = db.execute(
        "SELECT count(*), count(DISTINCT contact) FROM entries"
    ).fetchone()
    assert members == (total, total)
    steps = db.execute("SELECT count(*) FROM steps WHERE tile = 'audience'").fetchone()
    assert steps == (total,)

    # Publish the drained messages' contacts again and let workers finish the journey.
    journey_id, version = db.execute("SELECT id, version FROM journeys").fetchone()
    processes.publish(
        "tile.audience",
        "audience_tile",
        (
            {
                "journey_id": journey_id,
                "version": version,
                "tile": "audience",
                "contacts": queued[i : i + 500],
            }
            for i in range(0, len(queued), 500)
        ),
    )
    workers = processes.start_workers(processes=2, threads=4)
    wait_until(
        lambda: (
            db.execute(
                "SELECT count(*) FROM entries WHERE state = 'completed'"
            ).fetchone()
            == (total,)
        ),
        300,
        what="every contact through the exit tile",
        interval=1,
    )
    for index, pid in enumerate(tree_pids(workers.pid)):
        peaks[f"worker process {index}"] = rss_peak_mb(pid)
    time.sleep(0.1)
    print(f"\nentered before kill: {half}; peak resident memory (MB): {peaks}")
    for role, megabytes in peaks.items():
        assert megabytes < MEMORY_CEILING_MB, role


def test_coordinator_analyzes_the_tables_a_journey_fills(db, tmp_path):
    """Statistics follow tables that grew from empty within seconds: after the
    coordinator's refresh, a batch lookup of 50 steps reads them by key
    instead of every step of the tile."""
    tables = ["contacts", "entries", "steps"]
    before = _rows_inserted(db, tables)
    analyzes = _analyze_counts(db, tables)
    with _autovacuum_off(db, tables):
        _go_live_with_contacts(db, tmp_path, 3000)
        tick(get_settings())
        assert db.execute("SELECT count(*) FROM steps").fetchone() == (3000,)

        # Row counts reach the statistics views when each session flushes
        # them, which can take several seconds for an idle pooled connection.
        wait_until(
            lambda: all(
                count >= before[table] + 3000
                for table, count in _rows_inserted(db, tables).items()
            ),
            30,
            what="the new rows counted in pg_stat_user_tables",
        )
        # The tick analyzes between pages what it saw change; this call
        # analyzes the rest.
        refresh_statistics(db)
        after = _analyze_counts(db, tables)
        for table in tables:
            assert after[table] > analyzes[table], table
        assert refresh_statistics(db) == []

    contacts = [row[0] for row in db.execute("SELECT id FROM contacts LIMIT 50")]
    plan = "\n".join(
        row[0]
        for row in db.execute(
            "EXPLAIN SELECT contact FROM steps WHERE journey_id = 1"
            " AND tile = 'audience' AND contact = ANY(%s) AND state = 'in_progress'",
            (contacts,),
        )
    )
    index_lines = [line for line in plan.splitlines() if "Index Cond" in line]
    assert index_lines and "contact = ANY" in index_lines[0], plan


def test_feed_analyzes_between_pages(db, tmp_path):
    """The tiles work on the first pages while later ones are fed, so the
    statistics cannot wait for the end of the tick: after three pages of
    1,000 the entries and steps have been analyzed."""
    tables = ["entries", "steps"]
    with _autovacuum_off(db, tables):
        _go_live_with_contacts(db, tmp_path, 3000)
        before = _analyze_counts(db, tables)
        settings = get_settings().model_copy(update={"feed_page_size": 1000})
        with get_pool().connection() as conn:
            fed, done = feed_journey(conn, 1, datetime.now(UTC), settings, 3)
        assert (fed, done) == (3000, False)
        after = _analyze_counts(db, tables)
        for table in tables:
            assert after[table] > before[table], table


def test_batch_lookup_on_unanalyzed_tile(db):
    """Contacts reach a tile after the last ANALYZE, so the statistics
    estimate that it has no steps. The engine's sessions still read a batch of 50 by key
    instead of every step of that tile."""
    insert = (
        "INSERT INTO steps (journey_id, tile, contact, version, state, entered_at)"
        " SELECT 1, %s, g, 1, %s, now() FROM generate_series(1, %s) AS g"
    )
    db.execute(insert, ("audience", "completed", 100_000))
    db.execute("ANALYZE steps")
    db.execute(insert, ("send-hello", "in_progress", 20_000))

    with get_pool().connection() as conn:
        conn.execute(
            "PREPARE batch (integer, text, bigint[]) AS SELECT contact FROM steps"
            " WHERE journey_id = $1 AND tile = $2 AND contact = ANY($3)"
            " AND state = 'in_progress'"
        )
        try:
            # A utility statement takes no bound parameters.
            contacts = ",".join(str(contact) for contact in range(5001, 5051))
            rows = conn.execute(
                "EXPLAIN (ANALYZE, COSTS OFF)"
                f" EXECUTE batch (1, 'send-hello', '{{{contacts}}}')"
            ).fetchall()
        finally:
            conn.execute("DEALLOCATE batch")
    plan = "\n".join(row[0] for row in rows)
    index_lines = [line for line in plan.splitlines() if "Index Cond" in line]
    assert index_lines, plan
    assert "contact = ANY" in index_lines[0], plan
    assert "Rows Removed by Filter" not in plan, plan


def test_custom_plans_use_the_value(db):
    """The engine's sessions plan generically; inside custom_plans a range
    over timers is planned for the time given, so the plan shows the value."""
    with get_pool().connection() as conn:
        conn.execute(
            "PREPARE due (timestamptz) AS"
            " SELECT count(*) FROM timers WHERE due_at <= $1"
        )
        explain = "EXPLAIN EXECUTE due ('2027-01-01T00:00:00Z')"
        try:
            generic = "\n".join(row[0] for row in conn.execute(explain))
            with custom_plans(conn):
                custom = "\n".join(row[0] for row in conn.execute(explain))
        finally:
            conn.execute("DEALLOCATE due")
    assert "$1" in generic, generic
    assert "$1" not in custom, custom
    assert "2027-01-01" in custom, custom


@contextmanager
def _autovacuum_off(db, tables: list[str]) -> Iterator[None]:
    """Keep autovacuum from racing the coordinator to the analyze."""
    for table in tables:
        db.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    try:
        yield
    finally:
        for table in tables:
            db.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")


def _go_live_with_contacts(db, tmp_path, count: int) -> None:
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(count)))
    outcome = go_live_paths(db, [write_definitions(tmp_path)], datetime.now(UTC))
    assert not outcome.errors


def _analyze_counts(db, tables: list[str]) -> dict[str, int]:
    rows = db.execute(
        "SELECT relname, analyze_count FROM pg_stat_user_tables"
        " WHERE relname = ANY(%s)",
        (tables,),
    ).fetchall()
    return {name: int(count) for name, count in rows}


def _rows_inserted(db, tables: list[str]) -> dict[str, int]:
    rows = db.execute(
        "SELECT relname, n_tup_ins FROM pg_stat_user_tables WHERE relname = ANY(%s)",
        (tables,),
    ).fetchall()
    return {name: int(count) for name, count in rows}
