"""Conversion of a journey's local start and end to UTC, across daylight-saving
changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from shared.errors import DefinitionError


class LocalTimeError(DefinitionError):
    """Raised when a local time does not exist or happens twice in its zone."""


def load_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise DefinitionError(
            f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin"
        ) from error


def suggest_zone(name: str) -> str | None:
    lowered = name.lower().replace(" ", "_")
    for zone in available_timezones():
        if zone.lower() == lowered or zone.lower().endswith("/" + lowered):
            return zone
    return None


def to_utc(
    local: datetime,
    zone: ZoneInfo,
    *,
    ambiguous: str | None = None,
    nonexistent: str = "reject",
) -> datetime:
    """Convert a naive local date-time in `zone` to an aware UTC date-time.

    A time that happens twice needs `ambiguous` ("earlier" or "later"). A time
    inside a spring-forward gap is an error unless `nonexistent` is
    "shift_forward", which moves it to the first moment after the gap.
    """
    try:
        return _to_utc(local, zone, ambiguous, nonexistent)
    except OverflowError:
        raise LocalTimeError(
            f"{local:%Y-%m-%d %H:%M} in {zone.key} is out of the supported range"
        ) from None


def _to_utc(
    local: datetime, zone: ZoneInfo, ambiguous: str | None, nonexistent: str
) -> datetime:
    first = local.replace(tzinfo=zone, fold=0)
    second = local.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first.astimezone(UTC)

    first_utc = first.astimezone(UTC)
    second_utc = second.astimezone(UTC)
    if first_utc.astimezone(zone).replace(tzinfo=None) != local:
        return _resolve_gap(local, zone, second_utc, first_utc, nonexistent)
    if ambiguous == "earlier":
        return first_utc
    if ambiguous == "later":
        return second_utc
    raise LocalTimeError(
        f"{local:%Y-%m-%d %H:%M} happens twice in {zone.key} because the clocks "
        f"go back: it is {first_utc:%H:%MZ} or {second_utc:%H:%MZ}; add "
        "'ambiguous_time: earlier' or 'ambiguous_time: later' to say which"
    )


def _resolve_gap(
    local: datetime, zone: ZoneInfo, low: datetime, high: datetime, rule: str
) -> datetime:
    transition = _find_transition(zone, low, high)
    if rule == "shift_forward":
        return transition
    after = transition.astimezone(zone)
    raise LocalTimeError(
        f"{local:%Y-%m-%d %H:%M} does not exist in {zone.key} because the clocks "
        f"go forward; choose a time outside the gap, or add "
        f"'nonexistent_time: shift_forward' to start at {after:%H:%M} "
        f"({transition:%H:%MZ})"
    )


def _find_transition(zone: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """Return the first UTC second at which the offset of `high` applies."""
    target = high.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == target:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)
