"""The condition tile: sends each contact down 'yes' or 'no'.

A condition on contact data is decided at once. A condition on an email
interaction sends the contact down 'yes' at once when the interaction is
already recorded; otherwise a timer waits for it, and the coordinator moves
the contact down 'yes' as soon as the interaction arrives, or down 'no' when
'within' has passed.
"""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg import sql

from services.tiles.common import (
    ContactMessage,
    check_tile,
    claim_steps,
    declare_tile_actor,
    hand_on,
    open_gate,
    publish_outbox,
    screen_contacts,
)
from services.tiles.plan import JourneyPlan, load_plan
from shared import clock
from shared.broker import configure_broker
from shared.db import get_pool
from shared.definitions import (
    Condition,
    ConditionTile,
    InteractionCondition,
    Segment,
    parse_duration,
)
from shared.metrics import count_outcome
from shared.segments import membership

configure_broker()

# The interactions a condition's event is met by.
EVENT_KINDS = {
    "opened": ("opened", "clicked"),
    "clicked": ("clicked",),
    "unsubscribed": ("unsubscribed",),
}


def run_condition(message: ContactMessage) -> None:
    now = clock.now()
    outbox: list[tuple] = []
    with get_pool().connection() as conn:
        with conn.transaction():
            plan = load_plan(conn, message.journey_id, message.version)
            check_tile(plan, message, "condition")
            if not open_gate(conn, plan, message, now):
                return
            tile: ConditionTile = plan.tiles[message.tile]
            if isinstance(tile.if_, InteractionCondition):
                outbox = _start_watching(conn, plan, tile, message, now)
            else:
                outbox = _decide_on_data(conn, plan, tile, tile.if_, message, now)
        publish_outbox(conn, outbox)


def _decide_on_data(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: ConditionTile,
    condition: Condition,
    message: ContactMessage,
    now: datetime,
) -> list[tuple]:
    claimed = screen_contacts(conn, plan, tile.id, claim_steps(conn, message, now), now)
    predicate = membership(Segment(kind="segment", name="condition", where=[condition]))
    holding = {
        row[0]
        for row in conn.execute(
            sql.SQL("SELECT c.id FROM contacts c WHERE c.id = ANY(%s) AND {}").format(
                predicate
            ),
            (claimed,),
        )
    }
    return _take_branches(conn, plan, tile.id, claimed, holding, now)


def _take_branches(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    contacts: list[int],
    yes: set[int],
    now: datetime,
) -> list[tuple]:
    outbox: list[tuple] = []
    for branch in ("yes", "no"):
        chosen = [c for c in contacts if (c in yes) == (branch == "yes")]
        if not chosen:
            continue
        conn.execute(
            "UPDATE steps SET outcome = %s"
            " WHERE journey_id = %s AND tile = %s AND contact = ANY(%s)",
            (branch, plan.journey_id, tile, chosen),
        )
        outbox += hand_on(conn, plan, tile, chosen, now, branch=branch)
        count_outcome(plan.name, tile, branch, len(chosen))
    return outbox


def _start_watching(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: ConditionTile,
    message: ContactMessage,
    now: datetime,
) -> list[tuple]:
    """Send contacts whose interaction is already recorded down 'yes'; make a
    timer for the others."""
    condition: InteractionCondition = tile.if_  # type: ignore[assignment]
    already = {
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT contact FROM interactions WHERE journey_id = %s"
            " AND tile = %s AND kind = ANY(%s) AND contact = ANY(%s)"
            " AND (%s::text IS NULL OR link = %s)",
            (
                plan.journey_id,
                condition.email,
                list(EVENT_KINDS[condition.event]),
                message.contacts,
                condition.link,
                condition.link,
            ),
        )
    }
    pending = [
        row[0]
        for row in conn.execute(
            "SELECT contact FROM steps WHERE journey_id = %s AND tile = %s"
            " AND contact = ANY(%s) AND state = 'in_progress'",
            (plan.journey_id, tile.id, message.contacts),
        )
    ]
    decided = [contact for contact in pending if contact in already]
    if decided:
        decided_message = message.model_copy(update={"contacts": decided})
        claimed = screen_contacts(
            conn, plan, tile.id, claim_steps(conn, decided_message, now), now
        )
        outbox = _take_branches(conn, plan, tile.id, claimed, set(claimed), now)
    else:
        outbox = []
    waiting = [contact for contact in pending if contact not in already]
    due = now + parse_duration(tile.within or "0s")
    conn.execute(
        "INSERT INTO timers (journey_id, tile, contact, version, kind, due_at,"
        " watch_tile, watch_event, watch_link)"
        " SELECT %s, %s, contact, %s, 'condition', %s, %s, %s, %s"
        " FROM unnest(%s::bigint[]) AS contact ON CONFLICT DO NOTHING",
        (
            plan.journey_id,
            tile.id,
            plan.version,
            due,
            condition.email,
            condition.event,
            condition.link,
            waiting,
        ),
    )
    return outbox


condition_tile = declare_tile_actor("condition", run_condition)
