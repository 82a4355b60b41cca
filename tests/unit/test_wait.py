"""When a contact leaves a wait tile."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.tiles.wait import due_time
from shared.definitions import WaitTile

# 2027-10-30 20:00 in Berlin is 18:00Z; the clocks go back in the night after.
ENTERED = datetime(2027, 10, 30, 18, 0, tzinfo=UTC)


def wait(**settings: str) -> WaitTile:
    return WaitTile(id="w", type="wait", **settings)


def test_next_time_of_day_across_clock_change() -> None:
    due = due_time(wait(until="next 07:30"), ENTERED, "Europe/Berlin")
    assert due == datetime(2027, 10, 31, 6, 30, tzinfo=UTC)


def test_duration_is_elapsed_time_across_clock_change() -> None:
    due = due_time(wait(duration="24h"), ENTERED, "Europe/Berlin")
    assert due == datetime(2027, 10, 31, 18, 0, tzinfo=UTC)


def test_next_time_of_day_later_today() -> None:
    morning = datetime(2027, 6, 1, 4, 0, tzinfo=UTC)  # 06:00 in Berlin
    due = due_time(wait(until="next 07:30"), morning, "Europe/Berlin")
    assert due == datetime(2027, 6, 1, 5, 30, tzinfo=UTC)


def test_next_time_of_day_in_spring_gap_moves_to_gap_end() -> None:
    evening = datetime(2027, 3, 27, 20, 0, tzinfo=UTC)
    due = due_time(wait(until="next 02:30"), evening, "Europe/Berlin")
    assert due == datetime(2027, 3, 28, 1, 0, tzinfo=UTC)


def test_until_local_date_time() -> None:
    due = due_time(wait(until="2027-05-03 11:00"), ENTERED, "Europe/Berlin")
    assert due == datetime(2027, 5, 3, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("90m", 5400), ("2h", 7200), ("3d", 259_200), ("1d12h30m", 131_400)],
)
def test_duration_forms(text: str, seconds: int) -> None:
    due = due_time(wait(duration=text), ENTERED, "UTC")
    assert (due - ENTERED).total_seconds() == seconds
