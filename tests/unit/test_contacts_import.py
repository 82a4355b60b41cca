"""Importing contacts from CSV into PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from shared.contacts import MAX_VALUE_CHARS, import_contacts
from shared.errors import ContactImportError
from tests.support import simple_contacts, write_contacts


def contacts_by_id(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "SELECT contact_id, email, firstname, lastname, unsubscribed, fields"
        " FROM contacts"
    ).fetchall()
    return {
        contact_id: {
            "email": email,
            "firstname": firstname,
            "lastname": lastname,
            "unsubscribed": unsubscribed,
            "fields": fields,
        }
        for contact_id, email, firstname, lastname, unsubscribed, fields in rows
    }


def emails(conn: psycopg.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT email FROM contacts ORDER BY email")]


def write_bytes(path: Path, *lines: bytes) -> Path:
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return path


def test_good_rows_imported(db: psycopg.Connection, tmp_path: Path) -> None:
    report = import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(3)))
    assert report.inserted == 3
    assert report.bad_rows == []
    assert contacts_by_id(db)["c2"]["firstname"] == "Name2"
    assert contacts_by_id(db)["c2"]["email"] == "c2@example.com"


def test_bad_rows_reported_good_rows_kept(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    path = write_bytes(
        tmp_path / "c.csv",
        b"contact_id,email,firstname,unsubscribed",
        b"c1,c1@example.com,Ann,false",
        b"c2,,Ben,false",
        b"c3,c3@example.com,Cid",
        b"c4,c4@example.com,Dee,maybe",
        b"c5,c5@example.com," + b"x" * (MAX_VALUE_CHARS + 1) + b",false",
        b"c6,c6@example.com,Stra\xdfe,false",
        b"c7,c7@example.com,Eve,yes",
        b"c8,c8@example.com,Fay,false,extra",
    )
    report = import_contacts(db, path)
    reasons = {bad.line: bad.reason for bad in report.bad_rows}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 9]
    assert reasons[3] == "email is missing"
    assert reasons[4] == "has 3 values, the header has 4 columns"
    assert reasons[5] == "unsubscribed must be true or false, got 'maybe'"
    assert (
        reasons[6] == f"column 'firstname' is longer than {MAX_VALUE_CHARS} characters"
    )
    assert reasons[7] == "column 'firstname' is not valid UTF-8"
    assert reasons[9] == "has 5 values, the header has 4 columns"
    assert report.inserted == 2
    assert sorted(contacts_by_id(db)) == ["c1", "c7"]
    assert contacts_by_id(db)["c7"]["unsubscribed"] is True


def test_value_at_limit_accepted(db: psycopg.Connection, tmp_path: Path) -> None:
    rows = [
        {"contact_id": "c1", "email": "c1@example.com", "note": "x" * MAX_VALUE_CHARS}
    ]
    report = import_contacts(db, write_contacts(tmp_path / "c.csv", rows))
    assert report.bad_rows == []
    assert len(contacts_by_id(db)["c1"]["fields"]["note"]) == MAX_VALUE_CHARS


def test_huge_value_reported_as_bad_row(db: psycopg.Connection, tmp_path: Path) -> None:
    rows = [
        {"contact_id": "c1", "email": "c1@example.com", "note": "x" * 200_000},
        {"contact_id": "c2", "email": "c2@example.com", "note": "short"},
    ]
    report = import_contacts(db, write_contacts(tmp_path / "c.csv", rows))
    assert [bad.line for bad in report.bad_rows] == [2]
    assert sorted(contacts_by_id(db)) == ["c2"]


def test_nul_character_reported(db: psycopg.Connection, tmp_path: Path) -> None:
    path = write_bytes(
        tmp_path / "c.csv",
        b"contact_id,email,firstname",
        b"c1,c1@example.com,A\x00n",
        b"c2,c2@example.com,Ben",
    )
    report = import_contacts(db, path)
    assert [(bad.line, bad.reason) for bad in report.bad_rows] == [
        (2, "column 'firstname' contains a NUL character")
    ]
    assert sorted(contacts_by_id(db)) == ["c2"]


def test_blank_lines_skipped(db: psycopg.Connection, tmp_path: Path) -> None:
    path = write_bytes(
        tmp_path / "c.csv", b"email", b"", b"ann@example.com", b"", b"ben@example.com"
    )
    report = import_contacts(db, path)
    assert report.bad_rows == []
    assert emails(db) == ["ann@example.com", "ben@example.com"]


def test_reimport_updates_by_contact_id(db: psycopg.Connection, tmp_path: Path) -> None:
    import_contacts(db, write_contacts(tmp_path / "first.csv", simple_contacts(3)))
    changed = simple_contacts(3)
    changed[1]["firstname"] = "Renamed"
    changed[2]["email"] = "new-c3@example.com"
    report = import_contacts(db, write_contacts(tmp_path / "second.csv", changed))
    assert report.updated == 2
    assert report.unchanged == 1
    assert report.inserted == 0
    assert contacts_by_id(db)["c2"]["firstname"] == "Renamed"
    assert contacts_by_id(db)["c3"]["email"] == "new-c3@example.com"
    assert len(contacts_by_id(db)) == 3


def test_reimport_updates_by_email_without_id(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    first = [
        {"email": "Ann@Example.com", "firstname": "Ann"},
        {"email": "ben@example.com", "firstname": "Ben"},
    ]
    import_contacts(db, write_contacts(tmp_path / "first.csv", first))
    second = [
        {"email": "ann@example.com", "firstname": "Anna"},
        {"email": "ben@example.com", "firstname": "Ben"},
    ]
    report = import_contacts(db, write_contacts(tmp_path / "second.csv", second))
    assert report.updated == 1
    assert report.unchanged == 1
    names = dict(db.execute("SELECT lower(email), firstname FROM contacts").fetchall())
    assert names == {"ann@example.com": "Anna", "ben@example.com": "Ben"}


def test_unchanged_reimport_keeps_updated_at(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    rows = [{**row, "city": "Berlin"} for row in simple_contacts(3)]
    path = write_contacts(tmp_path / "c.csv", rows)
    import_contacts(db, path)
    before = db.execute(
        "SELECT contact_id, updated_at FROM contacts ORDER BY id"
    ).fetchall()
    report = import_contacts(db, path)
    after = db.execute(
        "SELECT contact_id, updated_at FROM contacts ORDER BY id"
    ).fetchall()
    assert report.unchanged == 3
    assert report.updated == 0
    assert after == before


def test_changed_reimport_bumps_updated_at(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    import_contacts(db, write_contacts(tmp_path / "first.csv", simple_contacts(1)))
    (before,) = db.execute("SELECT updated_at FROM contacts").fetchone()
    changed = [{**simple_contacts(1)[0], "firstname": "Other"}]
    import_contacts(db, write_contacts(tmp_path / "second.csv", changed))
    (after,) = db.execute("SELECT updated_at FROM contacts").fetchone()
    assert after > before


def test_later_duplicate_row_wins(db: psycopg.Connection, tmp_path: Path) -> None:
    rows = [
        {"contact_id": "c1", "email": "c1@example.com", "firstname": "First"},
        {"contact_id": "c1", "email": "c1@example.com", "firstname": "Second"},
    ]
    report = import_contacts(db, write_contacts(tmp_path / "c.csv", rows))
    assert report.inserted == 1
    assert contacts_by_id(db)["c1"]["firstname"] == "Second"


def test_header_without_email_rejected(db: psycopg.Connection, tmp_path: Path) -> None:
    path = write_bytes(
        tmp_path / "c.csv", b"contact_id,mail,firstname", b"c1,c1@example.com,Ann"
    )
    with pytest.raises(ContactImportError) as raised:
        import_contacts(db, path)
    message = str(raised.value)
    assert "the header row has no 'email' column" in message
    assert "found contact_id, mail, firstname" in message


def test_empty_file_rejected(db: psycopg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b"")
    with pytest.raises(
        ContactImportError, match="is empty; it needs a header row with 'email'"
    ):
        import_contacts(db, path)


def test_repeated_header_rejected(db: psycopg.Connection, tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "c.csv", b"email,city,city", b"a@example.com,x,y")
    with pytest.raises(
        ContactImportError, match="empty or repeated column names: city"
    ):
        import_contacts(db, path)


def test_missing_file_rejected(db: psycopg.Connection, tmp_path: Path) -> None:
    with pytest.raises(ContactImportError, match="cannot open contacts file"):
        import_contacts(db, tmp_path / "absent.csv")


def test_byte_order_mark_ignored(db: psycopg.Connection, tmp_path: Path) -> None:
    path = write_bytes(
        tmp_path / "c.csv", b"\xef\xbb\xbfemail,firstname", b"ann@example.com,Ann"
    )
    report = import_contacts(db, path)
    assert report.inserted == 1


def test_extra_columns_stored_as_fields(db: psycopg.Connection, tmp_path: Path) -> None:
    rows = [
        {**row, "city": "Berlin", "lifecycle_stage": "customer"}
        for row in simple_contacts(2)
    ]
    import_contacts(db, write_contacts(tmp_path / "c.csv", rows))
    known = {row[0] for row in db.execute("SELECT name FROM contact_fields")}
    assert contacts_by_id(db)["c1"]["fields"] == {
        "city": "Berlin",
        "lifecycle_stage": "customer",
    }
    assert {"city", "lifecycle_stage"} <= known


def test_reimport_merges_fields(db: psycopg.Connection, tmp_path: Path) -> None:
    import_contacts(
        db,
        write_contacts(
            tmp_path / "first.csv",
            [{"contact_id": "c1", "email": "c1@example.com", "city": "Berlin"}],
        ),
    )
    import_contacts(
        db,
        write_contacts(
            tmp_path / "second.csv",
            [{"contact_id": "c1", "email": "c1@example.com", "plan": "gold"}],
        ),
    )
    assert contacts_by_id(db)["c1"]["fields"] == {"city": "Berlin", "plan": "gold"}


def test_quoted_newline_kept_in_name(db: psycopg.Connection, tmp_path: Path) -> None:
    """The name keeps its line break; the email tile makes headers single-line."""
    path = write_bytes(
        tmp_path / "c.csv",
        b"contact_id,email,firstname",
        b'c1,c1@example.com,"Ann\nMarie"',
        b"c2,,Ben",
    )
    report = import_contacts(db, path)
    assert contacts_by_id(db)["c1"]["firstname"] == "Ann\nMarie"
    assert [bad.line for bad in report.bad_rows] == [4]


def test_line_break_in_email_reported(db: psycopg.Connection, tmp_path: Path) -> None:
    path = write_bytes(
        tmp_path / "c.csv", b"email", b'"ann@example.com\nBcc: evil@example.com"'
    )
    report = import_contacts(db, path)
    assert len(report.bad_rows) == 1
    assert "contains a line break" in report.bad_rows[0].reason
    assert emails(db) == []


def test_values_stripped(db: psycopg.Connection, tmp_path: Path) -> None:
    path = write_bytes(
        tmp_path / "c.csv",
        b"contact_id,email,firstname",
        b" c1 , c1@example.com ,  Ann ",
    )
    import_contacts(db, path)
    assert contacts_by_id(db)["c1"] == {
        "email": "c1@example.com",
        "firstname": "Ann",
        "lastname": "",
        "unsubscribed": False,
        "fields": {},
    }


def test_reimport_never_resubscribes(db: psycopg.Connection, tmp_path: Path) -> None:
    rows = simple_contacts(2)
    import_contacts(db, write_contacts(tmp_path / "a.csv", [{**r, "unsubscribed": "true"} for r in rows]))
    import_contacts(db, write_contacts(tmp_path / "b.csv", [{**rows[0], "unsubscribed": "false"}, rows[1]]))
    flags = dict(db.execute("SELECT contact_id, unsubscribed FROM contacts").fetchall())
    assert flags == {"c1": True, "c2": True}
