"""The wait tile: keeps each contact in PostgreSQL until its due time.

The contact's step stays in progress while a timer row waits; the
coordinator releases due timers in batches. No broker message is delayed,
so RabbitMQ's consumer timeout never applies to a wait.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta

from services.tiles.common import (
    ContactMessage,
    check_tile,
    declare_tile_actor,
    open_gate,
    screen_contacts,
)
from services.tiles.plan import load_plan
from shared import clock
from shared.broker import configure_broker
from shared.db import get_pool
from shared.definitions import WaitTile, parse_duration, parse_until
from shared.metrics import count_outcome
from shared.windows import load_zone, to_utc

configure_broker()


def due_time(tile: WaitTile, entered: datetime, timezone: str) -> datetime:
    """Return when a contact that reached the wait at `entered` leaves it.

    A duration is exact elapsed time, so 'wait 24h' across a clock change
    lands at a different local hour. 'next HH:MM' is the first such local
    time after entering; in a spring-forward gap it is the end of the gap,
    and when it happens twice it is the first occurrence.
    """
    if tile.duration is not None:
        return entered + parse_duration(tile.duration)
    zone = load_zone(timezone)
    until = parse_until(tile.until or "")
    if isinstance(until, datetime):
        return to_utc(until, zone, ambiguous="earlier", nonexistent="shift_forward")
    return _next_time_of_day(until, entered, zone)


def _next_time_of_day(moment: time, entered: datetime, zone) -> datetime:  # type: ignore[no-untyped-def]
    day = entered.astimezone(zone).date()
    for offset in range(3):
        local = datetime.combine(day + timedelta(days=offset), moment)
        due = to_utc(local, zone, ambiguous="earlier", nonexistent="shift_forward")
        if due > entered:
            return due
    raise AssertionError("a time of day recurs within three days")


def run_wait(message: ContactMessage) -> None:
    now = clock.now()
    with get_pool().connection() as conn, conn.transaction():
        plan = load_plan(conn, message.journey_id, message.version)
        check_tile(plan, message, "wait")
        if not open_gate(conn, plan, message, now):
            return
        tile = plan.tiles[message.tile]
        arrived = [
            row[0]
            for row in conn.execute(
                "SELECT contact FROM steps WHERE journey_id = %s AND tile = %s"
                " AND contact = ANY(%s) AND state = 'in_progress'"
                " AND NOT EXISTS (SELECT 1 FROM timers t"
                " WHERE t.journey_id = steps.journey_id"
                " AND t.tile = steps.tile AND t.contact = steps.contact)",
                (plan.journey_id, message.tile, message.contacts),
            )
        ]
        staying = _screen_on_arrival(conn, plan, message.tile, arrived, now)
        due = due_time(tile, now, plan.definition.timezone)
        conn.execute(
            "INSERT INTO timers (journey_id, tile, contact, version, kind, due_at)"
            " SELECT %s, %s, contact, %s, 'wait', %s"
            " FROM unnest(%s::bigint[]) AS contact"
            " ON CONFLICT DO NOTHING",
            (plan.journey_id, message.tile, plan.version, max(due, now), staying),
        )
    count_outcome(plan.name, message.tile, "waiting", len(staying))


def _screen_on_arrival(
    conn, plan, tile: str, contacts: list[int], now: datetime
) -> list[int]:  # type: ignore[no-untyped-def]
    """Contacts who may not go on leave at once; their wait step completes."""
    staying = screen_contacts(conn, plan, tile, contacts, now)
    leaving = [contact for contact in contacts if contact not in set(staying)]
    if leaving:
        conn.execute(
            "UPDATE steps SET state = 'completed', done_at = %s"
            " WHERE journey_id = %s AND tile = %s AND contact = ANY(%s)",
            (now, plan.journey_id, tile, leaving),
        )
    return staying


wait_tile = declare_tile_actor("wait", run_wait)
