"""Report of a simulation: every contact's path and the per-tile counts."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

from services.cli.output import print_status, status_payload
from shared import clock
from shared.store import tile_counts


def contact_paths(conn: psycopg.Connection, journey_id: int) -> dict[str, Any]:
    """Return the journey's status payload plus each contact's steps in order."""
    journey = dict(
        zip(
            ("id", "name", "status", "version", "timezone", "start_at", "end_at"),
            conn.execute(
                "SELECT id, name, status, version, timezone, start_at, end_at"
                " FROM journeys WHERE id = %s",
                (journey_id,),
            ).fetchone()
            or (),
            strict=True,
        )
    )
    payload = status_payload(journey, tile_counts(conn, journey_id), clock.now())
    rows = conn.execute(
        "SELECT coalesce(c.contact_id, c.email), s.tile, s.state, s.outcome, s.reason,"
        " s.entered_at, s.done_at, e.state, e.reason"
        " FROM steps s JOIN contacts c ON c.id = s.contact"
        " JOIN entries e ON e.journey_id = s.journey_id AND e.contact = s.contact"
        " WHERE s.journey_id = %s ORDER BY c.id, s.entered_at, s.done_at NULLS LAST",
        (journey_id,),
    ).fetchall()
    contacts: dict[str, dict[str, Any]] = {}
    for who, tile, state, outcome, reason, entered, done, end_state, end_reason in rows:
        item = contacts.setdefault(
            who, {"contact": who, "steps": [], "state": end_state, "reason": end_reason}
        )
        item["steps"].append(
            {
                "tile": tile,
                "state": state,
                "outcome": outcome,
                "reason": reason,
                "entered": entered.isoformat(),
                "done": done.isoformat() if done else None,
            }
        )
    order = {tile["id"]: index for index, tile in enumerate(payload["tiles"])}
    for item in contacts.values():
        item["steps"].sort(
            key=lambda step: (step["entered"], order.get(step["tile"], 0))
        )
    payload["contacts"] = list(contacts.values())
    return payload


def describe_path(item: dict[str, Any]) -> str:
    parts = []
    for step in item["steps"]:
        label = step["tile"]
        detail = step["outcome"] or (
            step["state"] if step["state"] != "completed" else None
        )
        parts.append(f"{label} ({detail})" if detail else label)
    return " → ".join(parts)


def print_report(
    console: Console, results: list[dict[str, Any]], *, as_json: bool, notes: list[str]
) -> None:
    if as_json:
        print(json.dumps({"journeys": results, "notes": notes}, indent=2, default=str))
        return
    for note in notes:
        console.print(f"[yellow]{note}[/yellow]", highlight=False)
    for payload in results:
        table = Table(title=f"paths through {payload['journey']}")
        table.add_column("contact")
        table.add_column("path")
        table.add_column("end")
        for item in payload["contacts"]:
            end = item["state"] + (f" ({item['reason']})" if item["reason"] else "")
            table.add_row(item["contact"], describe_path(item), end)
        console.print(table)
        print_status(console, payload)
