"""Checking definition folders with `check_paths` and no database connection."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from shared.golive import check_paths
from tests.support import ROOT, write_definitions

WELCOME = ROOT / "examples" / "welcome"


def test_welcome_example_ready_to_go_live() -> None:
    outcome, models = check_paths(
        [WELCOME], None, for_go_live=True, now=datetime(2027, 1, 1, tzinfo=UTC)
    )
    assert outcome.problems == []
    assert sorted(type(model).__name__ for model in models) == [
        "ContentSettings",
        "Email",
        "Journey",
        "Segment",
    ]


def test_welcome_example_after_end_rejected() -> None:
    outcome, _ = check_paths(
        [WELCOME], None, for_go_live=True, now=datetime(2031, 1, 1, tzinfo=UTC)
    )
    assert len(outcome.errors) == 1, outcome.errors
    assert (
        "end 2030-12-31 18:00 Europe/Berlin has already passed"
        in outcome.errors[0].message
    )


def test_draft_email_stops_go_live(tmp_path: Path) -> None:
    write_definitions(tmp_path, emails={"hello": "draft"})
    outcome, _ = check_paths(
        [tmp_path], None, for_go_live=True, now=datetime(2027, 1, 1, tzinfo=UTC)
    )
    assert len(outcome.errors) == 1, outcome.errors
    assert outcome.errors[0].tile == "send-hello"
    assert (
        "email refers to email 'hello', which is not published"
        in outcome.errors[0].message
    )


def test_draft_email_passes_plain_check(tmp_path: Path) -> None:
    write_definitions(tmp_path, emails={"hello": "draft"})
    outcome, _ = check_paths(
        [tmp_path], None, for_go_live=False, now=datetime(2027, 1, 1, tzinfo=UTC)
    )
    assert outcome.problems == []


def test_empty_folder_reported(tmp_path: Path) -> None:
    outcome, models = check_paths(
        [tmp_path], None, for_go_live=False, now=datetime(2027, 1, 1, tzinfo=UTC)
    )
    assert models == []
    assert [problem.message for problem in outcome.problems] == ["no definitions found"]
