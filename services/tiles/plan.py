"""A published journey version as the tiles walk it: each tile's type, the
tile after it, and the first tile of each of its branches."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import psycopg

from shared.definitions import AUDIENCE_TILE, Journey, branches_of, walk_tiles
from shared.errors import BrokenMessage

QUEUE_FOR_TYPE = {
    "audience": "tile.audience",
    "email": "tile.email",
    "wait": "tile.wait",
    "condition": "tile.condition",
    "split": "tile.split",
    "exit": "tile.exit",
}
ACTOR_FOR_TYPE = {kind: f"{kind}_tile" for kind in QUEUE_FOR_TYPE}


@dataclass(frozen=True)
class JourneyPlan:
    """One published version of a journey, as the tiles need it.

    `next_tiles` maps a tile to the one after it, or None where its list
    ends, which ends the contact's journey. `branch_heads` maps a condition
    or split tile to the first tile of each branch, or None for an empty one.
    """

    journey_id: int
    name: str
    version: int
    definition: Journey
    tiles: dict[str, Any]
    next_tiles: dict[str, str | None]
    branch_heads: dict[str, dict[str, str | None]]

    def tile_type(self, tile_id: str) -> str:
        if tile_id == AUDIENCE_TILE:
            return "audience"
        if tile_id not in self.tiles:
            raise BrokenMessage(
                f"journey {self.name!r} version {self.version} has no tile {tile_id!r}"
            )
        return str(self.tiles[tile_id].type)

    def after(self, tile_id: str, branch: str | None = None) -> str | None:
        """Return the tile a contact goes to from `tile_id`, down `branch` if given."""
        if branch is None:
            return self.next_tiles.get(tile_id)
        heads = self.branch_heads.get(tile_id, {})
        if branch not in heads:
            raise BrokenMessage(f"tile {tile_id!r} has no branch {branch!r}")
        return heads[branch]


_plans: dict[tuple[int, int], JourneyPlan] = {}
_plans_lock = threading.Lock()


def load_plan(conn: psycopg.Connection, journey_id: int, version: int) -> JourneyPlan:
    """Return a journey version's plan; versions never change, so it is cached."""
    key = (journey_id, version)
    with _plans_lock:
        if key in _plans:
            return _plans[key]
    row = conn.execute(
        "SELECT j.name, v.definition FROM journey_versions v"
        " JOIN journeys j ON j.id = v.journey_id"
        " WHERE v.journey_id = %s AND v.version = %s",
        key,
    ).fetchone()
    if row is None:
        raise BrokenMessage(f"journey {journey_id} has no version {version}")
    plan = build_plan(journey_id, row[0], version, Journey.model_validate(row[1]))
    with _plans_lock:
        _plans[key] = plan
    return plan


def build_plan(
    journey_id: int, name: str, version: int, definition: Journey
) -> JourneyPlan:
    next_tiles: dict[str, str | None] = {}
    branch_heads: dict[str, dict[str, str | None]] = {}
    first = definition.tiles[0].id if definition.tiles else None
    next_tiles[AUDIENCE_TILE] = first
    _link(definition.tiles, next_tiles, branch_heads)
    tiles = {tile.id: tile for tile in walk_tiles(definition.tiles)}
    return JourneyPlan(
        journey_id, name, version, definition, tiles, next_tiles, branch_heads
    )


def _link(
    tiles: list[Any],
    next_tiles: dict[str, str | None],
    branch_heads: dict[str, dict[str, str | None]],
) -> None:
    for position, tile in enumerate(tiles):
        following = tiles[position + 1].id if position + 1 < len(tiles) else None
        branches = branches_of(tile)
        ends_here = tile.type == "exit" or bool(branches)
        next_tiles[tile.id] = None if ends_here else following
        if branches:
            branch_heads[tile.id] = {
                name: (branch[0].id if branch else None) for name, branch in branches
            }
        for _, branch in branches:
            _link(branch, next_tiles, branch_heads)
