"""Importing contacts from CSV: bad rows are reported by line, good rows are
upserted in batches through COPY."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psycopg

from shared.errors import ContactImportError

logger = logging.getLogger(__name__)

BASE_COLUMNS = ("contact_id", "email", "firstname", "lastname", "unsubscribed")
MAX_VALUE_CHARS = 10_000
BATCH_ROWS = 5_000
MAX_COLUMN_NAME_CHARS = 100
# The csv module refuses fields over 128 KiB by default. A larger limit lets an
# over-long value become a bad row, reported like any other.
CSV_FIELD_LIMIT = 64 * 1024 * 1024
_TRUE = {"true", "yes", "1", "y"}
_FALSE = {"false", "no", "0", "n"}


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str


@dataclass
class ImportReport:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)

    @property
    def imported(self) -> int:
        return self.inserted + self.updated + self.unchanged


@dataclass(frozen=True)
class ContactRow:
    key: str
    contact_id: str | None
    email: str
    firstname: str
    lastname: str
    unsubscribed: bool
    fields: dict[str, str]


ProgressCallback = Callable[[int], None]


def import_contacts(
    conn: psycopg.Connection,
    path: str | Path,
    *,
    on_progress: ProgressCallback | None = None,
) -> ImportReport:
    """Import a CSV file of contacts; re-importing updates by contact_id, or by
    address for rows without one."""
    report = ImportReport()
    try:
        handle = _open_contacts(path)
    except OSError as error:
        raise ContactImportError(
            f"cannot open contacts file {path}: {error}"
        ) from error
    with handle:
        csv.field_size_limit(CSV_FIELD_LIMIT)
        reader = csv.reader(handle)
        header = _read_header(reader, path)
        _remember_fields(conn, header)
        for batch in _batches(reader, header, report, handle, on_progress):
            _upsert(conn, batch, report)
    logger.info(
        "imported contacts from %s: %d new, %d updated, %d unchanged, %d bad rows",
        path,
        report.inserted,
        report.updated,
        report.unchanged,
        len(report.bad_rows),
    )
    return report


def _open_contacts(path: str | Path) -> IO[str]:
    # utf-8-sig drops the byte order mark that spreadsheet programs write.
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _read_header(reader: Iterator[list[str]], path: str | Path) -> list[str]:
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise ContactImportError(
            f"{path} is empty; it needs a header row with 'email'"
        ) from None
    if "email" not in header:
        raise ContactImportError(
            f"{path}: the header row has no 'email' column; "
            f"found {', '.join(header) or 'nothing'}"
        )
    for position, name in enumerate(header, start=1):
        problem = _header_name_problem(name)
        if problem:
            raise ContactImportError(
                f"{path}: column {position} of the header row {problem}"
            )
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates or any(not name for name in header):
        raise ContactImportError(
            f"{path}: the header row has empty or repeated column names: "
            f"{', '.join(duplicates) or '(empty)'}"
        )
    return header


def _header_name_problem(name: str) -> str | None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return f"{name[:40]!r} contains a control character"
    if len(name) > MAX_COLUMN_NAME_CHARS:
        return f"is longer than {MAX_COLUMN_NAME_CHARS} characters"
    return None


def upsert_rows(conn: psycopg.Connection, rows: list[ContactRow]) -> ImportReport:
    """Insert or update contacts that came from elsewhere than a file, such as
    a queue, by the same rules as an import."""
    report = ImportReport()
    names = sorted({name for row in rows for name in row.fields} | set(BASE_COLUMNS))
    _remember_fields(conn, names)
    unique = {row.key: row for row in rows}
    _upsert(conn, list(unique.values()), report)
    return report


def contact_key(contact_id: str | None, email: str) -> str:
    return contact_id or "email:" + email.lower()


def _remember_fields(conn: psycopg.Connection, header: list[str]) -> None:
    with conn.transaction():
        conn.cursor().executemany(
            "INSERT INTO contact_fields (name) VALUES (%s) ON CONFLICT DO NOTHING",
            [(name,) for name in header],
        )


def _batches(
    reader: Iterator[list[str]],
    header: list[str],
    report: ImportReport,
    handle: IO[str],
    on_progress: ProgressCallback | None,
) -> Iterator[list[ContactRow]]:
    batch: dict[str, ContactRow] = {}
    while True:
        # A quoted value may span lines: a record is named by its first line.
        line = reader.line_num + 1  # type: ignore[attr-defined]
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise ContactImportError(
                f"line {line}: {error}; rows before it were imported"
            ) from error
        row = _parse_row(values, header, line, report)
        if row is not None:
            batch[row.key] = row  # a later row with the same key wins
        if len(batch) >= BATCH_ROWS:
            yield list(batch.values())
            batch = {}
            if on_progress:
                on_progress(handle.tell())
    if batch:
        yield list(batch.values())
    if on_progress:
        on_progress(handle.tell())


def _parse_row(
    values: list[str], header: list[str], line: int, report: ImportReport
) -> ContactRow | None:
    if not values or values == [""]:
        return None
    reason = _row_problem(values, header)
    if reason:
        report.bad_rows.append(BadRow(line, reason))
        return None
    record = {name: value.strip() for name, value in zip(header, values, strict=True)}
    unsubscribed = record.get("unsubscribed", "").lower()
    if unsubscribed not in _TRUE | _FALSE | {""}:
        report.bad_rows.append(
            BadRow(
                line,
                f"unsubscribed must be true or false, got {record['unsubscribed']!r}",
            )
        )
        return None
    contact_id = record.get("contact_id") or None
    email = record["email"]
    return ContactRow(
        key=contact_key(contact_id, email),
        contact_id=contact_id,
        email=email,
        firstname=record.get("firstname", ""),
        lastname=record.get("lastname", ""),
        unsubscribed=unsubscribed in _TRUE,
        fields={k: v for k, v in record.items() if k not in BASE_COLUMNS},
    )


def _row_problem(values: list[str], header: list[str]) -> str | None:
    if len(values) != len(header):
        return f"has {len(values)} values, the header has {len(header)} columns"
    for name, value in zip(header, values, strict=True):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"column {name!r} is not valid UTF-8"
        if "\x00" in value:
            return f"column {name!r} contains a NUL character"
        if len(value) > MAX_VALUE_CHARS:
            return f"column {name!r} is longer than {MAX_VALUE_CHARS} characters"
    email = values[header.index("email")].strip()
    if not email:
        return "email is missing"
    if any(ch in email for ch in "\r\n"):
        return f"email {email!r} contains a line break"
    return None


_UPSERT = """
INSERT INTO contacts AS c
    (key, contact_id, email, firstname, lastname, unsubscribed, fields)
SELECT key, contact_id, email, firstname, lastname, unsubscribed, fields
    FROM contact_import
ON CONFLICT (key) DO UPDATE SET
    contact_id = EXCLUDED.contact_id,
    email = EXCLUDED.email,
    firstname = EXCLUDED.firstname,
    lastname = EXCLUDED.lastname,
    -- An import can unsubscribe a contact but never subscribes one again:
    -- an unsubscribe by link or queue outlives any later import.
    unsubscribed = c.unsubscribed OR EXCLUDED.unsubscribed,
    fields = c.fields || EXCLUDED.fields,
    updated_at = clock_timestamp()
WHERE (c.contact_id, c.email, c.firstname, c.lastname, c.unsubscribed, c.fields)
      IS DISTINCT FROM
      (EXCLUDED.contact_id, EXCLUDED.email, EXCLUDED.firstname, EXCLUDED.lastname,
       c.unsubscribed OR EXCLUDED.unsubscribed, c.fields || EXCLUDED.fields)
RETURNING (xmax = 0) AS inserted
"""


def _upsert(
    conn: psycopg.Connection, rows: list[ContactRow], report: ImportReport
) -> None:
    with conn.transaction():
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS contact_import ("
            " key text, contact_id text, email text, firstname text, lastname text,"
            " unsubscribed boolean, fields jsonb) ON COMMIT DELETE ROWS"
        )
        with conn.cursor().copy(
            "COPY contact_import (key, contact_id, email, firstname, lastname,"
            " unsubscribed, fields) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(
                    (
                        row.key,
                        row.contact_id,
                        row.email,
                        row.firstname,
                        row.lastname,
                        row.unsubscribed,
                        json.dumps(row.fields, ensure_ascii=False),
                    )
                )
        results = conn.execute(_UPSERT).fetchall()
    inserted = sum(1 for (is_new,) in results if is_new)
    report.inserted += inserted
    report.updated += len(results) - inserted
    report.unchanged += len(rows) - len(results)
