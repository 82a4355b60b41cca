"""Operating a published journey: new versions, locked fields, stopping and
extending the end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from shared.contacts import import_contacts
from shared.golive import go_live_paths
from tests.support import (
    ROOT,
    simple_contacts,
    step_counts,
    wait_until,
    write_contacts,
    write_definitions,
)

pytestmark = pytest.mark.integration

EMAILS = {"first": "live", "second": "live", "third": "live"}
START = datetime(2027, 6, 1, 9, 0, tzinfo=UTC)


def _tiles(last_email: str) -> list[dict]:
    return [
        {"id": "email-1", "type": "email", "email": "first"},
        {"id": "wait-1d", "type": "wait", "duration": "1d"},
        {"id": f"email-{last_email}", "type": "email", "email": last_email},
    ]


def _cli(processes, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env=processes.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _definitions(tmp_path, **changes):
    settings = {
        "start": "2027-06-01 09:00",
        "end": "2027-07-01 09:00",
        "emails": EMAILS,
    }
    settings.update(changes)
    return write_definitions(tmp_path, **settings)


@pytest.mark.slow
def test_contacts_keep_the_version_they_entered(
    db, processes, smtp_sink, virtual_time, tmp_path
):
    virtual_time.set(START)
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(3)))
    assert not go_live_paths(
        db, [_definitions(tmp_path, tiles=_tiles("second"))], virtual_time.now()
    ).errors
    processes.start_workers(processes=1, threads=4)
    processes.start_coordinator()
    wait_until(
        lambda: db.execute("SELECT count(*) FROM timers").fetchone() == (3,),
        30,
        what="3 waiting",
    )

    v2 = _definitions(tmp_path / "v2", tiles=_tiles("third"))
    outcome = go_live_paths(db, [v2], virtual_time.now())
    assert not outcome.errors, [str(p) for p in outcome.errors]
    assert outcome.journeys[0].version == 2
    import_contacts(db, write_contacts(tmp_path / "late.csv", simple_contacts(4)[3:]))
    wait_until(
        lambda: db.execute("SELECT count(*) FROM timers").fetchone() == (4,),
        30,
        what="4 waiting",
    )

    virtual_time.set(START + timedelta(days=1, minutes=1))
    wait_until(lambda: len(smtp_sink.handler.messages) == 8, 60, what="eight emails")
    time.sleep(1)
    assert step_counts(db, "email-second") == {"sent": 3}
    assert step_counts(db, "email-third") == {"sent": 1}
    status = json.loads(_cli(processes, "status", "test-journey", "--json").stdout)
    versions = {item["version"]: item["entered"] for item in status["versions"]}
    assert versions == {1: 3, 2: 1}
    assert {tile["id"] for tile in status["tiles"]} >= {"email-second", "email-third"}


def test_locked_fields_cannot_change(db, tmp_path):
    assert not go_live_paths(
        db, [_definitions(tmp_path, tiles=_tiles("second"))], START
    ).errors
    changed = _definitions(
        tmp_path / "changed", tiles=_tiles("second"), timezone="Europe/Berlin"
    )
    messages = [str(p) for p in go_live_paths(db, [changed], START).errors]
    assert any("timezone cannot change on a published journey" in m for m in messages)
    assert db.execute("SELECT count(*) FROM journey_versions").fetchone() == (1,)


def test_stop_then_extend_resumes_processing(
    db, processes, smtp_sink, virtual_time, tmp_path
):
    virtual_time.set(START)
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(2)))
    tiles = [{"id": "email-1", "type": "email", "email": "first"}]
    assert not go_live_paths(
        db, [_definitions(tmp_path, tiles=tiles)], virtual_time.now()
    ).errors
    processes.start_workers(processes=1, threads=2)
    processes.start_coordinator()
    wait_until(lambda: len(smtp_sink.handler.messages) == 2, 30, what="two emails")

    stopped = _cli(processes, "stop", "test-journey")
    assert stopped.returncode == 0, stopped.stderr
    import_contacts(db, write_contacts(tmp_path / "more.csv", simple_contacts(3)[2:]))
    time.sleep(2)
    assert len(smtp_sink.handler.messages) == 2

    later = _definitions(tmp_path / "later", tiles=tiles, end="2027-07-15 09:00")
    outcome = go_live_paths(db, [later], virtual_time.now())
    assert not outcome.errors, [str(p) for p in outcome.errors]
    wait_until(
        lambda: len(smtp_sink.handler.messages) == 3,
        30,
        what="the third email after resuming",
    )
    assert db.execute("SELECT status FROM journeys").fetchone() == ("live",)


def test_extension_refused_past_thirty_days(db, tmp_path):
    tiles = [{"id": "email-1", "type": "email", "email": "first"}]
    assert not go_live_paths(db, [_definitions(tmp_path, tiles=tiles)], START).errors
    db.execute("UPDATE journeys SET status = 'completed'")
    later = _definitions(tmp_path / "later", tiles=tiles, end="2027-09-01 09:00")
    messages = [
        str(p) for p in go_live_paths(db, [later], START + timedelta(days=61)).errors
    ]
    assert any(
        "more than 30 days ago, so it can no longer be extended" in m for m in messages
    )
