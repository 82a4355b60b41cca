"""SQL for publishing definitions, putting journeys live, stopping them and
reading their per-tile counts."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from shared.checks import Catalog, PublishedJourney
from shared.definitions import (
    AUDIENCE_TILE,
    ContentSettings,
    Email,
    Journey,
    Segment,
    document_adapter,
    walk_tiles,
)
from shared.errors import NotFound
from shared.segments import membership
from shared.templates import BASE_CONTACT_FIELDS
from shared.windows import load_zone, to_utc

logger = logging.getLogger(__name__)

COUNT_NAMES = ("entered", "in_progress", "completed", "stopped", "failed")
EMAIL_COUNT_NAMES = ("sent", "blocked", "bounced", "unconfirmed")
_PUBLISHED_KINDS: dict[type, str] = {
    ContentSettings: "content-settings",
    Email: "email",
    Segment: "segment",
}


def dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def load_catalog(conn: psycopg.Connection) -> Catalog:
    """Read the published definitions, the known contact fields and the
    published journeys."""
    catalog = Catalog()
    for kind, name, body in conn.execute("SELECT kind, name, body FROM definitions"):
        catalog.published[(kind, name)] = document_adapter.validate_python(body)
    fields = {row[0] for row in conn.execute("SELECT name FROM contact_fields")}
    catalog.contact_fields = (fields | set(BASE_CONTACT_FIELDS)) if fields else None
    rows = conn.execute(
        "SELECT j.name, j.status, j.end_at, v.definition FROM journeys j"
        " JOIN journey_versions v ON v.journey_id = j.id AND v.version = j.version"
    )
    for name, status, end_at, definition in rows:
        catalog.journeys[name] = PublishedJourney(
            status, end_at, Journey.model_validate(definition)
        )
    return catalog


def segment_size(conn: psycopg.Connection, segment: Segment) -> int:
    query = sql.SQL("SELECT count(*) FROM contacts c WHERE {}").format(
        membership(segment)
    )
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def publish_documents(conn: psycopg.Connection, models: list[Any]) -> list[str]:
    """Insert or update segments, emails and content settings; return what changed."""
    changed = []
    for model in models:
        kind = _PUBLISHED_KINDS.get(type(model))
        if kind is None:
            continue
        body = json.dumps(dump(model))
        row = conn.execute(
            """
            INSERT INTO definitions (kind, name, status, body) VALUES (%s, %s, %s, %s)
            ON CONFLICT (kind, name) DO UPDATE SET
                status = EXCLUDED.status, body = EXCLUDED.body,
                revision = definitions.revision + 1, updated_at = now()
            WHERE definitions.body IS DISTINCT FROM EXCLUDED.body
            RETURNING revision
            """,
            (kind, model.name, model.status, body),
        ).fetchone()
        if row:
            changed.append(f"{kind} {model.name!r} revision {row[0]}")
    return changed


@dataclass(frozen=True)
class GoLiveResult:
    journey_id: int
    version: int
    created: bool
    message: str


def go_live(conn: psycopg.Connection, journey: Journey) -> GoLiveResult:
    """Publish a journey: a first version, a new version when the definition
    changed, or nothing when this exact definition is already live."""
    zone = load_zone(journey.timezone)
    start = to_utc(
        journey.start,
        zone,
        ambiguous=journey.ambiguous_time,
        nonexistent=journey.nonexistent_time,
    )
    end = to_utc(
        journey.end,
        zone,
        ambiguous=journey.ambiguous_time,
        nonexistent=journey.nonexistent_time,
    )
    body = dump(journey)
    existing = conn.execute(
        "SELECT j.id, j.version, j.status, v.definition FROM journeys j"
        " JOIN journey_versions v ON v.journey_id = j.id AND v.version = j.version"
        " WHERE j.name = %s FOR UPDATE OF j",
        (journey.name,),
    ).fetchone()
    if existing is None:
        journey_id = conn.execute(
            "INSERT INTO journeys (name, status, version, timezone, start_at, end_at)"
            " VALUES (%s, 'live', 1, %s, %s, %s) RETURNING id",
            (journey.name, journey.timezone, start, end),
        ).fetchone()[0]  # type: ignore[index]
        _insert_version(conn, journey_id, 1, body)
        return GoLiveResult(
            journey_id, 1, True, f"journey {journey.name!r} is live as version 1"
        )

    journey_id, version, status, definition = existing
    if definition == body and status == "live":
        return GoLiveResult(
            journey_id,
            version,
            False,
            f"journey {journey.name!r} version {version} is already live",
        )
    if definition != body:
        version += 1
        _insert_version(conn, journey_id, version, body)
    conn.execute(
        "UPDATE journeys SET status = 'live', version = %s, timezone = %s,"
        " start_at = %s, end_at = %s, ended_at = NULL WHERE id = %s",
        (version, journey.timezone, start, end, journey_id),
    )
    return GoLiveResult(
        journey_id,
        version,
        True,
        f"journey {journey.name!r} is live as version {version}",
    )


def _insert_version(
    conn: psycopg.Connection, journey_id: int, version: int, body: dict
) -> None:
    conn.execute(
        "INSERT INTO journey_versions (journey_id, version, definition)"
        " VALUES (%s, %s, %s)",
        (journey_id, version, json.dumps(body)),
    )


def journey_row(conn: psycopg.Connection, name: str) -> dict[str, Any]:
    cursor = conn.execute(
        "SELECT id, name, status, version, timezone, start_at, end_at, ended_at"
        " FROM journeys WHERE name = %s",
        (name,),
    )
    row = cursor.fetchone()
    if row is None:
        known = [r[0] for r in conn.execute("SELECT name FROM journeys ORDER BY name")]
        raise NotFound(
            f"journey {name!r} not found; "
            f"known journeys: {', '.join(known) or 'none yet'}"
        )
    return dict(zip([c.name for c in cursor.description or []], row, strict=True))


def end_journey(
    conn: psycopg.Connection, journey_id: int, status: str, reason: str, now: datetime
) -> int:
    """Stop every contact still in the journey; return how many were stopped.

    The caller holds the transaction. Messages already on the queues find
    their steps stopped and are dropped by the tiles.
    """
    conn.execute(
        "UPDATE journeys SET status = %s, ended_at = %s WHERE id = %s",
        (status, now, journey_id),
    )
    # The steps are locked in key order, the order in which the email tile
    # locks the steps of the emails that one transaction records, so the two
    # cannot deadlock.
    conn.execute(
        "UPDATE steps SET state = 'stopped', reason = %s, done_at = %s"
        " WHERE (journey_id, tile, contact) IN ("
        "   SELECT journey_id, tile, contact FROM steps"
        "   WHERE journey_id = %s AND state = 'in_progress'"
        "   ORDER BY tile, contact FOR UPDATE)",
        (reason, now, journey_id),
    )
    stopped = conn.execute(
        "UPDATE entries SET state = 'stopped', reason = %s, left_at = %s"
        " WHERE journey_id = %s AND state = 'in_progress'",
        (reason, now, journey_id),
    ).rowcount
    conn.execute("DELETE FROM outbox WHERE journey_id = %s", (journey_id,))
    conn.execute("DELETE FROM timers WHERE journey_id = %s", (journey_id,))
    logger.info(
        "journey %s ended (%s): %d contacts stopped", journey_id, reason, stopped
    )
    return stopped


def tile_counts(conn: psycopg.Connection, journey_id: int) -> list[dict[str, Any]]:
    """Return the per-tile counts of a journey, in path order, audience first."""
    version_rows = conn.execute(
        "SELECT definition FROM journey_versions"
        " WHERE journey_id = %s ORDER BY version",
        (journey_id,),
    ).fetchall()
    tiles: dict[str, str] = {AUDIENCE_TILE: "audience"}
    for (definition,) in version_rows:
        for tile in walk_tiles(Journey.model_validate(definition).tiles):
            tiles.setdefault(tile.id, tile.type)

    counts = {
        row[0]: row[1:]
        for row in conn.execute(
            """
            SELECT tile, count(*),
                   count(*) FILTER (WHERE state = 'in_progress'),
                   count(*) FILTER (WHERE state = 'completed'),
                   count(*) FILTER (WHERE state = 'stopped'),
                   count(*) FILTER (WHERE state = 'failed'),
                   count(*) FILTER (WHERE outcome = 'sent'),
                   count(*) FILTER (WHERE outcome = 'blocked'),
                   count(*) FILTER (WHERE outcome = 'bounced'),
                   count(*) FILTER (WHERE outcome = 'unconfirmed')
            FROM steps WHERE journey_id = %s GROUP BY tile
            """,
            (journey_id,),
        )
    }
    result = []
    for tile_id, tile_type in tiles.items():
        values = counts.get(tile_id, (0,) * 9)
        item: dict[str, Any] = {"id": tile_id, "type": tile_type}
        item.update(zip(COUNT_NAMES, values[:5], strict=True))
        if tile_type == "email":
            item.update(zip(EMAIL_COUNT_NAMES, values[5:], strict=True))
        result.append(item)
    return result


def version_counts(conn: psycopg.Connection, journey_id: int) -> list[dict[str, Any]]:
    """Return per published version how many contacts entered it and where they are:
    contacts keep the version they entered with."""
    rows = conn.execute(
        "SELECT v.version, count(e.contact),"
        " count(e.contact) FILTER (WHERE e.state = 'in_progress'),"
        " count(e.contact) FILTER (WHERE e.state = 'completed'),"
        " count(e.contact) FILTER (WHERE e.state IN ('left', 'stopped'))"
        " FROM journey_versions v LEFT JOIN entries e"
        " ON e.journey_id = v.journey_id AND e.version = v.version"
        " WHERE v.journey_id = %s GROUP BY v.version ORDER BY v.version",
        (journey_id,),
    ).fetchall()
    names = ("version", "entered", "in_progress", "completed", "left")
    return [dict(zip(names, row, strict=True)) for row in rows]


def live_definition(
    conn: psycopg.Connection, kind: str, name: str
) -> tuple[Any, int] | None:
    """Return a published (live) definition and its revision, or None."""
    row = conn.execute(
        "SELECT body, revision FROM definitions"
        " WHERE kind = %s AND name = %s AND status = 'live'",
        (kind, name),
    ).fetchone()
    if row is None:
        return None
    return document_adapter.validate_python(row[0]), row[1]
