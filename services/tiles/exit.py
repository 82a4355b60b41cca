"""The exit tile: ends the contact's journey where the operator says so."""

from __future__ import annotations

from services.tiles.common import (
    ContactMessage,
    check_tile,
    claim_steps,
    declare_tile_actor,
    journey_gate,
    leave_journey,
    stop_contacts,
)
from services.tiles.plan import load_plan
from shared import clock
from shared.broker import configure_broker
from shared.db import get_pool
from shared.metrics import count_outcome

configure_broker()


def run_exit(message: ContactMessage) -> None:
    now = clock.now()
    with get_pool().connection() as conn, conn.transaction():
        plan = load_plan(conn, message.journey_id, message.version)
        check_tile(plan, message, "exit")
        gate = journey_gate(conn, message.journey_id, now)
        if gate is not None:
            stop_contacts(
                conn, message.journey_id, message.tile, message.contacts, gate, now
            )
            return
        claimed = claim_steps(conn, message, now)
        leave_journey(
            conn, message.journey_id, claimed, "completed", f"exit {message.tile}", now
        )
    count_outcome(plan.name, message.tile, "completed", len(claimed))


exit_tile = declare_tile_actor("exit", run_exit)
