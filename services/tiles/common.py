"""Parts every tile shares: the contact message, the journey plan, the window
gate, the hand-on through the outbox, and leaving the journey."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import dramatiq
import psycopg
from pydantic import BaseModel, ConfigDict, Field

from services.tiles.plan import ACTOR_FOR_TYPE, QUEUE_FOR_TYPE, JourneyPlan, load_plan
from shared.config import get_settings
from shared.definitions import AUDIENCE_TILE
from shared.errors import BrokenMessage, PermanentError
from shared.intake import accept

logger = logging.getLogger(__name__)


class ContactMessage(BaseModel):
    """The message a tile actor receives: which contacts reached which tile.

    It carries ids only; the tile reads the contact and the definitions from
    PostgreSQL. Several contacts of one journey and tile may travel together,
    and each still gets its own step record.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    journey_id: int = Field(gt=0)
    version: int = Field(gt=0)
    tile: str = Field(min_length=1, max_length=100)
    contacts: list[int] = Field(min_length=1, max_length=1000)


def declare_tile_actor(
    kind: str, run: Callable[[ContactMessage], object], **options: Any
) -> dramatiq.Actor:
    """Declare the Dramatiq actor of a tile type on its own queue.

    The actor validates each message and runs `run` on it. Permanent errors
    dead-letter the message at once; others are retried after 1 s at first.
    """
    queue = QUEUE_FOR_TYPE[kind]

    def process(*args: Any, **kwargs: Any) -> None:
        run(accept_message(queue, args, kwargs))

    process.__name__ = ACTOR_FOR_TYPE[kind]
    settings: dict[str, Any] = {
        "throws": (PermanentError,),
        "min_backoff": 1_000,
        "max_backoff": 60_000,
        "time_limit": get_settings().actor_time_limit_seconds * 1000,
        **options,
    }
    decorate = dramatiq.actor(
        actor_name=ACTOR_FOR_TYPE[kind], queue_name=queue, **settings
    )
    return decorate(process)


def parse_message(payload: Any) -> ContactMessage:
    """Validate one tile message argument, raising BrokenMessage."""
    return accept_message("tile", (payload,), {})


def accept_message(
    queue: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> ContactMessage:
    """Validate a tile message's one argument; a broken message is logged,
    counted and dead-lettered by raising BrokenMessage."""
    return accept(ContactMessage, queue, args, kwargs)


def check_tile(plan: JourneyPlan, message: ContactMessage, tile_type: str) -> None:
    """Raise BrokenMessage, logged, when the message's tile is not a tile of
    this type in its journey version: no retry could make it one."""
    found = "audience" if message.tile == AUDIENCE_TILE else None
    if message.tile in plan.tiles:
        found = plan.tiles[message.tile].type
    if found != tile_type:
        error = BrokenMessage(
            f"journey {plan.name!r} version {plan.version} has no {tile_type} tile "
            f"{message.tile!r}"
        )
        logger.warning("message dead-lettered: %s", error)
        raise error


def journey_gate(
    conn: psycopg.Connection, journey_id: int, now: datetime
) -> str | None:
    """Return why the journey takes no more work now, or None when it is open."""
    row = conn.execute(
        "SELECT status, end_at FROM journeys WHERE id = %s", (journey_id,)
    ).fetchone()
    if row is None:
        return "journey_deleted"
    status, end_at = row
    if status == "stopped":
        return "journey_stopped"
    if status != "live" or now >= end_at:
        return "journey_ended"
    return None


def stop_contacts(
    conn: psycopg.Connection,
    journey_id: int,
    tile: str,
    contacts: Sequence[int],
    reason: str,
    now: datetime,
) -> list[int]:
    """Mark the contacts' steps at this tile stopped; return those it changed."""
    rows = conn.execute(
        "UPDATE steps SET state = 'stopped', reason = %s, done_at = %s"
        " WHERE journey_id = %s AND tile = %s AND contact = ANY(%s)"
        " AND state = 'in_progress'"
        " RETURNING contact",
        (reason, now, journey_id, tile, list(contacts)),
    ).fetchall()
    stopped = [row[0] for row in rows]
    leave_journey(conn, journey_id, stopped, "stopped", reason, now)
    return stopped


def leave_journey(
    conn: psycopg.Connection,
    journey_id: int,
    contacts: Sequence[int],
    state: str,
    reason: str | None,
    now: datetime,
) -> None:
    if contacts:
        conn.execute(
            "UPDATE entries SET state = %s, reason = %s, left_at = %s"
            " WHERE journey_id = %s AND contact = ANY(%s) AND state = 'in_progress'",
            (state, reason, now, journey_id, list(contacts)),
        )


def hand_on(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    from_tile: str,
    contacts: Sequence[int],
    now: datetime,
    branch: str | None = None,
) -> list[tuple]:
    """Move contacts from a tile to the next one inside the caller's transaction.

    Writes the next tile's step records and outbox rows, or finishes the
    contacts' journey where their path ends. `branch` picks the branch of a
    condition or split tile. Returns the outbox rows to publish once the
    transaction has committed.
    """
    if not contacts:
        return []
    next_tile = plan.after(from_tile, branch)
    if next_tile is None:
        leave_journey(conn, plan.journey_id, contacts, "completed", None, now)
        return []
    return enqueue_step(conn, plan.journey_id, plan.version, next_tile, contacts, now)


def enqueue_step(
    conn: psycopg.Connection,
    journey_id: int,
    version: int,
    tile: str,
    contacts: Sequence[int],
    now: datetime,
) -> list[tuple]:
    """Create in-progress steps at `tile` and their outbox rows, in one round
    trip; skip contacts that already have a step there, and everyone when
    the journey is no longer live, since its end stops contacts already.
    Returns the outbox rows."""
    params = {
        "journey": journey_id,
        "version": version,
        "tile": tile,
        "now": now,
        "contacts": list(contacts),
    }
    return conn.execute(_ENQUEUE, params).fetchall()


_ENQUEUE = """
WITH created AS (
    INSERT INTO steps (journey_id, tile, contact, version, state, entered_at)
    SELECT %(journey)s, %(tile)s, contact, %(version)s, 'in_progress', %(now)s
    FROM unnest(%(contacts)s::bigint[]) AS contact
    WHERE EXISTS (SELECT 1 FROM journeys
                  WHERE id = %(journey)s AND status = 'live' AND end_at > %(now)s)
    ON CONFLICT DO NOTHING RETURNING contact)
INSERT INTO outbox (journey_id, version, tile, contact)
SELECT %(journey)s, %(version)s, %(tile)s, contact FROM created
RETURNING id, journey_id, version, tile, contact
"""


def publish_outbox(conn: psycopg.Connection, rows: Sequence[tuple]) -> int:
    """Send outbox rows as tile messages, then delete them; return messages sent.

    A crash between sending and deleting sends them again later, which the
    step records make harmless.
    """
    if not rows:
        return 0
    broker = dramatiq.get_broker()
    per_message = get_settings().contacts_per_message
    grouped: dict[tuple[int, int, str], list[tuple[int, int]]] = defaultdict(list)
    for outbox_id, journey_id, version, tile, contact in rows:
        grouped[(journey_id, version, tile)].append((outbox_id, contact))

    sent = 0
    for (journey_id, version, tile), items in grouped.items():
        plan = load_plan(conn, journey_id, version)
        actor = broker.get_actor(ACTOR_FOR_TYPE[plan.tile_type(tile)])
        for start in range(0, len(items), per_message):
            chunk = items[start : start + per_message]
            payload = ContactMessage(
                journey_id=journey_id,
                version=version,
                tile=tile,
                contacts=[c for _, c in chunk],
            )
            actor.send(payload.model_dump())
            sent += 1
    conn.execute("DELETE FROM outbox WHERE id = ANY(%s)", ([row[0] for row in rows],))
    return sent


def claim_steps(
    conn: psycopg.Connection, message: ContactMessage, now: datetime
) -> list[int]:
    """Complete the in-progress steps of the message's contacts at its tile.

    Returns only the contacts this call completed: a redelivered or duplicate
    message finds their steps done and claims nothing.
    """
    rows = conn.execute(
        "UPDATE steps SET state = 'completed', done_at = %s"
        " WHERE journey_id = %s AND tile = %s AND contact = ANY(%s)"
        " AND state = 'in_progress' RETURNING contact",
        (now, message.journey_id, message.tile, list(message.contacts)),
    ).fetchall()
    return [row[0] for row in rows]


def screen_contacts(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    contacts: list[int],
    now: datetime,
) -> list[int]:
    """Take contacts who unsubscribed, bounced or were suppressed out of the
    journey at this tile; return the others.

    The caller has completed the contacts' steps here; the ones that leave
    get the outcome 'left' and the reason.
    """
    from services.tiles.consent import consent_reasons

    reasons = consent_reasons(conn, plan, contacts)
    for contact, reason in reasons.items():
        conn.execute(
            "UPDATE steps SET outcome = 'left', reason = %s"
            " WHERE journey_id = %s AND tile = %s AND contact = %s",
            (reason, plan.journey_id, tile, contact),
        )
        leave_journey(conn, plan.journey_id, [contact], "left", reason, now)
    return [contact for contact in contacts if contact not in reasons]


def open_gate(
    conn: psycopg.Connection, plan: JourneyPlan, message: ContactMessage, now: datetime
) -> bool:
    """Return True when the journey takes work now; otherwise stop the
    message's contacts at its tile and return False."""
    gate = journey_gate(conn, plan.journey_id, now)
    if gate is None:
        return True
    stop_contacts(conn, plan.journey_id, message.tile, message.contacts, gate, now)
    return False
