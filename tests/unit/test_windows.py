"""Conversion of a journey's local start and end to UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from shared.errors import DefinitionError
from shared.windows import LocalTimeError, load_zone, suggest_zone, to_utc

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("zone", "local", "expected"),
    [
        (
            "Europe/Amsterdam",
            datetime(2027, 7, 1, 9, 0),
            datetime(2027, 7, 1, 7, 0, tzinfo=UTC),
        ),
        (
            "Europe/Berlin",
            datetime(2027, 1, 15, 9, 0),
            datetime(2027, 1, 15, 8, 0, tzinfo=UTC),
        ),
        (
            "America/New_York",
            datetime(2027, 1, 15, 9, 0),
            datetime(2027, 1, 15, 14, 0, tzinfo=UTC),
        ),
        (
            "America/New_York",
            datetime(2027, 7, 1, 9, 0),
            datetime(2027, 7, 1, 13, 0, tzinfo=UTC),
        ),
        ("UTC", datetime(2027, 3, 28, 2, 30), datetime(2027, 3, 28, 2, 30, tzinfo=UTC)),
    ],
    ids=[
        "amsterdam-summer",
        "berlin-winter",
        "new-york-winter",
        "new-york-summer",
        "utc",
    ],
)
def test_plain_local_time_converted(
    zone: str, local: datetime, expected: datetime
) -> None:
    assert to_utc(local, ZoneInfo(zone)) == expected


def test_result_is_utc_aware() -> None:
    result = to_utc(datetime(2027, 7, 1, 9, 0), BERLIN)
    assert result.tzinfo is UTC


@pytest.mark.parametrize(
    ("zone", "local", "expected"),
    [
        (BERLIN, datetime(2027, 3, 28, 2, 30), datetime(2027, 3, 28, 1, 0, tzinfo=UTC)),
        (BERLIN, datetime(2027, 3, 28, 2, 0), datetime(2027, 3, 28, 1, 0, tzinfo=UTC)),
        (
            NEW_YORK,
            datetime(2027, 3, 14, 2, 30),
            datetime(2027, 3, 14, 7, 0, tzinfo=UTC),
        ),
    ],
    ids=["berlin-02:30", "berlin-02:00", "new-york-02:30"],
)
def test_gap_shifted_forward_to_transition(
    zone: ZoneInfo, local: datetime, expected: datetime
) -> None:
    assert to_utc(local, zone, nonexistent="shift_forward") == expected


@pytest.mark.parametrize(
    ("zone", "local", "hint"),
    [
        (BERLIN, datetime(2027, 3, 28, 2, 30), "start at 03:00 (01:00Z)"),
        (NEW_YORK, datetime(2027, 3, 14, 2, 30), "start at 03:00 (07:00Z)"),
    ],
    ids=["berlin", "new-york"],
)
def test_gap_rejected_by_default(zone: ZoneInfo, local: datetime, hint: str) -> None:
    with pytest.raises(LocalTimeError) as raised:
        to_utc(local, zone)
    message = str(raised.value)
    assert f"{local:%Y-%m-%d %H:%M} does not exist in {zone.key}" in message
    assert hint in message


def test_time_after_gap_unchanged() -> None:
    local = datetime(2027, 3, 28, 3, 0)
    assert to_utc(local, BERLIN) == datetime(2027, 3, 28, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "local", "choice", "expected"),
    [
        (
            BERLIN,
            datetime(2027, 10, 31, 2, 30),
            "earlier",
            datetime(2027, 10, 31, 0, 30, tzinfo=UTC),
        ),
        (
            BERLIN,
            datetime(2027, 10, 31, 2, 30),
            "later",
            datetime(2027, 10, 31, 1, 30, tzinfo=UTC),
        ),
        (
            NEW_YORK,
            datetime(2027, 11, 7, 1, 30),
            "earlier",
            datetime(2027, 11, 7, 5, 30, tzinfo=UTC),
        ),
        (
            NEW_YORK,
            datetime(2027, 11, 7, 1, 30),
            "later",
            datetime(2027, 11, 7, 6, 30, tzinfo=UTC),
        ),
    ],
    ids=["berlin-earlier", "berlin-later", "new-york-earlier", "new-york-later"],
)
def test_repeated_time_resolved_by_choice(
    zone: ZoneInfo, local: datetime, choice: str, expected: datetime
) -> None:
    assert to_utc(local, zone, ambiguous=choice) == expected


def test_repeated_time_needs_choice() -> None:
    with pytest.raises(LocalTimeError) as raised:
        to_utc(datetime(2027, 10, 31, 2, 30), BERLIN)
    message = str(raised.value)
    assert "2027-10-31 02:30 happens twice in Europe/Berlin" in message
    assert "it is 00:30Z or 01:30Z" in message


def test_ambiguity_choice_ignored_for_plain_time() -> None:
    local = datetime(2027, 7, 1, 9, 0)
    assert to_utc(local, BERLIN, ambiguous="later") == datetime(
        2027, 7, 1, 7, 0, tzinfo=UTC
    )


def test_unknown_zone_raises_definition_error() -> None:
    with pytest.raises(DefinitionError, match="unknown time zone 'Europe/Berln'"):
        load_zone("Europe/Berln")


@pytest.mark.parametrize("name", ["", "../etc/passwd", "/Europe/Berlin"])
def test_malformed_zone_name_rejected(name: str) -> None:
    with pytest.raises(DefinitionError, match="unknown time zone"):
        load_zone(name)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("europe/berlin", "Europe/Berlin"),
        ("amsterdam", "Europe/Amsterdam"),
        ("Los Angeles", "America/Los_Angeles"),
        ("Atlantis", None),
    ],
)
def test_zone_suggestion(written: str, expected: str | None) -> None:
    assert suggest_zone(written) == expected
