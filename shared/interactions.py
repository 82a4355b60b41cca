"""Recording what contacts did with an email: opens, clicks, unsubscribes and
bounces, from the tracking service, the events queue or a simulation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import psycopg

logger = logging.getLogger(__name__)

Kind = Literal["opened", "clicked", "unsubscribed", "bounced"]


@dataclass(frozen=True)
class SendRef:
    send_id: int
    journey_id: int
    tile: str
    contact: int
    links: list[str]
    state: str


def find_send(conn: psycopg.Connection, send_id: int) -> SendRef | None:
    row = conn.execute(
        "SELECT id, journey_id, tile, contact, links, state FROM sends WHERE id = %s",
        (send_id,),
    ).fetchone()
    return SendRef(*row) if row else None


def find_send_by_message_id(
    conn: psycopg.Connection, message_id: str
) -> SendRef | None:
    wanted = message_id.strip()
    if not wanted.startswith("<"):
        wanted = f"<{wanted}>"
    row = conn.execute(
        "SELECT id, journey_id, tile, contact, links, state FROM sends"
        " WHERE message_id = %s",
        (wanted,),
    ).fetchone()
    return SendRef(*row) if row else None


def record_interaction(
    conn: psycopg.Connection,
    send: SendRef,
    kind: Kind,
    at: datetime,
    *,
    link: str | None = None,
    hard: bool | None = None,
    source: str = "tracking",
) -> None:
    """Store one interaction in the caller's transaction, and apply what it
    means for the contact: an unsubscribe or a hard bounce stops all email."""
    conn.execute(
        "INSERT INTO interactions"
        " (journey_id, tile, contact, send_id, kind, link, hard, at, source)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            send.journey_id,
            send.tile,
            send.contact,
            send.send_id,
            kind,
            link,
            hard,
            at,
            source,
        ),
    )
    if kind == "unsubscribed":
        conn.execute(
            "UPDATE contacts SET unsubscribed = true, updated_at = clock_timestamp()"
            " WHERE id = %s AND NOT unsubscribed",
            (send.contact,),
        )
    elif kind == "bounced" and hard:
        conn.execute(
            "UPDATE contacts SET bounced_at = %s WHERE id = %s AND bounced_at IS NULL",
            (at, send.contact),
        )
    logger.debug(
        "journey %s tile %s contact %s: %s",
        send.journey_id,
        send.tile,
        send.contact,
        kind,
    )
