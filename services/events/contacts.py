"""Actors for contact upserts and segment membership changes that other
systems publish; docs/events.md describes the queues and messages."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq

from services.events.models import ContactUpsert, SegmentMembershipChange
from shared.broker import configure_broker
from shared.config import get_settings
from shared.contacts import ContactRow, contact_key, upsert_rows
from shared.db import get_pool
from shared.errors import BrokenMessage
from shared.intake import accept

logger = logging.getLogger(__name__)
configure_broker()

CONTACTS_QUEUE = "events.contacts"
SEGMENTS_QUEUE = "events.segments"


def upsert_contact(change: ContactUpsert) -> str:
    """Insert or update the contact; return 'inserted', 'updated' or 'unchanged'."""
    row = ContactRow(
        key=contact_key(change.contact_id, change.email),
        contact_id=change.contact_id,
        email=change.email,
        firstname=change.firstname,
        lastname=change.lastname,
        unsubscribed=change.unsubscribed,
        fields=dict(change.fields),
    )
    with get_pool().connection() as conn:
        report = upsert_rows(conn, [row])
    if report.inserted:
        return "inserted"
    return "updated" if report.updated else "unchanged"


def change_membership(change: SegmentMembershipChange) -> int:
    """Add or remove the members; return how many rows changed.

    An addition also touches the contact's update time, so that a live
    journey on the segment feeds the contact as a late joiner.
    """
    identifiers = sorted(
        {
            item.strip().lower() if "@" in item else item.strip()
            for item in change.contacts
        }
    )
    with get_pool().connection() as conn, conn.transaction():
        source = conn.execute(
            "SELECT body ->> 'source' FROM definitions"
            " WHERE kind = 'segment' AND name = %s",
            (change.segment,),
        ).fetchone()
        if source is None or source[0] != "queue":
            raise BrokenMessage(
                f"segment {change.segment!r} does not take members from the queue; "
                "define it with 'source: queue'"
            )
        if change.action == "remove":
            return conn.execute(
                "DELETE FROM segment_members"
                " WHERE segment = %s AND identifier = ANY(%s)",
                (change.segment, identifiers),
            ).rowcount
        added = conn.execute(
            "INSERT INTO segment_members (segment, identifier)"
            " SELECT %s, identifier FROM unnest(%s::text[]) AS identifier"
            " ON CONFLICT DO NOTHING",
            (change.segment, identifiers),
        ).rowcount
        conn.execute(
            "UPDATE contacts SET updated_at = clock_timestamp()"
            " WHERE contact_id = ANY(%s) OR lower(email) = ANY(%s)",
            (identifiers, identifiers),
        )
        return added


@dramatiq.actor(
    actor_name="contact_upsert",
    queue_name=CONTACTS_QUEUE,
    throws=(BrokenMessage,),
    time_limit=get_settings().actor_time_limit_seconds * 1000,
)
def contact_upsert(*args: Any, **kwargs: Any) -> None:
    change = accept(ContactUpsert, CONTACTS_QUEUE, args, kwargs)
    outcome = upsert_contact(change)
    logger.debug(
        "contact %s from the queue: %s", change.contact_id or change.email, outcome
    )


@dramatiq.actor(
    actor_name="segment_membership",
    queue_name=SEGMENTS_QUEUE,
    throws=(BrokenMessage,),
    time_limit=get_settings().actor_time_limit_seconds * 1000,
)
def segment_membership(*args: Any, **kwargs: Any) -> None:
    change = accept(SegmentMembershipChange, SEGMENTS_QUEUE, args, kwargs)
    try:
        changed = change_membership(change)
    except BrokenMessage as error:
        logger.warning("segment membership change dead-lettered: %s", error)
        raise
    logger.info(
        "segment %s: %s %d of %d contacts",
        change.segment,
        change.action,
        changed,
        len(change.contacts),
    )
