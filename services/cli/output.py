"""Tables, progress bars and JSON that the CLI prints."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from shared.contacts import ImportReport, import_contacts
from shared.errors import ContactImportError
from shared.golive import Outcome
from shared.store import COUNT_NAMES, EMAIL_COUNT_NAMES

MAX_BAD_ROWS_SHOWN = 50


def print_outcome(
    console: Console, outcome: Outcome, *, as_json: bool, checked_database: bool
) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "problems": [p.as_dict() for p in outcome.problems],
                    "errors": len(outcome.errors),
                    "published": outcome.published,
                    "journeys": [r.message for r in outcome.journeys],
                },
                indent=2,
            )
        )
        return
    for problem in outcome.problems:
        colour = "red" if problem.severity == "error" else "yellow"
        console.print(
            f"[{colour}]{problem}[/{colour}]", highlight=False, soft_wrap=True
        )
    for line in outcome.published:
        console.print(f"published {line}")
    for result in outcome.journeys:
        console.print(f"[green]{result.message}[/green]")
    warnings = len(outcome.problems) - len(outcome.errors)
    if not checked_database:
        console.print(
            "no journeys database reached: references were checked against "
            "these files only, and contact fields in templates and segments "
            "were not checked"
        )
    console.print(f"{len(outcome.errors)} error(s), {warnings} warning(s)")


def status_payload(
    journey: dict[str, Any], tiles: list[dict[str, Any]], now: datetime
) -> dict[str, Any]:
    shown = journey["status"]
    if shown == "live" and now < journey["start_at"]:
        shown = "scheduled"
    return {
        "journey": journey["name"],
        "status": shown,
        "version": journey["version"],
        "timezone": journey["timezone"],
        "start": journey["start_at"].isoformat(),
        "end": journey["end_at"].isoformat(),
        "tiles": tiles,
    }


def print_status(console: Console, payload: dict[str, Any]) -> None:
    title = (
        f"{payload['journey']} (version {payload['version']}, {payload['status']}), "
        f"{payload['start']} to {payload['end']}"
    )
    table = Table(title=title)
    table.add_column("tile")
    table.add_column("type")
    for name in (*COUNT_NAMES, *EMAIL_COUNT_NAMES):
        table.add_column(name.replace("_", " "), justify="right")
    for tile in payload["tiles"]:
        values = [
            str(tile.get(name, "")) for name in (*COUNT_NAMES, *EMAIL_COUNT_NAMES)
        ]
        table.add_row(tile["id"], tile["type"], *values)
    console.print(table)
    for item in payload.get("versions", []):
        console.print(
            f"version {item['version']}: {item['entered']} entered, "
            f"{item['in_progress']} in progress, {item['completed']} completed, "
            f"{item['left']} left early"
        )


def import_with_progress(
    console: Console, conn: psycopg.Connection, file: Path
) -> ImportReport | None:
    """Import a contacts file with a progress bar; print the bad rows."""
    try:
        size = file.stat().st_size
    except OSError as error:
        console.print(f"[red]cannot read {file}: {error}[/red]")
        return None
    columns = (
        TextColumn("importing {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(file.name, total=size)
        try:
            report = import_contacts(
                conn,
                file,
                on_progress=lambda done: progress.update(task, completed=done),
            )
        except ContactImportError as error:
            console.print(f"[red]{error}[/red]")
            return None
    for bad in report.bad_rows[:MAX_BAD_ROWS_SHOWN]:
        console.print(
            f"[yellow]{file}:{bad.line}: skipped: {bad.reason}[/yellow]",
            highlight=False,
        )
    if len(report.bad_rows) > MAX_BAD_ROWS_SHOWN:
        console.print(
            f"... and {len(report.bad_rows) - MAX_BAD_ROWS_SHOWN} more bad rows"
        )
    console.print(
        f"contacts: {report.inserted} new, {report.updated} updated, "
        f"{report.unchanged} unchanged, {len(report.bad_rows)} bad rows skipped"
    )
    return report


def print_insights(console: Console, payload: dict[str, Any]) -> None:
    emails = Table(title=f"{payload['journey']}: email results")
    for column in (
        "tile",
        "sent",
        "delivered",
        "blocked",
        "bounced hard",
        "bounced soft",
        "opened",
        "clicked",
        "unsubscribed",
        "open rate",
        "click rate",
    ):
        emails.add_column(column, justify="left" if column == "tile" else "right")
    for item in payload["emails"]:
        rates = item["rates"]
        emails.add_row(
            item["id"],
            str(item["sent"]),
            str(item["delivered"]),
            str(item["blocked"]),
            str(item["bounced"]["hard"]),
            str(item["bounced"]["soft"]),
            f"{item['opened']['unique']} ({item['opened']['total']})",
            f"{item['clicked']['unique']} ({item['clicked']['total']})",
            str(item["unsubscribed"]),
            _percent(rates["opened"]),
            _percent(rates["clicked"]),
        )
    console.print(emails)
    for item in payload["branches"]:
        counts = ", ".join(
            f"{name}: {count}" for name, count in item["branches"].items()
        )
        console.print(
            f"{item['type']} {item['id']}: entered {item['entered']}, {counts}, "
            f"waiting {item['waiting']}, left {item['left']}"
        )
    contacts = payload["contacts"]
    left = ", ".join(
        f"{reason}: {count}" for reason, count in sorted(contacts["left_early"].items())
    )
    console.print(
        f"contacts: {contacts['finished']} finished, "
        f"{contacts['in_progress']} in progress, left early: {left or 'none'}"
    )


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"
