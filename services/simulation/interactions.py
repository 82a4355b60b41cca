"""The interactions file of a simulation: who opened, clicked, unsubscribed
or bounced which email tile, and when."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import cast

import psycopg

from shared.errors import DefinitionError
from shared.interactions import Kind, SendRef, record_interaction

KINDS = ("opened", "clicked", "unsubscribed", "bounced")
COLUMNS = ("contact", "tile", "kind", "at")


@dataclass
class PlannedInteraction:
    line: int
    contact: str
    tile: str
    kind: str
    at: datetime
    link: str | None
    note: str | None = None


def read_interactions(path: Path) -> list[PlannedInteraction]:
    """Read the CSV; every bad row is reported at once, naming its line."""
    planned: list[PlannedInteraction] = []
    problems: list[str] = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in COLUMNS if name not in (reader.fieldnames or [])]
        if missing:
            raise DefinitionError(
                f"{path}: the header needs the columns {', '.join(COLUMNS)}; "
                f"missing {', '.join(missing)}"
            )
        for row in reader:
            item, problem = _parse(row, reader.line_num)
            if problem:
                problems.append(f"{path}:{reader.line_num}: {problem}")
            elif item:
                planned.append(item)
    if problems:
        raise DefinitionError("\n".join(problems))
    return planned


def _parse(
    row: dict[str, str], line: int
) -> tuple[PlannedInteraction | None, str | None]:
    kind = (row.get("kind") or "").strip()
    if kind not in KINDS:
        return None, f"kind {kind!r} is invalid; expected one of {', '.join(KINDS)}"
    text = (row.get("at") or "").strip()
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None, f"at {text!r} is not an ISO 8601 date-time"
    if at.tzinfo is None:
        return None, (
            f"at {text!r} has no offset; write it with one, such as "
            "2027-05-03T10:00:00+02:00 or 2027-05-03T08:00:00Z"
        )
    link = (row.get("link") or "").strip() or None
    return PlannedInteraction(
        line, row["contact"].strip(), row["tile"].strip(), kind, at, link
    ), None


def apply_due(
    conn: psycopg.Connection, planned: list[PlannedInteraction], now: datetime
) -> list[PlannedInteraction]:
    """Record the interactions due by `now`; return the ones still to come."""
    later = [item for item in planned if item.at > now]
    for item in planned:
        if item.at <= now:
            _apply(conn, item)
    return later


def _apply(conn: psycopg.Connection, item: PlannedInteraction) -> None:
    row = conn.execute(
        "SELECT s.id, s.journey_id, s.tile, s.contact, s.links, s.state FROM sends s"
        " JOIN contacts c ON c.id = s.contact"
        " WHERE s.tile = %s AND (c.contact_id = %s OR lower(c.email) = lower(%s))"
        " AND s.state = 'accepted' AND s.finished_at <= %s ORDER BY s.id LIMIT 1",
        (item.tile, item.contact, item.contact, item.at),
    ).fetchone()
    if row is None:
        item.note = (
            f"line {item.line}: {item.kind} by {item.contact} at {item.at.isoformat()} "
            f"ignored: email tile {item.tile!r} had not sent to this contact by then"
        )
        return
    send = SendRef(*row)
    link = item.link or (
        send.links[0] if item.kind == "clicked" and send.links else None
    )
    hard = True if item.kind == "bounced" else None
    kind = cast(Kind, item.kind)  # read_interactions accepts only these kinds
    with conn.transaction():
        record_interaction(
            conn, send, kind, item.at, link=link, hard=hard, source="simulation"
        )
