"""The split tile: sends each contact down one branch, at random by
percentage, or the first contacts by count with the rest down 'remaining'.

The percentage draw hashes the journey, tile and contact, so a redelivered
message takes the same branch; the chosen branch is stored in the step.
"""

from __future__ import annotations

import hashlib

import psycopg

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
from shared.definitions import SplitTile
from shared.metrics import count_outcome

configure_broker()


def draw(journey_id: int, tile: str, contact: int) -> float:
    """Return a number in [0, 100) that depends only on its arguments."""
    digest = hashlib.sha256(f"{journey_id}:{tile}:{contact}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def branch_by_percent(tile: SplitTile, number: float) -> str:
    total = 0.0
    for branch in tile.branches:
        total += branch.percent or 0
        if number < total:
            return branch.name
    return tile.branches[-1].name  # rounding at the top end


def run_split(message: ContactMessage) -> None:
    now = clock.now()
    outbox: list[tuple] = []
    with get_pool().connection() as conn:
        with conn.transaction():
            plan = load_plan(conn, message.journey_id, message.version)
            check_tile(plan, message, "split")
            if not open_gate(conn, plan, message, now):
                return
            tile: SplitTile = plan.tiles[message.tile]
            claimed = screen_contacts(
                conn, plan, tile.id, claim_steps(conn, message, now), now
            )
            choices = _choose(conn, plan, tile, claimed)
            for branch in {choice for choice in choices.values()}:
                chosen = [c for c in claimed if choices[c] == branch]
                conn.execute(
                    "UPDATE steps SET outcome = %s"
                    " WHERE journey_id = %s AND tile = %s AND contact = ANY(%s)",
                    (branch, plan.journey_id, tile.id, chosen),
                )
                outbox += hand_on(conn, plan, tile.id, chosen, now, branch=branch)
                count_outcome(plan.name, tile.id, branch, len(chosen))
        publish_outbox(conn, outbox)


def _choose(
    conn: psycopg.Connection, plan: JourneyPlan, tile: SplitTile, contacts: list[int]
) -> dict[int, str]:
    if all(branch.percent is not None for branch in tile.branches):
        return {
            c: branch_by_percent(tile, draw(plan.journey_id, tile.id, c))
            for c in contacts
        }
    # By count: one transaction at a time per tile, so counts are never exceeded.
    conn.execute(
        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (plan.journey_id, tile.id)
    )
    taken: dict[str, int] = dict(
        conn.execute(
            "SELECT outcome, count(*) FROM steps WHERE journey_id = %s AND tile = %s"
            " AND outcome IS NOT NULL GROUP BY outcome",
            (plan.journey_id, tile.id),
        ).fetchall()
    )
    choices: dict[int, str] = {}
    for contact in sorted(contacts):
        choices[contact] = "remaining"
        for branch in tile.branches:
            if taken.get(branch.name, 0) < (branch.count or 0):
                taken[branch.name] = taken.get(branch.name, 0) + 1
                choices[contact] = branch.name
                break
    return choices


split_tile = declare_tile_actor("split", run_split)
