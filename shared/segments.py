"""Segment membership as SQL predicates over the contacts table."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from shared.definitions import Condition, Segment

_COLUMNS = {
    "email": sql.SQL("c.email"),
    "contact_id": sql.SQL("c.contact_id"),
    "firstname": sql.SQL("c.firstname"),
    "lastname": sql.SQL("c.lastname"),
    "unsubscribed": sql.SQL("c.unsubscribed::text"),
}
_NUMBER = r"^\s*-?[0-9]+(\.[0-9]+)?\s*$"


def membership(segment: Segment) -> sql.Composable:
    """Return a predicate on contacts `c` that is true for the segment's members.

    Static segments match a contact id or an address (case-insensitive). Every
    condition of a dynamic segment must hold; contact fields are compared as
    text, and `gt`/`lt` with a number compare numerically where the field
    holds a number.
    """
    if segment.source == "queue":
        return sql.SQL(
            "EXISTS (SELECT 1 FROM segment_members m WHERE m.segment = {}"
            " AND (m.identifier = c.contact_id OR m.identifier = lower(c.email)))"
        ).format(sql.Literal(segment.name))
    if segment.contacts is not None:
        identifiers = [item.strip() for item in segment.contacts]
        lowered = [item.lower() for item in identifiers]
        return sql.SQL("(c.contact_id = ANY({}) OR lower(c.email) = ANY({}))").format(
            sql.Literal(identifiers), sql.Literal(lowered)
        )
    parts = [_condition(condition) for condition in segment.where or []]
    if not parts:
        return sql.SQL("true")
    return sql.SQL("({})").format(sql.SQL(" AND ").join(parts))


def _field(name: str) -> sql.Composable:
    return _COLUMNS.get(name) or sql.SQL("(c.fields ->> {})").format(sql.Literal(name))


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _condition(condition: Condition) -> sql.Composable:
    field = _field(condition.field)
    value = condition.value
    if condition.op == "eq":
        return sql.SQL("{} = {}").format(field, sql.Literal(_text(value)))
    if condition.op == "ne":
        return sql.SQL("{} IS DISTINCT FROM {}").format(
            field, sql.Literal(_text(value))
        )
    if condition.op == "in":
        values = (
            [_text(item) for item in value]
            if isinstance(value, list)
            else [_text(value)]
        )
        return sql.SQL("{} = ANY({})").format(field, sql.Literal(values))
    if condition.op == "contains":
        return sql.SQL("strpos({}, {}) > 0").format(field, sql.Literal(_text(value)))
    if condition.op == "exists":
        present = sql.SQL("coalesce({}, '') <> ''").format(field)
        return present if value in (None, True) else sql.SQL("NOT ({})").format(present)
    return _comparison(field, ">" if condition.op == "gt" else "<", value)


def _comparison(field: sql.Composable, operator: str, value: Any) -> sql.Composable:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return sql.SQL(
            "(CASE WHEN {f} ~ {pattern} THEN {f}::numeric END) {op} {v}"
        ).format(
            f=field,
            pattern=sql.Literal(_NUMBER),
            op=sql.SQL(operator),
            v=sql.Literal(value),
        )
    return sql.SQL("{} {} {}").format(
        field, sql.SQL(operator), sql.Literal(_text(value))
    )
