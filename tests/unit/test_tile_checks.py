"""Checks of wait, condition and split tiles and of paths through branches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from shared.checks import check
from shared.loading import load_documents

BASE = {
    "kind": "journey",
    "name": "j",
    "start": "2027-05-03 09:00",
    "end": "2027-06-03 09:00",
    "timezone": "Europe/Berlin",
    "content_settings": "cs",
    "audience": {"segment": "s"},
}


def problems_of(tmp_path: Path, tiles: list[dict[str, Any]]) -> list[str]:
    path = tmp_path / "j.yaml"
    path.write_text(yaml.safe_dump({**BASE, "tiles": tiles}), encoding="utf-8")
    documents, file_problems = load_documents([path])
    found = file_problems + check(documents)
    return [str(problem) for problem in found if "not defined" not in problem.message]


def email(tile_id: str) -> dict[str, str]:
    return {"id": tile_id, "type": "email", "email": "m"}


def split(branches: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": "ab", "type": "split", "branches": branches, **extra}


def test_split_percentages_must_add_to_100(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path, [split([{"name": "a", "percent": 50}, {"name": "b", "percent": 40}])]
    )
    assert len(found) == 1
    assert "tile 'ab'" in found[0]
    assert "add up to 90, not 100" in found[0]


def test_split_by_count_needs_remaining(tmp_path: Path) -> None:
    found = problems_of(tmp_path, [split([{"name": "a", "count": 10}])])
    assert any("needs a 'remaining' branch" in problem for problem in found)


def test_split_cannot_mix_percent_and_count(tmp_path: Path) -> None:
    branches = [{"name": "a", "percent": 50}, {"name": "b", "count": 5}]
    found = problems_of(tmp_path, [split(branches, remaining=[])])
    assert any("not both kinds" in problem for problem in found)


def test_valid_split_accepted(tmp_path: Path) -> None:
    branches = [
        {"name": "a", "percent": 50, "tiles": [email("ea")]},
        {"name": "b", "percent": 50},
    ]
    assert problems_of(tmp_path, [split(branches)]) == []


def test_condition_on_later_email_rejected(tmp_path: Path) -> None:
    condition = {
        "id": "c",
        "type": "condition",
        "if": {"email": "late", "event": "opened"},
        "within": "2d",
        "yes": [email("late")],
    }
    found = problems_of(tmp_path, [condition])
    assert len(found) == 1
    assert "tile 'c'" in found[0]
    assert "not earlier on this tile's path" in found[0]


def test_condition_on_email_in_other_branch_rejected(tmp_path: Path) -> None:
    inner = {
        "id": "c2",
        "type": "condition",
        "if": {"email": "y1", "event": "clicked"},
        "within": "1d",
    }
    outer = {
        "id": "c1",
        "type": "condition",
        "if": {"field": "country", "op": "eq", "value": "DE"},
        "yes": [email("y1")],
        "no": [inner],
    }
    found = problems_of(tmp_path, [outer])
    assert any("tile 'c2'" in problem and "not earlier" in problem for problem in found)


def test_condition_on_earlier_email_accepted(tmp_path: Path) -> None:
    condition = {
        "id": "c",
        "type": "condition",
        "if": {"email": "first", "event": "opened"},
        "within": "2d",
        "yes": [email("y")],
        "no": [email("n")],
    }
    assert problems_of(tmp_path, [email("first"), condition]) == []


def test_interaction_condition_needs_within(tmp_path: Path) -> None:
    condition = {
        "id": "c",
        "type": "condition",
        "if": {"email": "first", "event": "opened"},
    }
    found = problems_of(tmp_path, [email("first"), condition])
    assert any("needs 'within'" in problem for problem in found)


def test_data_condition_rejects_within(tmp_path: Path) -> None:
    condition = {
        "id": "c",
        "type": "condition",
        "if": {"field": "x", "op": "exists"},
        "within": "1d",
    }
    found = problems_of(tmp_path, [condition])
    assert any("'within' only applies" in problem for problem in found)


def test_tile_after_branching_tile_unreachable(tmp_path: Path) -> None:
    condition = {"id": "c", "type": "condition", "if": {"field": "x", "op": "exists"}}
    found = problems_of(tmp_path, [condition, email("after")])
    assert len(found) == 1
    assert "tile 'after'" in found[0]
    assert "move this tile into the branches" in found[0]


def test_wait_needs_duration_or_until(tmp_path: Path) -> None:
    found = problems_of(tmp_path, [{"id": "w", "type": "wait"}])
    assert any("exactly one of 'duration' or 'until'" in problem for problem in found)


def test_wait_with_bad_duration_rejected(tmp_path: Path) -> None:
    found = problems_of(tmp_path, [{"id": "w", "type": "wait", "duration": "two days"}])
    assert any("invalid duration 'two days'" in problem for problem in found)


def test_wait_until_after_end_rejected(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path, [{"id": "w", "type": "wait", "until": "2027-07-01 09:00"}]
    )
    assert any("at or after the journey's end" in problem for problem in found)


def test_wait_until_in_spring_gap_rejected(tmp_path: Path) -> None:
    body = {**BASE, "start": "2027-03-01 09:00", "end": "2027-04-01 09:00"}
    path = tmp_path / "j.yaml"
    tiles = [{"id": "w", "type": "wait", "until": "2027-03-28 02:30"}]
    path.write_text(yaml.safe_dump({**body, "tiles": tiles}), encoding="utf-8")
    documents, _ = load_documents([path])
    found = [str(problem) for problem in check(documents)]
    assert any(
        "tile 'w'" in problem and "does not exist" in problem for problem in found
    )


def test_yes_and_no_stay_branch_names(tmp_path: Path) -> None:
    path = tmp_path / "j.yaml"
    path.write_text(
        "kind: journey\nname: j\nstart: 2027-05-03 09:00\nend: 2027-06-03 09:00\n"
        "timezone: UTC\ncontent_settings: cs\naudience: {segment: s}\ntiles:\n"
        "  - id: c\n    type: condition\n    if: {field: x, op: exists}\n"
        "    yes: [{id: y, type: exit}]\n    no: [{id: n, type: exit}]\n",
        encoding="utf-8",
    )
    documents, _ = load_documents([path])
    assert documents[0].problems == []
    assert [tile.id for tile in documents[0].model.tiles[0].yes] == ["y"]
