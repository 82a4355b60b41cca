"""The coordinator: keeps time for every live journey.

Each tick it ends journeys whose end has passed, feeds segment members into
the audience tile of journeys inside their window, and publishes outbox rows
that a crashed process left behind. Several coordinators may run at once:
each journey's feeding row and each outbox row is locked with SKIP LOCKED,
so no work is done twice.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import dramatiq
import psycopg
from psycopg import sql

from services.coordinator.statistics import refresh_statistics
from services.coordinator.timers import release_timers
from services.tiles.common import enqueue_step, publish_outbox
from shared import clock
from shared.config import Settings, get_settings
from shared.db import get_pool
from shared.definitions import AUDIENCE_TILE
from shared.segments import membership
from shared.store import end_journey, live_definition

logger = logging.getLogger(__name__)


@dataclass
class TickReport:
    ended: int = 0
    fed: int = 0
    released: int = 0
    republished: int = 0
    feeding_done: bool = True


@dataclass
class CoordinatorState:
    """The coordinator's own health, as its metrics show it."""

    last_tick: float = 0.0
    last_report: TickReport | None = None


state = CoordinatorState()


def tick(
    settings: Settings | None = None, now: datetime | None = None, max_pages: int = 20
) -> TickReport:
    settings = settings or get_settings()
    now = now or clock.now()
    report = TickReport()
    with get_pool().connection() as conn:
        report.ended = _end_due_journeys(conn, now)
        report.released = release_timers(conn, now)
        for journey_id in _journeys_in_window(conn, now):
            fed, done = feed_journey(conn, journey_id, now, settings, max_pages)
            report.fed += fed
            report.feeding_done = report.feeding_done and done
        report.republished = republish_outbox(conn, settings.outbox_retry_seconds)
        refresh_statistics(conn)
    state.last_tick = time.time()
    state.last_report = report
    return report


def run_forever(
    stop: threading.Event | None = None, settings: Settings | None = None
) -> None:
    settings = settings or get_settings()
    stop = stop or threading.Event()
    logger.info("coordinator started, ticking every %.1f s", settings.tick_seconds)
    while not stop.is_set():
        started = time.monotonic()
        try:
            report = tick(settings)
        except (psycopg.Error, OSError, dramatiq.errors.BrokerError) as error:
            # Work is committed with its outbox rows before anything is
            # published, so a later tick republishes what this one could not.
            logger.warning("coordinator tick failed, retrying next tick: %s", error)
        else:
            if report.fed or report.ended or report.released or report.republished:
                logger.info(
                    "tick: %d contacts fed, %d released from timers, %d journeys ended,"
                    " %d outbox rows republished",
                    report.fed,
                    report.released,
                    report.ended,
                    report.republished,
                )
            if not report.feeding_done:
                continue  # more members are waiting: feed again without sleeping
        stop.wait(max(0.0, settings.tick_seconds - (time.monotonic() - started)))
    logger.info("coordinator stopped")


def _end_due_journeys(conn: psycopg.Connection, now: datetime) -> int:
    ended = 0
    while True:
        with conn.transaction():
            row = conn.execute(
                "SELECT id, name FROM journeys WHERE status = 'live' AND end_at <= %s"
                " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                (now,),
            ).fetchone()
            if row is None:
                return ended
            end_journey(conn, row[0], "completed", "journey_ended", now)
            logger.info("journey %s reached its end and is completed", row[1])
            ended += 1


def _journeys_in_window(conn: psycopg.Connection, now: datetime) -> list[int]:
    rows = conn.execute(
        "SELECT id FROM journeys"
        " WHERE status = 'live' AND start_at <= %s AND end_at > %s ORDER BY id",
        (now, now),
    ).fetchall()
    return [row[0] for row in rows]


def feed_journey(
    conn: psycopg.Connection,
    journey_id: int,
    now: datetime,
    settings: Settings,
    max_pages: int,
) -> tuple[int, bool]:
    """Enter new segment members into the journey, a page per transaction.

    Members are read by keyset over (updated_at, id), so a contact who joins
    the segment later (inserted or updated) comes after the cursor. At the end
    of a pass the cursor moves back by the overlap, to catch updates that
    committed late; entries already made are skipped. Returns the number fed
    and whether the pass reached the end of the segment.
    """
    fed = 0
    for _ in range(max_pages):
        with conn.transaction():
            page = _feed_page(conn, journey_id, now, settings)
        if page is None:
            return fed, True
        count, outbox, done = page
        fed += count
        publish_outbox(conn, outbox)
        # The tiles start on these contacts at once. Statistics that lag a
        # whole tick's pages behind make them plan as for empty tables.
        refresh_statistics(conn)
        if done:
            return fed, True
    return fed, False


def _feed_page(
    conn: psycopg.Connection, journey_id: int, now: datetime, settings: Settings
) -> tuple[int, list[tuple], bool] | None:
    journey = conn.execute(
        "SELECT j.version, j.feed_after_at, j.feed_after_id,"
        " v.definition -> 'audience' ->> 'segment'"
        " FROM journeys j JOIN journey_versions v"
        " ON v.journey_id = j.id AND v.version = j.version"
        " WHERE j.id = %s AND j.status = 'live' FOR UPDATE OF j SKIP LOCKED",
        (journey_id,),
    ).fetchone()
    if journey is None:
        return None  # another coordinator is feeding it, or it just ended
    version, after_at, after_id, segment_name = journey
    found = live_definition(conn, "segment", segment_name)
    segment = found[0] if found else None
    if segment is None:
        logger.warning(
            "journey %s: segment %r is not published; nothing fed",
            journey_id,
            segment_name,
        )
        return None

    members = conn.execute(
        sql.SQL(
            "SELECT c.id, c.updated_at FROM contacts c"
            " WHERE (c.updated_at, c.id) > ({at}, {id}) AND {member}"
            " AND NOT EXISTS (SELECT 1 FROM entries e"
            " WHERE e.journey_id = {journey} AND e.contact = c.id)"
            " ORDER BY c.updated_at, c.id LIMIT {limit}"
        ).format(
            at=sql.Literal(after_at),
            id=sql.Literal(after_id),
            member=membership(segment),
            journey=sql.Literal(journey_id),
            limit=sql.Literal(settings.feed_page_size),
        )
    ).fetchall()
    done = len(members) < settings.feed_page_size
    if not members:
        return 0, [], True

    contacts = [row[0] for row in members]
    conn.execute(
        "INSERT INTO entries (journey_id, contact, version, entered_at)"
        " SELECT %s, contact, %s, %s FROM unnest(%s::bigint[]) AS contact"
        " ON CONFLICT DO NOTHING",
        (journey_id, version, now, contacts),
    )
    outbox = enqueue_step(conn, journey_id, version, AUDIENCE_TILE, contacts, now)
    last_at, last_id = members[-1][1], members[-1][0]
    if done:
        last_at, last_id = last_at - timedelta(seconds=settings.feed_overlap_seconds), 0
    conn.execute(
        "UPDATE journeys SET feed_after_at = %s, feed_after_id = %s WHERE id = %s",
        (last_at, last_id, journey_id),
    )
    return len(outbox), outbox, done


def republish_outbox(
    conn: psycopg.Connection, older_than_seconds: float, limit: int = 5000
) -> int:
    """Publish outbox rows that their writer did not, for example after a crash."""
    with conn.transaction():
        rows = conn.execute(
            "SELECT id, journey_id, version, tile, contact FROM outbox"
            " WHERE created_at < now() - make_interval(secs => %s)"
            # In the order of the age index, which stops at the first row
            # too young. Walking the ids read every young row in a backlog.
            " ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED",
            (older_than_seconds, limit),
        ).fetchall()
        publish_outbox(conn, rows)
    if rows:
        logger.warning("republished %d outbox rows left behind", len(rows))
    return len(rows)
