"""Segment membership predicates, run against contacts in PostgreSQL.

Each test imports the same small set of contacts once and checks a table of
segments as subtests, because every `db` setup truncates all tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from shared.contacts import import_contacts
from shared.definitions import Segment
from shared.segments import membership

CONTACTS_CSV = """\
contact_id,email,firstname,lastname,unsubscribed,city,score,signup,tags
a1,Ann@Example.com,Ann,O'Brien,false,Berlin,10,2027-01-15,"vip,newsletter"
b1,ben@example.com,Ben,Berg,false,Hamburg,9,2026-12-01,newsletter
c1,cid@example.com,Cid,Cole,false,Berlin,3,2027-03-01,
d1,dee@example.com,Dee,Dunn,true,,abc,,
,eve@example.com,Eve,Eck,false,K\u00f6ln,5.5,2026-06-30,VIP
"""
# A contact from a second file, without any of the extra columns above.
LATE_CONTACT_CSV = "contact_id,email,firstname,plan\nf1,fay@example.com,Fay,gold\n"


@pytest.fixture
def contacts(db: psycopg.Connection, tmp_path: Path) -> psycopg.Connection:
    for name, text in (("first.csv", CONTACTS_CSV), ("second.csv", LATE_CONTACT_CSV)):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        assert import_contacts(db, path).bad_rows == []
    return db


def members(conn: psycopg.Connection, segment: Segment) -> list[str]:
    """Return the first names of the segment's members, sorted."""
    query = sql.SQL("SELECT c.firstname FROM contacts c WHERE {} ORDER BY 1").format(
        membership(segment)
    )
    return [row[0] for row in conn.execute(query)]


def where(*conditions: dict[str, Any]) -> Segment:
    return Segment(kind="segment", name="test", where=list(conditions))


def static(*identifiers: str) -> Segment:
    return Segment(kind="segment", name="test", contacts=list(identifiers))


CONDITION_CASES = [
    ("eq-field", {"field": "city", "op": "eq", "value": "Berlin"}, ["Ann", "Cid"]),
    ("eq-column", {"field": "firstname", "op": "eq", "value": "Ben"}, ["Ben"]),
    ("eq-quote", {"field": "lastname", "op": "eq", "value": "O'Brien"}, ["Ann"]),
    ("eq-unicode", {"field": "city", "op": "eq", "value": "K\u00f6ln"}, ["Eve"]),
    ("eq-bool", {"field": "unsubscribed", "op": "eq", "value": True}, ["Dee"]),
    ("eq-case-sensitive", {"field": "city", "op": "eq", "value": "berlin"}, []),
    (
        "ne-includes-missing",
        {"field": "city", "op": "ne", "value": "Berlin"},
        ["Ben", "Dee", "Eve", "Fay"],
    ),
    (
        "in",
        {"field": "city", "op": "in", "value": ["Berlin", "Hamburg"]},
        ["Ann", "Ben", "Cid"],
    ),
    ("in-numbers", {"field": "score", "op": "in", "value": [3, 9]}, ["Ben", "Cid"]),
    (
        "contains",
        {"field": "tags", "op": "contains", "value": "newsletter"},
        ["Ann", "Ben"],
    ),
    (
        "contains-case-sensitive",
        {"field": "tags", "op": "contains", "value": "VIP"},
        ["Eve"],
    ),
    ("gt-number", {"field": "score", "op": "gt", "value": 5}, ["Ann", "Ben", "Eve"]),
    ("lt-number", {"field": "score", "op": "lt", "value": 5}, ["Cid"]),
    ("gt-decimal", {"field": "score", "op": "gt", "value": 9.5}, ["Ann"]),
    ("lt-negative", {"field": "score", "op": "lt", "value": -1}, []),
    (
        "lt-skips-non-number",
        {"field": "score", "op": "lt", "value": 1000},
        ["Ann", "Ben", "Cid", "Eve"],
    ),
    (
        "gt-iso-date",
        {"field": "signup", "op": "gt", "value": "2027-01-01"},
        ["Ann", "Cid"],
    ),
    (
        "exists-true",
        {"field": "city", "op": "exists", "value": True},
        ["Ann", "Ben", "Cid", "Eve"],
    ),
    ("exists-bare", {"field": "city", "op": "exists"}, ["Ann", "Ben", "Cid", "Eve"]),
    ("exists-false", {"field": "city", "op": "exists", "value": False}, ["Dee", "Fay"]),
    ("exists-late-field", {"field": "plan", "op": "exists", "value": True}, ["Fay"]),
]


def test_condition_membership(
    contacts: psycopg.Connection, subtests: pytest.Subtests
) -> None:
    for case, condition, expected in CONDITION_CASES:
        with subtests.test(case):
            assert members(contacts, where(condition)) == expected


def test_text_value_compares_as_text(contacts: psycopg.Connection) -> None:
    """A quoted number keeps text order, where '10' sorts before '5' and 'abc' after."""
    segment = where({"field": "score", "op": "gt", "value": "5"})
    assert members(contacts, segment) == ["Ben", "Dee", "Eve"]


def test_conditions_combined_with_and(contacts: psycopg.Connection) -> None:
    segment = where(
        {"field": "city", "op": "eq", "value": "Berlin"},
        {"field": "score", "op": "gt", "value": 5},
    )
    assert members(contacts, segment) == ["Ann"]


def test_empty_where_matches_everyone(contacts: psycopg.Connection) -> None:
    assert members(contacts, where()) == ["Ann", "Ben", "Cid", "Dee", "Eve", "Fay"]


STATIC_CASES = [
    ("email-case-insensitive", ["ANN@example.COM"], ["Ann"]),
    ("email-padded", ["  cid@example.com "], ["Cid"]),
    ("contact-id", ["b1"], ["Ben"]),
    ("mixed", ["b1", "eve@example.com", "nobody@example.com"], ["Ben", "Eve"]),
    ("empty", [], []),
]


def test_static_membership(
    contacts: psycopg.Connection, subtests: pytest.Subtests
) -> None:
    for case, identifiers, expected in STATIC_CASES:
        with subtests.test(case):
            assert members(contacts, static(*identifiers)) == expected
