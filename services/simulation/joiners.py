"""Contacts that join a simulation later: rows of the contacts file with a
`joined_at` date-time are imported when the virtual clock reaches it."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from shared.errors import DefinitionError

JOINED_AT = "joined_at"


@dataclass(frozen=True)
class Joining:
    at: datetime
    path: Path


def split_contacts(contacts_file: Path, folder: Path) -> tuple[Path, list[Joining]]:
    """Write the contacts present from the start, and one file per later join time."""
    with open(contacts_file, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        if JOINED_AT not in columns:
            return contacts_file, []
        groups: dict[datetime | None, list[dict[str, str]]] = {}
        for row in reader:
            joined = _joined(
                row.pop(JOINED_AT, "") or "", contacts_file, reader.line_num
            )
            groups.setdefault(joined, []).append(row)
    columns.remove(JOINED_AT)
    initial = _write(folder / "contacts-initial.csv", columns, groups.pop(None, []))
    timed = sorted((at, rows) for at, rows in groups.items() if at is not None)
    later = [
        Joining(at, _write(folder / f"contacts-{index}.csv", columns, rows))
        for index, (at, rows) in enumerate(timed)
    ]
    return initial, later


def _joined(text: str, path: Path, line: int) -> datetime | None:
    if not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise DefinitionError(
            f"{path}:{line}: joined_at {text!r} is not an ISO 8601 date-time"
        ) from None
    if moment.tzinfo is None:
        raise DefinitionError(
            f"{path}:{line}: joined_at {text!r} has no offset; write it with one, "
            "such as 2027-05-03T11:00:00+02:00"
        )
    return moment


def _write(path: Path, columns: list[str], rows: list[dict[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
