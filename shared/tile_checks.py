"""Checks of a journey's tile graph: ids, reachability, branches, and the
settings of wait, condition and split tiles."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from shared.definitions import (
    AUDIENCE_TILE,
    ConditionTile,
    EmailTile,
    ExitTile,
    InteractionCondition,
    Journey,
    SplitTile,
    WaitTile,
    branches_of,
    parse_until,
    walk_tiles,
)
from shared.errors import DefinitionError
from shared.windows import load_zone, to_utc

# (tile id, message) pairs; the caller places them in their document.
TileProblems = Iterator[tuple[str, str]]


def check_tile_graph(journey: Journey, contact_fields: set[str] | None) -> TileProblems:
    tiles = walk_tiles(journey.tiles)
    for tile_id, count in Counter(tile.id for tile in tiles).items():
        if count > 1:
            yield tile_id, f"tile id is used {count} times; give each tile its own id"
    for tile in tiles:
        if tile.id == AUDIENCE_TILE:
            yield (
                tile.id,
                f"tile id {AUDIENCE_TILE!r} is reserved for the audience tile",
            )
        if isinstance(tile, SplitTile):
            yield from _check_split(tile)
        elif isinstance(tile, WaitTile):
            yield from _check_wait(tile, journey)
        elif isinstance(tile, ConditionTile) and not isinstance(
            tile.if_, InteractionCondition
        ):
            yield from _check_data_condition(tile, contact_fields)
    yield from _check_paths(journey.tiles, earlier_emails=frozenset())


def _check_paths(tiles: list[Any], earlier_emails: frozenset[str]) -> TileProblems:
    """Walk every path: unreachable tiles, and conditions on email tiles that
    the contact cannot have passed."""
    emails = set(earlier_emails)
    for position, tile in enumerate(tiles):
        watches = isinstance(tile, ConditionTile) and isinstance(
            tile.if_, InteractionCondition
        )
        if watches and tile.if_.email not in emails:
            yield (
                tile.id,
                (
                    f"the condition refers to email tile {tile.if_.email!r}, "
                    "which is not earlier on this tile's path; "
                    "point it at an email tile that every contact "
                    "reaching this condition has passed"
                ),
            )
        if isinstance(tile, EmailTile):
            emails.add(tile.id)
        for _, branch in branches_of(tile):
            yield from _check_paths(branch, frozenset(emails))
        if isinstance(tile, ExitTile | ConditionTile | SplitTile):
            yield from _unreachable_after(tile, tiles[position + 1 :])
            return


def _unreachable_after(tile: Any, rest: list[Any]) -> TileProblems:
    if isinstance(tile, ExitTile):
        why = (
            f"exit tile {tile.id!r} comes before it; remove the exit or move this tile"
        )
    else:
        why = (
            f"{tile.type} tile {tile.id!r} comes before it and each of its branches "
            "ends the journey; move this tile into the branches"
        )
    for unreachable in rest:
        yield unreachable.id, f"cannot be reached because {why}"


def _check_split(tile: SplitTile) -> TileProblems:
    names = Counter(branch.name for branch in tile.branches)
    for name, count in names.items():
        if count > 1 or name == "remaining":
            yield tile.id, f"branch name {name!r} is used twice or reserved; rename it"
    by_percent = [b for b in tile.branches if b.percent is not None]
    by_count = [b for b in tile.branches if b.count is not None]
    if any(b.percent is not None and b.count is not None for b in tile.branches) or (
        by_percent and by_count
    ):
        yield tile.id, "give every branch either 'percent' or 'count', not both kinds"
        return
    if len(by_percent) + len(by_count) != len(tile.branches):
        yield tile.id, "every branch needs a 'percent' or a 'count'"
        return
    if by_percent:
        total = sum(b.percent or 0 for b in by_percent)
        if abs(total - 100) > 1e-9:
            yield (
                tile.id,
                (
                    f"branch percentages add up to {total:g}, not 100; change them so "
                    "that every contact has a branch"
                ),
            )
        if tile.remaining is not None:
            yield tile.id, "'remaining' only goes with 'count' branches; remove it"
    elif tile.remaining is None:
        yield (
            tile.id,
            (
                "a split by count needs a 'remaining' branch for the contacts after "
                "the counts are reached"
            ),
        )


def _check_wait(tile: WaitTile, journey: Journey) -> TileProblems:
    if tile.until is None:
        return
    until = parse_until(tile.until)
    if not isinstance(until, datetime):
        return  # a time of day: every day has one, the gap hour aside
    try:
        zone = load_zone(journey.timezone)
        to_utc(
            until,
            zone,
            ambiguous=journey.ambiguous_time,
            nonexistent=journey.nonexistent_time,
        )
    except DefinitionError as error:
        yield tile.id, f"until: {error}"
        return
    if until >= journey.end:
        yield (
            tile.id,
            (
                f"waits until {tile.until}, at or after the journey's end "
                f"{journey.end:%Y-%m-%d %H:%M}; no contact would leave this wait"
            ),
        )


def _check_data_condition(
    tile: ConditionTile, contact_fields: set[str] | None
) -> TileProblems:
    from shared.checks import condition_problem

    condition = tile.if_
    if tile.within is not None:
        yield (
            tile.id,
            (
                "'within' only applies to conditions on email interactions; "
                "a condition on contact data is decided when the contact arrives, "
                "so remove 'within'"
            ),
        )
    message = condition_problem(condition.op, condition.value)  # type: ignore[union-attr]
    if message:
        yield tile.id, message
    field = condition.field  # type: ignore[union-attr]
    if contact_fields and field not in contact_fields:
        yield (
            tile.id,
            (
                f"contacts have no field {field!r}; known fields are "
                + ", ".join(sorted(contact_fields))
            ),
        )
