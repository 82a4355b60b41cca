"""Why a contact may no longer be emailed or moved on: unsubscribed, bounced,
or a member of the journey's suppression segment."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from services.tiles.plan import JourneyPlan
from shared.definitions import Segment
from shared.segments import membership


def consent_reasons(
    conn: psycopg.Connection, plan: JourneyPlan, contacts: Sequence[int]
) -> dict[int, str]:
    """Return the contacts that must leave the journey, with the reason each."""
    if not contacts:
        return {}
    suppressed: sql.Composable = sql.SQL("false")
    if plan.definition.suppression:
        row = conn.execute(
            "SELECT body FROM definitions"
            " WHERE kind = 'segment' AND name = %s AND status = 'live'",
            (plan.definition.suppression,),
        ).fetchone()
        if row is not None:
            suppressed = membership(Segment.model_validate(row[0]))
    query = sql.SQL(
        "SELECT c.id, CASE WHEN c.unsubscribed THEN 'unsubscribed'"
        " WHEN c.bounced_at IS NOT NULL THEN 'bounced'"
        " WHEN {suppressed} THEN 'suppressed' END"
        " FROM contacts c WHERE c.id = ANY(%s)"
    ).format(suppressed=suppressed)
    rows = conn.execute(query, (list(contacts),)).fetchall()
    return {contact: reason for contact, reason in rows if reason}
