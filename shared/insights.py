"""Insights of a journey: email results with rates, branch counts of
condition and split tiles, and how contacts left the journey."""

from __future__ import annotations

from typing import Any

import psycopg

from shared.definitions import (
    ConditionTile,
    Journey,
    SplitTile,
    branches_of,
    walk_tiles,
)

_EMAIL_RESULTS = """
SELECT s.tile,
       count(*) FILTER (WHERE s.outcome = 'sent'),
       count(*) FILTER (WHERE s.outcome = 'blocked'),
       count(*) FILTER (WHERE s.outcome = 'bounced'),
       count(*) FILTER (WHERE s.outcome = 'unconfirmed')
FROM steps s WHERE s.journey_id = %s GROUP BY s.tile
"""

_INTERACTIONS = """
SELECT tile, kind, coalesce(hard, true), count(*), count(DISTINCT contact)
FROM interactions WHERE journey_id = %s GROUP BY tile, kind, coalesce(hard, true)
"""


def journey_insights(conn: psycopg.Connection, journey_id: int) -> dict[str, Any]:
    """Return the insights of every version of a journey, keyed like the CLI's JSON."""
    name, definitions = _definitions(conn, journey_id)
    tiles = {
        tile.id: tile
        for definition in definitions
        for tile in walk_tiles(definition.tiles)
    }
    results = {row[0]: row[1:] for row in conn.execute(_EMAIL_RESULTS, (journey_id,))}
    interactions: dict[tuple[str, str, bool], tuple[int, int]] = {
        (tile, kind, hard): (total, unique)
        for tile, kind, hard, total, unique in conn.execute(
            _INTERACTIONS, (journey_id,)
        )
    }
    emails = [
        _email_insights(tile_id, results.get(tile_id, (0, 0, 0, 0)), interactions)
        for tile_id, tile in tiles.items()
        if tile.type == "email"
    ]
    branches = [
        _branch_counts(conn, journey_id, tile)
        for tile in tiles.values()
        if isinstance(tile, ConditionTile | SplitTile)
    ]
    return {
        "journey": name,
        "emails": emails,
        "branches": branches,
        "contacts": _contacts(conn, journey_id),
    }


def _definitions(
    conn: psycopg.Connection, journey_id: int
) -> tuple[str, list[Journey]]:
    rows = conn.execute(
        "SELECT j.name, v.definition FROM journeys j"
        " JOIN journey_versions v ON v.journey_id = j.id"
        " WHERE j.id = %s ORDER BY v.version",
        (journey_id,),
    ).fetchall()
    return rows[0][0], [Journey.model_validate(row[1]) for row in rows]


def _email_insights(
    tile: str,
    results: tuple[int, ...],
    interactions: dict[tuple[str, str, bool], tuple[int, int]],
) -> dict[str, Any]:
    sent, blocked, bounced_at_send, unconfirmed = results

    def counts(kind: str, hard: bool = True) -> tuple[int, int]:
        return interactions.get((tile, kind, hard), (0, 0))

    hard_later = counts("bounced")[1]
    soft = counts("bounced", hard=False)[1]
    delivered = max(sent - hard_later - soft, 0)
    opened_total, opened = counts("opened")
    clicked_total, clicked = counts("clicked")
    unsubscribed = counts("unsubscribed")[1]
    return {
        "id": tile,
        "sent": sent,
        "delivered": delivered,
        "blocked": blocked,
        "bounced": {"hard": bounced_at_send + hard_later, "soft": soft},
        "unconfirmed": unconfirmed,
        "opened": {"unique": opened, "total": opened_total},
        "clicked": {"unique": clicked, "total": clicked_total},
        "unsubscribed": unsubscribed,
        "rates": {
            "delivered": _rate(delivered, sent),
            "opened": _rate(opened, delivered),
            "clicked": _rate(clicked, delivered),
            "click_to_open": _rate(clicked, opened),
            "unsubscribed": _rate(unsubscribed, delivered),
        },
    }


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _branch_counts(
    conn: psycopg.Connection, journey_id: int, tile: Any
) -> dict[str, Any]:
    # One pass over the tile's steps, which the primary key finds.
    by_state = conn.execute(
        "SELECT state, outcome, count(*) FROM steps"
        " WHERE journey_id = %s AND tile = %s GROUP BY state, outcome",
        (journey_id, tile.id),
    ).fetchall()
    rows = {
        outcome: count for state, outcome, count in by_state if state == "completed"
    }
    names = [name for name, _ in branches_of(tile)]
    return {
        "id": tile.id,
        "type": tile.type,
        "entered": sum(int(count) for _, _, count in by_state),
        "branches": {name: int(rows.get(name, 0)) for name in names},
        "waiting": sum(
            int(count) for state, _, count in by_state if state == "in_progress"
        ),
        "left": int(rows.get("left", 0)),
    }


def _contacts(conn: psycopg.Connection, journey_id: int) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT state, coalesce(reason, ''), count(*) FROM entries"
        " WHERE journey_id = %s GROUP BY state, reason",
        (journey_id,),
    ).fetchall()
    finished = sum(count for state, _, count in rows if state == "completed")
    in_progress = sum(count for state, _, count in rows if state == "in_progress")
    left: dict[str, int] = {}
    for state, reason, count in rows:
        if state in ("left", "stopped"):
            left[reason or state] = left.get(reason or state, 0) + count
    return {"finished": finished, "in_progress": in_progress, "left_early": left}
