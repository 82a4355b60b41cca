"""Why a contact may no longer be emailed or moved on: unsubscribed, bounced,
or a member of the journey's suppression segment."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from services.tiles.plan import JourneyPlan
from shared.segments import membership
from shared.store import live_definition


def consent_reasons(
    conn: psycopg.Connection, plan: JourneyPlan, contacts: Sequence[int]
) -> dict[int, str]:
    """Return the contacts that must leave the journey, with the reason each."""
    if not contacts:
        return {}
    suppressed: sql.Composable = sql.SQL("false")
    if plan.definition.suppression:
        found = live_definition(conn, "segment", plan.definition.suppression)
        if found is not None:
            suppressed = membership(found[0])
    query = sql.SQL(
        "SELECT c.id, CASE WHEN c.unsubscribed THEN 'unsubscribed'"
        " WHEN c.bounced_at IS NOT NULL THEN 'bounced'"
        " WHEN {suppressed} THEN 'suppressed' END"
        " FROM contacts c WHERE c.id = ANY(%s)"
    ).format(suppressed=suppressed)
    rows = conn.execute(query, (list(contacts),)).fetchall()
    return {contact: reason for contact, reason in rows if reason}
