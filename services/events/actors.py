"""The interaction_event actor: interactions that other systems, such as the
mail relay's bounce processor, publish on the events.interactions queue.

docs/events.md describes the message format for producers.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq

from services.events.models import INTERACTION_KINDS, InteractionEvent
from shared.broker import configure_broker
from shared.config import get_settings
from shared.db import get_pool
from shared.errors import BrokenMessage
from shared.intake import accept
from shared.interactions import find_send_by_message_id, record_interaction

logger = logging.getLogger(__name__)
configure_broker()

QUEUE = "events.interactions"


def parse_event(payload: Any) -> InteractionEvent:
    """Validate a message argument, raising BrokenMessage that names each bad field."""
    return accept(InteractionEvent, QUEUE, (payload,), {})


def record_event(event: InteractionEvent) -> str:
    """Record the event as an interaction of its send, in one transaction.

    Returns 'recorded', 'duplicate' when an identical interaction exists, or
    'unknown_message' when no send has the event's Message-ID.
    """
    kind = INTERACTION_KINDS[event.kind]
    with get_pool().connection() as conn, conn.transaction():
        send = find_send_by_message_id(conn, event.message_id)
        if send is None:
            return "unknown_message"
        # The row lock makes two deliveries of one event wait for each other,
        # so the second one finds the first one's row and skips.
        conn.execute("SELECT 1 FROM sends WHERE id = %s FOR UPDATE", (send.send_id,))
        duplicate = conn.execute(
            "SELECT 1 FROM interactions WHERE send_id = %s AND kind = %s AND at = %s"
            " AND link IS NOT DISTINCT FROM %s",
            (send.send_id, kind, event.at, event.link),
        ).fetchone()
        if duplicate:
            return "duplicate"
        record_interaction(
            conn,
            send,
            kind,
            event.at,
            link=event.link,
            hard=event.hard if event.kind == "bounce" else None,
            source="queue",
        )
    return "recorded"


@dramatiq.actor(
    actor_name="interaction_event",
    queue_name=QUEUE,
    # BrokenMessage fails the message at once, without retries, and Dramatiq
    # moves it to the dead-letter queue events.interactions.XQ.
    throws=(BrokenMessage,),
    time_limit=get_settings().actor_time_limit_seconds * 1000,
)
def interaction_event(*args: Any, **kwargs: Any) -> None:
    """Record one event, which is the message's only argument.

    The signature takes any arguments so that a message with the wrong
    number of them is dead-lettered at once like any other broken message,
    instead of failing with TypeError and being retried for days.
    """
    event = accept(InteractionEvent, QUEUE, args, kwargs)
    outcome = record_event(event)
    if outcome == "unknown_message":
        logger.warning(
            "%s event dropped: no send has Message-ID %s", event.kind, event.message_id
        )
    elif outcome == "duplicate":
        logger.info(
            "%s event of Message-ID %s at %s skipped: it is already recorded",
            event.kind,
            event.message_id,
            event.at.isoformat(),
        )
