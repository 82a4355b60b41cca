"""What every tile shares: the contact message, the journey plan, the window
gate, the hand-on through the outbox, and leaving the journey."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dramatiq
import psycopg
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.config import get_settings
from shared.definitions import AUDIENCE_TILE, Journey, walk_tiles
from shared.errors import BrokenMessage, NotFound

logger = logging.getLogger(__name__)

QUEUE_FOR_TYPE = {
    "audience": "tile.audience",
    "email": "tile.email",
    "exit": "tile.exit",
}
ACTOR_FOR_TYPE = {
    "audience": "audience_tile",
    "email": "email_tile",
    "exit": "exit_tile",
}


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


def parse_message(payload: Any) -> ContactMessage:
    try:
        return ContactMessage.model_validate(payload)
    except ValidationError as error:
        raise BrokenMessage(
            f"message is not a valid contact message: {error.errors(include_url=False)}"
        ) from error


@dataclass(frozen=True)
class JourneyPlan:
    """One published version of a journey, as the tiles need it."""

    journey_id: int
    name: str
    version: int
    definition: Journey
    tiles: dict[str, Any]
    next_tiles: dict[str, str | None]

    def tile_type(self, tile_id: str) -> str:
        if tile_id == AUDIENCE_TILE:
            return "audience"
        if tile_id not in self.tiles:
            raise BrokenMessage(
                f"journey {self.name!r} version {self.version} has no tile {tile_id!r}"
            )
        return str(self.tiles[tile_id].type)


_plans: dict[tuple[int, int], JourneyPlan] = {}
_plans_lock = threading.Lock()


def load_plan(conn: psycopg.Connection, journey_id: int, version: int) -> JourneyPlan:
    """Return a journey version's plan; versions never change, so it is cached."""
    key = (journey_id, version)
    with _plans_lock:
        if key in _plans:
            return _plans[key]
    row = conn.execute(
        "SELECT j.name, v.definition FROM journey_versions v"
        " JOIN journeys j ON j.id = v.journey_id"
        " WHERE v.journey_id = %s AND v.version = %s",
        key,
    ).fetchone()
    if row is None:
        raise NotFound(f"journey {journey_id} has no version {version}")
    definition = Journey.model_validate(row[1])
    plan = _build_plan(journey_id, row[0], version, definition)
    with _plans_lock:
        _plans[key] = plan
    return plan


def _build_plan(
    journey_id: int, name: str, version: int, definition: Journey
) -> JourneyPlan:
    tiles = walk_tiles(definition.tiles)
    order = [AUDIENCE_TILE, *(tile.id for tile in tiles)]
    next_tiles: dict[str, str | None] = {}
    for position, tile_id in enumerate(order):
        following = order[position + 1] if position + 1 < len(order) else None
        next_tiles[tile_id] = following
    for tile in tiles:
        if tile.type == "exit":
            next_tiles[tile.id] = None
    return JourneyPlan(
        journey_id,
        name,
        version,
        definition,
        {tile.id: tile for tile in tiles},
        next_tiles,
    )


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
        " WHERE journey_id = %s AND tile = %s AND contact = ANY(%s) AND state = 'in_progress'"
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
) -> list[tuple]:
    """Move contacts from a tile to the next one inside the caller's transaction.

    Writes the next tile's step records and outbox rows, or finishes the
    contacts' journey after the last tile. Returns the outbox rows to publish
    once the transaction has committed.
    """
    if not contacts:
        return []
    next_tile = plan.next_tiles.get(from_tile)
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
    """Create in-progress steps at `tile` and their outbox rows; skip contacts
    that already have a step there."""
    created = conn.execute(
        "INSERT INTO steps (journey_id, tile, contact, version, state, entered_at)"
        " SELECT %s, %s, contact, %s, 'in_progress', %s FROM unnest(%s::bigint[]) AS contact"
        " ON CONFLICT DO NOTHING RETURNING contact",
        (journey_id, tile, version, now, list(contacts)),
    ).fetchall()
    if not created:
        return []
    return conn.execute(
        "INSERT INTO outbox (journey_id, version, tile, contact)"
        " SELECT %s, %s, %s, contact FROM unnest(%s::bigint[]) AS contact"
        " RETURNING id, journey_id, version, tile, contact",
        (journey_id, version, tile, [row[0] for row in created]),
    ).fetchall()


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
