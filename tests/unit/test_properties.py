"""Properties that must hold for any input: definitions, generated journeys,
queue messages, signed tokens and local-time conversion."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.events.actors import parse_event
from services.events.models import InteractionEvent
from services.tiles.common import ContactMessage, parse_message
from shared.checks import check
from shared.definitions import DOCUMENT_KINDS, TILE_TYPES, Journey
from shared.errors import BrokenMessage
from shared.loading import LoadedDocument, Problem, load_documents
from shared.tile_checks import check_tile_graph
from shared.tokens import PURPOSES, InvalidToken, sign, verify
from shared.windows import LocalTimeError, to_utc

NOW = datetime.fromisoformat("2027-01-01T00:00:00+00:00")
PROPERTY_SETTINGS = settings(
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow],
)

# Field names of every document and tile model, so that generated mappings
# reach the validators behind the discriminators.
KNOWN_KEYS = (
    "kind",
    "name",
    "status",
    "start",
    "end",
    "timezone",
    "ambiguous_time",
    "nonexistent_time",
    "content_settings",
    "audience",
    "suppression",
    "segment",
    "tiles",
    "id",
    "type",
    "email",
    "duration",
    "until",
    "if",
    "within",
    "yes",
    "no",
    "branches",
    "percent",
    "count",
    "remaining",
    "field",
    "op",
    "value",
    "event",
    "link",
    "subject",
    "html",
    "text",
    "from",
    "sender",
    "postal_address",
    "subscription_center_url",
    "unsubscribe_mailto",
    "contacts",
    "where",
    "source",
)
# Strings that pass some validators, so that generated documents get past
# the first check of each field.
# NOTE: durations over 999,999,999 days ("9999999999d") and local times near
# year 1 or 9999 are left out because they still raise OverflowError. The
# corpus tests in test_bad_input.py cover them.
INTERESTING_TEXT = (
    *DOCUMENT_KINDS,
    *TILE_TYPES,
    "draft",
    "live",
    "2027-05-03 09:00",
    "2027-03-28 02:30",
    "2027-10-31 02:30",
    "2027-05-03 09:00+02:00",
    "next 07:30",
    "next 25:00",
    "Europe/Berlin",
    "UTC",
    "Mars/Base",
    "30m",
    "1d12h",
    "0m",
    "eq",
    "in",
    "exists",
    "opened",
    "clicked",
    "earlier",
    "shift_forward",
    "queue",
    "https://prefs.example.com/u",
    "News <news@example.com>",
    "{{ contact.firstname }}",
    "{{ contact.__class__ }}",
    "{% for %}",
    "",
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(INTERESTING_TEXT)
)
json_keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(json_keys, children, max_size=6)
    ),
    max_leaves=20,
)
documents = st.fixed_dictionaries(
    {"kind": st.sampled_from(DOCUMENT_KINDS) | json_scalars},
    optional={key: json_values for key in KNOWN_KEYS if key != "kind"},
)


def all_problems(loaded: list[LoadedDocument], read: list[Problem]) -> list[Problem]:
    return read + check(loaded, now=NOW)


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(st.lists(documents | json_values, min_size=1, max_size=3))
def test_any_document_validates_or_gives_problems(raw: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "generated.json"
        path.write_text(json.dumps(raw), encoding="utf-8")

        loaded, read = load_documents([path])
        problems = all_problems(loaded, read)

    for document in loaded:
        if document.raw is None:
            assert document.model is None
            assert document.problems == []
        else:
            assert (document.model is None) == bool(document.problems)
        for problem in document.problems:
            assert problem.where.startswith(str(path))
            assert problem.message
    for problem in problems:
        assert problem.severity in ("error", "warning")


def mutated(valid: dict[str, Any], draw: Callable[..., Any]) -> dict[str, Any]:
    """Replace one value somewhere in a valid document with a generated one."""
    document = json.loads(json.dumps(valid))
    node: Any = document
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return document
        key = draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, dict | list) and child and draw(st.booleans()):
            node = child
            continue
        node[key] = draw(json_values)
        return document


VALID_JOURNEY = {
    "kind": "journey",
    "name": "spring",
    "start": "2027-05-03 09:00",
    "end": "2027-06-03 09:00",
    "timezone": "Europe/Berlin",
    "content_settings": "default",
    "audience": {"segment": "everyone"},
    "tiles": [
        {"id": "send-hello", "type": "email", "email": "hello"},
        {"id": "pause", "type": "wait", "duration": "2d"},
        {
            "id": "opened",
            "type": "condition",
            "if": {"email": "send-hello", "event": "opened"},
            "within": "3d",
            "yes": [{"id": "thanks", "type": "email", "email": "hello"}],
            "no": [
                {
                    "id": "ab",
                    "type": "split",
                    "branches": [
                        {"name": "a", "percent": 50, "tiles": []},
                        {
                            "name": "b",
                            "percent": 50,
                            "tiles": [{"id": "x", "type": "exit"}],
                        },
                    ],
                }
            ],
        },
    ],
}


@PROPERTY_SETTINGS
@given(st.data())
def test_mutated_journey_validates_or_gives_problems(data: st.DataObject) -> None:
    document = mutated(VALID_JOURNEY, data.draw)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mutated.json"
        path.write_text(json.dumps(document), encoding="utf-8")

        loaded, read = load_documents([path])
        problems = all_problems(loaded, read)

    assert len(loaded) == 1
    assert all(problem.message for problem in problems)


# Generated valid journeys.
EMAIL_NAMES = ("hello", "reminder")
CONTACT_FIELDS = ("city", "plan", "score")
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")
# Local noon never falls into a daylight-saving gap or overlap in these zones.
JOURNEY_START = datetime(2027, 5, 3, 12, 0)
JOURNEY_END = datetime(2027, 8, 3, 12, 0)

durations = st.builds(
    lambda days, hours, minutes: (
        (f"{days}d" if days else "")
        + (f"{hours}h" if hours else "")
        + (f"{minutes}m" if minutes else "")
    ),
    st.integers(0, 30),
    st.integers(0, 23),
    st.integers(0, 59),
).filter(bool)
waits = st.one_of(
    durations.map(lambda text: {"duration": text}),
    st.builds(
        lambda h, m: {"until": f"next {h:02d}:{m:02d}"},
        st.integers(0, 23),
        st.integers(0, 59),
    ),
    st.integers(0, (JOURNEY_END - JOURNEY_START).days - 1).map(
        lambda days: {
            "until": (JOURNEY_START + timedelta(days=days)).strftime("%Y-%m-%d %H:%M")
        }
    ),
)


def data_condition(draw: Callable[..., Any]) -> dict[str, Any]:
    op = draw(st.sampled_from(("eq", "ne", "in", "contains", "gt", "lt", "exists")))
    condition: dict[str, Any] = {
        "field": draw(st.sampled_from(CONTACT_FIELDS)),
        "op": op,
    }
    if op == "in":
        condition["value"] = draw(
            st.lists(st.text(max_size=5) | st.integers(), max_size=3)
        )
    elif op == "exists":
        value = draw(st.sampled_from((None, True, False)))
        if value is not None:
            condition["value"] = value
    else:
        condition["value"] = draw(st.text(max_size=8) | st.integers() | st.booleans())
    return condition


def percentages(draw: Callable[..., Any], count: int) -> list[float]:
    """Split 100 % into `count` positive parts in tenths of a percent."""
    cuts = sorted(
        draw(st.sets(st.integers(1, 999), min_size=count - 1, max_size=count - 1))
    )
    bounds = [0, *cuts, 1000]
    return [(high - low) / 10 for low, high in pairwise(bounds)]


class TileMaker:
    """Draws tile lists that pass check_tile_graph: unique ids, branch tiles
    only at the end of a list, interactions only on earlier email tiles."""

    def __init__(self, draw: Callable[..., Any]) -> None:
        self.draw = draw
        self.next_number = 0

    def new_id(self, kind: str) -> str:
        self.next_number += 1
        return f"{kind}-{self.next_number}"

    def tiles(
        self, depth: int, earlier_emails: frozenset[str], minimum: int
    ) -> list[Any]:
        count = self.draw(st.integers(minimum, 3))
        emails = set(earlier_emails)
        result = []
        for position in range(count):
            last = position == count - 1
            kinds = ["email", "wait"]
            if last:
                kinds.append("exit")
                if depth < 3:
                    kinds.extend(["condition", "split"])
            tile = self.tile(
                self.draw(st.sampled_from(kinds)), depth, frozenset(emails)
            )
            if tile["type"] == "email":
                emails.add(tile["id"])
            result.append(tile)
        return result

    def tile(self, kind: str, depth: int, emails: frozenset[str]) -> dict[str, Any]:
        tile: dict[str, Any] = {"id": self.new_id(kind), "type": kind}
        if kind == "email":
            tile["email"] = self.draw(st.sampled_from(EMAIL_NAMES))
        elif kind == "wait":
            tile.update(self.draw(waits))
        elif kind == "condition":
            tile.update(self.condition(emails))
            tile["yes"] = self.tiles(depth + 1, emails, 0)
            tile["no"] = self.tiles(depth + 1, emails, 0)
        elif kind == "split":
            tile.update(self.split(depth, emails))
        return tile

    def condition(self, emails: frozenset[str]) -> dict[str, Any]:
        if emails and self.draw(st.booleans()):
            interaction: dict[str, Any] = {
                "email": self.draw(st.sampled_from(sorted(emails))),
                "event": self.draw(
                    st.sampled_from(("opened", "clicked", "unsubscribed"))
                ),
            }
            if interaction["event"] == "clicked" and self.draw(st.booleans()):
                interaction["link"] = "https://example.com/offer"
            return {"if": interaction, "within": self.draw(durations)}
        return {"if": data_condition(self.draw)}

    def split(self, depth: int, emails: frozenset[str]) -> dict[str, Any]:
        count = self.draw(st.integers(1, 4))
        branches: list[dict[str, Any]] = [
            {"name": f"branch-{n}", "tiles": self.tiles(depth + 1, emails, 0)}
            for n in range(count)
        ]
        if self.draw(st.booleans()):
            for branch, percent in zip(
                branches, percentages(self.draw, count), strict=True
            ):
                branch["percent"] = percent
            return {"branches": branches}
        for branch in branches:
            branch["count"] = self.draw(st.integers(1, 10_000))
        return {"branches": branches, "remaining": self.tiles(depth + 1, emails, 0)}


@st.composite
def valid_journeys(draw: Callable[..., Any]) -> dict[str, Any]:
    return {
        "kind": "journey",
        "name": "generated",
        "status": draw(st.sampled_from(("draft", "live"))),
        "start": JOURNEY_START.strftime("%Y-%m-%d %H:%M"),
        "end": JOURNEY_END.strftime("%Y-%m-%d %H:%M"),
        "timezone": draw(st.sampled_from(ZONES)),
        "content_settings": "default",
        "audience": {"segment": "everyone"},
        "tiles": TileMaker(draw).tiles(0, frozenset(), 1),
    }


NEIGHBOURS = [
    {
        "kind": "content-settings",
        "name": "default",
        "sender": "Northwind News <news@northwind.example.com>",
        "postal_address": "Hafenstrasse 12, 20457 Hamburg",
        "subscription_center_url": "https://prefs.northwind.example.com/u",
    },
    {"kind": "segment", "name": "everyone", "where": []},
    *(
        {"kind": "email", "name": name, "subject": "Hi", "html": "<p>Hi</p>"}
        for name in EMAIL_NAMES
    ),
]


@PROPERTY_SETTINGS
@given(valid_journeys())
def test_generated_journey_passes_checks(raw: dict[str, Any]) -> None:
    journey = Journey.model_validate(raw)

    assert list(check_tile_graph(journey, set(CONTACT_FIELDS))) == []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "journey.json"
        path.write_text(json.dumps([*NEIGHBOURS, raw]), encoding="utf-8")
        loaded, read = load_documents([path])
        problems = all_problems(loaded, read)
    assert [str(problem) for problem in problems] == []


@PROPERTY_SETTINGS
@given(valid_journeys())
def test_generated_journey_round_trips(raw: dict[str, Any]) -> None:
    journey = Journey.model_validate(raw)

    # The form that the store publishes and the tiles read back.
    stored = json.loads(
        json.dumps(journey.model_dump(mode="json", by_alias=True, exclude_none=True))
    )
    in_python = journey.model_dump(by_alias=True)

    assert Journey.model_validate(stored) == journey
    assert Journey.model_validate(in_python) == journey
    assert Journey.model_validate(stored).model_dump(by_alias=True) == in_python


# Queue messages.
contact_messages = st.fixed_dictionaries(
    {},
    optional={
        "journey_id": json_scalars,
        "version": json_scalars,
        "tile": json_scalars,
        "contacts": st.lists(json_scalars, max_size=5) | json_values,
        "extra": json_values,
    },
)
interaction_events = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.sampled_from(("bounce", "open", "click", "unsubscribe"))
        | json_scalars,
        "message_id": st.text(max_size=20) | json_scalars,
        "hard": json_scalars,
        "link": json_scalars,
        "at": st.datetimes().map(datetime.isoformat)
        | st.datetimes(timezones=st.timezones()).map(datetime.isoformat)
        | json_scalars,
        "extra": json_values,
    },
)


@PROPERTY_SETTINGS
@given(contact_messages | json_values)
def test_contact_message_validates_or_is_broken(payload: Any) -> None:
    try:
        message = parse_message(payload)
    except BrokenMessage as error:
        assert str(error)
        return
    assert isinstance(message, ContactMessage)
    assert message.journey_id > 0
    assert 1 <= len(message.contacts) <= 1000


@PROPERTY_SETTINGS
@given(interaction_events | json_values)
def test_interaction_event_validates_or_is_broken(payload: Any) -> None:
    try:
        event = InteractionEvent.model_validate(payload)
    except ValidationError:
        event = None
    try:
        parsed = parse_event(payload)
    except BrokenMessage as error:
        assert event is None
        assert str(error)
        return
    assert parsed == event
    assert parsed.at.tzinfo is not None


# Tokens.
secret_keys = st.binary(min_size=1, max_size=64)
token_claims = st.tuples(
    st.sampled_from(sorted(PURPOSES)),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.dates(date(2020, 1, 1), date(2020, 1, 1) + timedelta(days=2**16 - 1)),
)
TOKEN_CHARACTERS = (
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/= .~%é\x00"
)


@PROPERTY_SETTINGS
@given(secret_keys, token_claims)
def test_token_round_trip(secret: bytes, claims: tuple[str, int, int, date]) -> None:
    purpose, send_id, link, issued = claims

    verified = verify(secret, sign(secret, purpose, send_id, link, issued=issued))

    assert verified.purpose == purpose
    assert verified.send_id == send_id
    assert verified.link == link
    assert verified.issued == issued


@PROPERTY_SETTINGS
@given(secret_keys, token_claims, st.data())
def test_token_single_character_change_rejected(
    secret: bytes, claims: tuple[str, int, int, date], data: st.DataObject
) -> None:
    purpose, send_id, link, issued = claims
    token = sign(secret, purpose, send_id, link, issued=issued)
    position = data.draw(st.integers(0, len(token) - 1))
    character = data.draw(
        st.sampled_from(TOKEN_CHARACTERS).filter(lambda c: c != token[position])
    )
    changed = token[:position] + character + token[position + 1 :]

    try:
        verify(secret, changed)
    except InvalidToken:
        return
    raise AssertionError(f"{changed!r} was accepted in place of {token!r}")


@PROPERTY_SETTINGS
@given(secret_keys, secret_keys, token_claims)
def test_token_of_other_secret_rejected(
    secret: bytes, other: bytes, claims: tuple[str, int, int, date]
) -> None:
    purpose, send_id, link, issued = claims
    token = sign(other, purpose, send_id, link, issued=issued)

    try:
        verify(secret, token)
    except InvalidToken:
        return
    assert other == secret


# Local times: gaps and overlaps of several kinds of zone.
TIME_ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # a 30-minute daylight-saving shift
    "Europe/Dublin",  # negative daylight-saving time in the zone data
    "Pacific/Apia",  # skipped 2011-12-30 entirely
    "America/Santiago",  # changes at midnight
    "Asia/Kolkata",
)


@cache
def transitions(zone_name: str, year: int) -> tuple[datetime, ...]:
    """Return the UTC moments in a year at which the zone's offset changes."""
    zone = ZoneInfo(zone_name)
    found = []
    edges = [datetime(year, month, 1, tzinfo=UTC) for month in range(1, 13)]
    edges.append(datetime(year + 1, 1, 1, tzinfo=UTC))
    for low, high in pairwise(edges):
        if low.astimezone(zone).utcoffset() == high.astimezone(zone).utcoffset():
            continue
        while high - low > timedelta(minutes=1):
            middle = low + (high - low) / 2
            if middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset():
                low = middle
            else:
                high = middle
        found.append(high)
    return tuple(found)


@st.composite
def local_times_in(draw: Callable[..., Any], zone_name: str) -> datetime:
    """Draw a naive local time, near one of the zone's offset changes when
    it has any that year, so that gaps and overlaps come up often."""
    year = draw(st.integers(2000, 2100))
    changes = transitions(zone_name, year)
    if not changes or draw(st.integers(0, 3)) == 0:
        return draw(st.datetimes(datetime(year, 1, 1), datetime(year, 12, 31, 23, 59)))
    change = draw(st.sampled_from(changes))
    before = (change - timedelta(minutes=1)).astimezone(ZoneInfo(zone_name))
    offset = timedelta(minutes=draw(st.integers(-90, 90)))
    return before.replace(tzinfo=None) + offset


zoned_local_times = st.sampled_from(TIME_ZONES).flatmap(
    lambda name: st.tuples(st.just(name), local_times_in(name))
)


@PROPERTY_SETTINGS
@given(zoned_local_times, st.sampled_from((None, "earlier", "later")))
def test_to_utc_keeps_wall_time_or_raises(
    zoned: tuple[str, datetime], ambiguous: str | None
) -> None:
    zone_name, local = zoned
    zone = ZoneInfo(zone_name)

    try:
        moment = to_utc(local, zone, ambiguous=ambiguous)
    except LocalTimeError as error:
        assert f"{local:%Y-%m-%d %H:%M}" in str(error)
        assert zone_name in str(error)
        return

    assert moment.utcoffset() == timedelta(0)
    assert moment.astimezone(zone).replace(tzinfo=None) == local


@PROPERTY_SETTINGS
@given(zoned_local_times)
def test_to_utc_shift_forward_never_raises_in_gap(zoned: tuple[str, datetime]) -> None:
    zone_name, local = zoned
    zone = ZoneInfo(zone_name)

    moment = to_utc(local, zone, ambiguous="earlier", nonexistent="shift_forward")

    assert moment.utcoffset() == timedelta(0)
    wall = moment.astimezone(zone).replace(tzinfo=None)
    if wall != local:
        # Inside a gap: the first moment after it, which comes later on the wall
        # clock and maps back to itself.
        assert wall > local
        assert to_utc(wall, zone, ambiguous="earlier") == moment
