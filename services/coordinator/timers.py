"""Releasing timers: waits that are due, and condition tiles whose
interaction arrived or whose 'within' has passed."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime

import psycopg

from services.tiles.common import hand_on, publish_outbox
from services.tiles.condition import EVENT_KINDS
from services.tiles.plan import load_plan

logger = logging.getLogger(__name__)

# Conditions whose watched interaction is recorded, no later than their timeout.
_MET_CONDITIONS = """
SELECT t.journey_id, t.version, t.tile, t.contact FROM timers t
JOIN journeys j ON j.id = t.journey_id AND j.status = 'live'
WHERE t.kind = 'condition' AND EXISTS (
    SELECT 1 FROM interactions i
    WHERE i.journey_id = t.journey_id AND i.contact = t.contact
      AND i.tile = t.watch_tile
      AND i.kind = ANY(CASE t.watch_event WHEN 'opened' THEN %(opened)s::text[]
                                         WHEN 'clicked' THEN %(clicked)s::text[]
                                         ELSE %(unsubscribed)s::text[] END)
      AND (t.watch_link IS NULL OR i.link = t.watch_link)
      AND i.at <= t.due_at)
ORDER BY t.due_at LIMIT %(limit)s FOR UPDATE OF t SKIP LOCKED
"""

_DUE_TIMERS = """
SELECT t.journey_id, t.version, t.tile, t.contact, t.kind FROM timers t
JOIN journeys j ON j.id = t.journey_id AND j.status = 'live'
WHERE t.due_at <= %(now)s
ORDER BY t.due_at LIMIT %(limit)s FOR UPDATE OF t SKIP LOCKED
"""


def release_timers(conn: psycopg.Connection, now: datetime, limit: int = 1000) -> int:
    """Move on, in one transaction per batch, contacts whose timer fired.

    Met conditions go first, so a contact whose interaction and timeout fall
    in the same tick takes 'yes'. Returns the number of contacts moved.
    """
    moved = 0
    while True:
        with conn.transaction():
            met = conn.execute(
                _MET_CONDITIONS,
                {**{e: list(k) for e, k in EVENT_KINDS.items()}, "limit": limit},
            ).fetchall()
            batch = [(*row, "yes") for row in met]
            if len(batch) < limit:
                due = conn.execute(
                    _DUE_TIMERS, {"now": now, "limit": limit - len(batch)}
                )
                batch += [
                    (j, v, t, c, "no" if kind == "condition" else None)
                    for j, v, t, c, kind in due.fetchall()
                ]
            outbox = _move_on(conn, batch, now)
        publish_outbox(conn, outbox)
        moved += len(batch)
        if len(batch) < limit:
            return moved


def _move_on(
    conn: psycopg.Connection, batch: list[tuple], now: datetime
) -> list[tuple]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for journey_id, version, tile, contact, branch in batch:
        groups[(journey_id, version, tile, branch)].append(contact)

    outbox: list[tuple] = []
    for (journey_id, version, tile, branch), contacts in groups.items():
        conn.execute(
            "DELETE FROM timers"
            " WHERE journey_id = %s AND tile = %s AND contact = ANY(%s)",
            (journey_id, tile, contacts),
        )
        claimed = [
            row[0]
            for row in conn.execute(
                "UPDATE steps SET state = 'completed', outcome = %s, done_at = %s"
                " WHERE journey_id = %s AND tile = %s AND contact = ANY(%s)"
                " AND state = 'in_progress' RETURNING contact",
                (branch, now, journey_id, tile, contacts),
            )
        ]
        plan = load_plan(conn, journey_id, version)
        outbox += hand_on(conn, plan, tile, claimed, now, branch=branch)
    if batch:
        logger.debug("released %d timers", len(batch))
    return outbox
