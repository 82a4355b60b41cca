"""The audience tile: the entry of every contact that the coordinator feeds in."""

from __future__ import annotations

import logging

from services.tiles.common import (
    ContactMessage,
    check_tile,
    claim_steps,
    declare_tile_actor,
    hand_on,
    journey_gate,
    publish_outbox,
    stop_contacts,
)
from services.tiles.plan import load_plan
from shared import clock
from shared.broker import configure_broker
from shared.db import get_pool
from shared.metrics import count_outcome

logger = logging.getLogger(__name__)
configure_broker()


def run_audience(message: ContactMessage) -> None:
    """Complete the audience step of each contact and send it to the first tile."""
    now = clock.now()
    with get_pool().connection() as conn:
        with conn.transaction():
            plan = load_plan(conn, message.journey_id, message.version)
            check_tile(plan, message, "audience")
            gate = journey_gate(conn, message.journey_id, now)
            if gate is not None:
                stopped = stop_contacts(
                    conn, message.journey_id, message.tile, message.contacts, gate, now
                )
                claimed: list[int] = []
            else:
                stopped = []
                claimed = claim_steps(conn, message, now)
                outbox = hand_on(conn, plan, message.tile, claimed, now)
        if claimed:
            publish_outbox(conn, outbox)
    count_outcome(plan.name, message.tile, "completed", len(claimed))
    count_outcome(plan.name, message.tile, "stopped", len(stopped))
    logger.debug(
        "journey %s audience: %d entered, %d stopped, %d already done",
        plan.name,
        len(claimed),
        len(stopped),
        len(message.contacts) - len(claimed) - len(stopped),
    )


audience_tile = declare_tile_actor("audience", run_audience)
