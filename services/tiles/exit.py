"""The exit tile: ends the contact's journey where the operator says so."""

from __future__ import annotations

from typing import Any

import dramatiq

from services.tiles.common import (
    ContactMessage,
    accept_message,
    check_tile,
    claim_steps,
    journey_gate,
    leave_journey,
    stop_contacts,
)
from services.tiles.plan import QUEUE_FOR_TYPE, load_plan
from shared import clock
from shared.broker import configure_broker
from shared.config import get_settings
from shared.db import get_pool
from shared.errors import PermanentError
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


@dramatiq.actor(
    actor_name="exit_tile",
    queue_name="tile.exit",
    throws=(PermanentError,),
    min_backoff=1_000,
    max_backoff=60_000,
    time_limit=get_settings().actor_time_limit_seconds * 1000,
)
def exit_tile(*args: Any, **kwargs: Any) -> None:
    run_exit(accept_message(QUEUE_FOR_TYPE["exit"], args, kwargs))
