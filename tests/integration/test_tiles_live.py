"""Wait, condition and split tiles in a live journey on RabbitMQ, with the
processes' clock moved through journey time by an offset file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.simulation.report import contact_paths
from shared.contacts import import_contacts
from shared.golive import go_live_paths
from tests.support import (
    ROOT,
    recipients,
    simple_contacts,
    step_counts,
    wait_until,
    write_contacts,
    write_definitions,
)

pytestmark = pytest.mark.integration

EMAILS = {"first": "live", "second": "live", "yes-mail": "live", "no-mail": "live"}
C04_TILES = [
    {"id": "email-1", "type": "email", "email": "first"},
    {"id": "wait-2h", "type": "wait", "duration": "2h"},
    {"id": "email-2", "type": "email", "email": "second"},
]
C10_TILES = [
    {"id": "email-e", "type": "email", "email": "first"},
    {
        "id": "opened-e",
        "type": "condition",
        "if": {"email": "email-e", "event": "opened"},
        "within": "2d",
        "yes": [{"id": "email-y", "type": "email", "email": "yes-mail"}],
        "no": [{"id": "email-n", "type": "email", "email": "no-mail"}],
    },
]


def _go_live(db, path, now: datetime) -> None:
    outcome = go_live_paths(db, [path], now)
    assert not outcome.errors, [str(p) for p in outcome.errors]


def _sent(db, tile: str) -> dict[str, datetime]:
    rows = db.execute(
        "SELECT c.contact_id, s.finished_at FROM sends s JOIN contacts c ON c.id = s.contact"
        " WHERE s.tile = %s AND s.state = 'accepted'",
        (tile,),
    ).fetchall()
    return dict(rows)


def _pixel_url(sink, address: str, subject_part: str = "") -> str:
    for message in sink.handler.parsed():
        if message["To"].addresses[0].addr_spec == address:
            html = message.get_body(("html",)).get_content()
            match = re.search(r'<img src="([^"]+/o/[\w-]+)"', html)
            assert match, html
            return match.group(1)
    raise AssertionError(f"no email to {address}")


def _simplified(payload: dict) -> tuple[dict, list]:
    """Each contact's (tile, state, outcome) steps and the tile counts, the
    parts that a simulation and a live run must share."""
    paths = {
        item["contact"]: [(s["tile"], s["state"], s["outcome"]) for s in item["steps"]]
        for item in payload["contacts"]
    }
    return paths, payload["tiles"]


def _simulate(path, contacts, interactions, tmp_path) -> tuple[dict, list]:
    contacts_file = write_contacts(tmp_path / "simulated-contacts.csv", contacts)
    interactions_file = write_contacts(tmp_path / "interactions.csv", interactions)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "simulate",
            str(path),
            "--contacts",
            str(contacts_file),
            "--interactions",
            str(interactions_file),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return _simplified(json.loads(result.stdout)["journeys"][0])


def _live(db) -> tuple[dict, list]:
    journey_id = db.execute("SELECT id FROM journeys").fetchone()[0]
    return _simplified(contact_paths(db, journey_id))


def _settled(db) -> bool:
    row = db.execute(
        "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM steps s"
        " WHERE s.state = 'in_progress' AND NOT EXISTS (SELECT 1 FROM timers t"
        " WHERE t.journey_id = s.journey_id AND t.tile = s.tile AND t.contact = s.contact))"
    ).fetchone()
    return row == (0, 0)


@pytest.mark.slow
def test_window_and_wait_follow_journey_time(
    db, processes, smtp_sink, virtual_time, tmp_path
):
    """Berlin 09:00 to 12:00; email, wait 2 h, email. c1 is in the segment
    from 08:59, c2 joins at 11:00 and its wait ends after the end."""
    start = datetime(2027, 5, 3, 7, 0, tzinfo=UTC)
    virtual_time.set(start - timedelta(minutes=1))
    import_contacts(db, write_contacts(tmp_path / "c1.csv", simple_contacts(1)))
    path = write_definitions(
        tmp_path,
        start="2027-05-03 09:00",
        end="2027-05-03 12:00",
        timezone="Europe/Berlin",
        emails=EMAILS,
        tiles=C04_TILES,
    )
    _go_live(db, path, virtual_time.now())
    processes.start_workers(processes=1, threads=4)
    processes.start_coordinator()
    processes.start_tracking()

    time.sleep(3)
    assert smtp_sink.handler.messages == []
    virtual_time.set(start)
    wait_until(
        lambda: len(smtp_sink.handler.messages) == 1, 30, what="c1's first email"
    )
    assert _sent(db, "email-1")["c1"] - start < timedelta(seconds=30)

    virtual_time.set(start + timedelta(hours=2))
    import_contacts(db, write_contacts(tmp_path / "c2.csv", simple_contacts(2)[1:]))
    wait_until(lambda: len(smtp_sink.handler.messages) == 3, 30, what="three emails")
    assert _sent(db, "email-2")["c1"] >= start + timedelta(hours=2)
    assert set(_sent(db, "email-1")) == {"c1", "c2"}

    virtual_time.set(start + timedelta(hours=3))
    wait_until(
        lambda: db.execute("SELECT status FROM journeys").fetchone() == ("completed",),
        30,
        what="the end",
    )
    entry = db.execute(
        "SELECT e.state, e.reason FROM entries e JOIN contacts c ON c.id = e.contact"
        " WHERE c.contact_id = 'c2'"
    ).fetchone()
    assert entry == ("stopped", "journey_ended")
    waiting = db.execute(
        "SELECT count(*) FROM steps WHERE tile = 'wait-2h' AND state = 'in_progress'"
    ).fetchone()
    assert waiting == (0,)

    virtual_time.set(start + timedelta(hours=3, minutes=30))
    pixel = httpx.get(_pixel_url(smtp_sink, "c1@example.com"), timeout=10)
    assert pixel.status_code == 200
    time.sleep(2)
    assert len(smtp_sink.handler.messages) == 3
    assert db.execute("SELECT count(*) FROM timers").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)

    simulated = _simulate(
        path,
        [
            {**simple_contacts(2)[0], "joined_at": ""},
            {**simple_contacts(2)[1], "joined_at": "2027-05-03T11:00:00+02:00"},
        ],
        [
            {
                "contact": "c1",
                "tile": "email-1",
                "kind": "opened",
                "at": "2027-05-03T12:30:00+02:00",
            }
        ],
        tmp_path,
    )
    assert simulated == _live(db)


@pytest.mark.slow
def test_condition_on_open_takes_one_branch_each(
    db, processes, smtp_sink, virtual_time, tmp_path
):
    """c1 opens after 1 hour, c2 never, c3 after 3 days: yes=1 (at the open),
    no=2 (at the 2-day timeout), and the late open changes nothing."""
    start = datetime(2027, 6, 1, 9, 0, tzinfo=UTC)
    virtual_time.set(start)
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(3)))
    path = write_definitions(
        tmp_path,
        start="2027-06-01 09:00",
        end="2027-07-01 09:00",
        emails=EMAILS,
        tiles=C10_TILES,
    )
    _go_live(db, path, virtual_time.now())
    processes.start_workers(processes=1, threads=4)
    processes.start_coordinator()
    processes.start_tracking()
    wait_until(lambda: len(smtp_sink.handler.messages) == 3, 30, what="email E")

    virtual_time.set(start + timedelta(hours=1))
    assert (
        httpx.get(_pixel_url(smtp_sink, "c1@example.com"), timeout=10).status_code
        == 200
    )
    wait_until(lambda: "c1" in _sent(db, "email-y"), 30, what="c1's yes email")
    assert _sent(db, "email-y")["c1"] < start + timedelta(hours=1, minutes=1)

    virtual_time.pass_timers(db, "condition", 2)
    wait_until(lambda: len(_sent(db, "email-n")) == 2, 30, what="two no emails")
    virtual_time.set(start + timedelta(days=3))
    assert (
        httpx.get(_pixel_url(smtp_sink, "c3@example.com"), timeout=10).status_code
        == 200
    )
    time.sleep(3)

    assert set(_sent(db, "email-y")) == {"c1"}
    assert set(_sent(db, "email-n")) == {"c2", "c3"}
    branches = step_counts(db, "opened-e")
    assert branches == {"yes": 1, "no": 2}
    assert (
        sum(branches.values())
        == db.execute("SELECT count(*) FROM steps WHERE tile = 'opened-e'").fetchone()[
            0
        ]
    )
    assert Counter(recipients(smtp_sink)) == {f"c{n}@example.com": 2 for n in (1, 2, 3)}

    simulated = _simulate(
        path,
        simple_contacts(3),
        [
            {
                "contact": "c1",
                "tile": "email-e",
                "kind": "opened",
                "at": "2027-06-01T10:00:00Z",
            },
            {
                "contact": "c3",
                "tile": "email-e",
                "kind": "opened",
                "at": "2027-06-04T09:00:00Z",
            },
        ],
        tmp_path,
    )
    assert simulated == _live(db)


@pytest.mark.slow
def test_unsubscribe_during_wait_leaves_once(
    db, processes, smtp_sink, virtual_time, tmp_path
):
    """c1 unsubscribes with the one-click link while it waits; c2 was
    unsubscribed before it entered; c3 stays."""
    start = datetime(2027, 6, 1, 9, 0, tzinfo=UTC)
    virtual_time.set(start)
    contacts = simple_contacts(3)
    contacts[1]["unsubscribed"] = "true"
    contacts[0]["unsubscribed"] = contacts[2]["unsubscribed"] = "false"
    import_contacts(db, write_contacts(tmp_path / "c.csv", contacts))
    tiles = [
        {"id": "email-1", "type": "email", "email": "first"},
        {"id": "wait-1d", "type": "wait", "duration": "1d"},
        {"id": "email-2", "type": "email", "email": "second"},
    ]
    path = write_definitions(
        tmp_path,
        start="2027-06-01 09:00",
        end="2027-07-01 09:00",
        emails=EMAILS,
        tiles=tiles,
    )
    _go_live(db, path, virtual_time.now())
    processes.start_workers(processes=1, threads=4)
    processes.start_coordinator()
    tracking = f"http://127.0.0.1:{processes.env['JOURNEYS_TRACKING_PORT']}"
    processes.start_tracking()
    wait_until(
        lambda: len(smtp_sink.handler.messages) == 2, 30, what="two first emails"
    )

    message = next(
        m
        for m in smtp_sink.handler.parsed()
        if m["To"].addresses[0].addr_spec == "c1@example.com"
    )
    link = re.match(r"<(https://[^>]+)>", str(message["List-Unsubscribe"])).group(1)
    token = link.split("token=", 1)[1]
    answer = httpx.post(
        f"{tracking}/unsubscribe",
        params={"token": token},
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert answer.status_code == 200

    virtual_time.pass_timers(db, "wait", 2)
    wait_until(
        lambda: (
            _settled(db)
            and db.execute("SELECT count(*) FROM timers").fetchone() == (0,)
        ),
        30,
        what="the wait",
    )
    assert Counter(recipients(smtp_sink)) == {"c1@example.com": 1, "c3@example.com": 2}
    reasons = dict(
        db.execute(
            "SELECT c.contact_id, e.reason FROM entries e JOIN contacts c ON c.id = e.contact"
        ).fetchall()
    )
    assert reasons == {"c1": "unsubscribed", "c2": "unsubscribed", "c3": None}
    assert db.execute(
        "SELECT count(*) FROM steps WHERE tile = 'wait-1d' AND state = 'in_progress'"
    ).fetchone() == (0,)
    for queue in ("tile.email", "tile.wait", "tile.email.DQ", "tile.wait.DQ"):
        assert processes.queue_depth(queue) == 0, queue


def test_split_branches_add_up_to_entered(db, processes, smtp_sink, tmp_path):
    tiles = [
        {
            "id": "ab",
            "type": "split",
            "branches": [
                {
                    "name": "a",
                    "percent": 30,
                    "tiles": [{"id": "mail-a", "type": "email", "email": "first"}],
                },
                {
                    "name": "b",
                    "percent": 70,
                    "tiles": [{"id": "mail-b", "type": "email", "email": "second"}],
                },
            ],
        }
    ]
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(200)))
    _go_live(
        db, write_definitions(tmp_path, emails=EMAILS, tiles=tiles), datetime.now(UTC)
    )
    processes.start_workers(processes=2, threads=4)
    processes.start_coordinator()
    wait_until(lambda: len(smtp_sink.handler.messages) == 200, 60, what="200 emails")

    branches = step_counts(db, "ab")
    entered = db.execute("SELECT count(*) FROM steps WHERE tile = 'ab'").fetchone()[0]
    assert sum(branches.values()) == entered == 200
    assert 30 <= branches["a"] <= 90  # 60 expected; a fixed hash keeps this stable
    assert step_counts(db, "mail-a") == {"sent": branches["a"]}
    assert step_counts(db, "mail-b") == {"sent": branches["b"]}


def test_dropped_connection_while_waiting_duplicates_nothing(
    db, processes, smtp_sink, tmp_path
):
    """Wait 15 s then email, 100 contacts; the consumers' connections are
    closed while the contacts wait, and duplicates are published on purpose."""
    tiles = [
        {"id": "wait-15s", "type": "wait", "duration": "15s"},
        {"id": "mail", "type": "email", "email": "first"},
    ]
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(100)))
    _go_live(
        db, write_definitions(tmp_path, emails=EMAILS, tiles=tiles), datetime.now(UTC)
    )
    processes.start_workers(processes=1, threads=16)
    processes.start_coordinator()
    wait_until(
        lambda: db.execute("SELECT count(*) FROM timers").fetchone() == (100,),
        30,
        what="100 waiting",
    )
    vhost = processes.broker_url.rsplit("/", 1)[1]
    subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            "close_all_connections",
            "-p",
            vhost,
            "test closes consumers",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    journey_id, version = db.execute("SELECT id, version FROM journeys").fetchone()
    contacts = [row[0] for row in db.execute("SELECT id FROM contacts")]
    processes.publish(
        "tile.wait",
        "wait_tile",
        [
            {
                "journey_id": journey_id,
                "version": version,
                "tile": "wait-15s",
                "contacts": contacts,
            }
        ]
        * 3,
    )
    wait_until(lambda: len(smtp_sink.handler.messages) >= 100, 60, what="100 emails")
    processes.publish(
        "tile.email",
        "email_tile",
        [
            {
                "journey_id": journey_id,
                "version": version,
                "tile": "mail",
                "contacts": contacts,
            }
        ]
        * 2,
    )
    wait_until(
        lambda: processes.queue_depth("tile.email") == 0, 30, what="duplicates consumed"
    )
    time.sleep(2)

    assert Counter(recipients(smtp_sink)) == {
        f"c{n}@example.com": 1 for n in range(1, 101)
    }
    assert step_counts(db, "mail") == {"sent": 100}
    assert step_counts(db, "wait-15s") == {"completed": 100}


@pytest.mark.slow
def test_hard_bounce_during_wait_leaves_once(
    db, processes, smtp_sink, virtual_time, tmp_path
):
    """A bounce reported on the events queue while c1 waits: no second email,
    c1 leaves once with the reason 'bounced', c2 goes on."""
    start = datetime(2027, 6, 1, 9, 0, tzinfo=UTC)
    virtual_time.set(start)
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(2)))
    tiles = [
        {"id": "email-1", "type": "email", "email": "first"},
        {"id": "wait-1d", "type": "wait", "duration": "1d"},
        {"id": "email-2", "type": "email", "email": "second"},
    ]
    path = write_definitions(
        tmp_path,
        start="2027-06-01 09:00",
        end="2027-07-01 09:00",
        emails=EMAILS,
        tiles=tiles,
    )
    _go_live(db, path, virtual_time.now())
    processes.start_workers(processes=1, threads=4)
    processes.start_coordinator()
    wait_until(
        lambda: len(smtp_sink.handler.messages) == 2, 30, what="two first emails"
    )

    message_id = db.execute(
        "SELECT message_id FROM sends WHERE address = 'c1@example.com'"
    ).fetchone()[0]
    event = {
        "kind": "bounce",
        "message_id": message_id,
        "hard": True,
        "at": virtual_time.now().isoformat(),
    }
    processes.publish("events.interactions", "interaction_event", [event, event])
    wait_until(
        lambda: (
            db.execute(
                "SELECT bounced_at IS NOT NULL FROM contacts WHERE contact_id = 'c1'"
            ).fetchone()
            == (True,)
        ),
        30,
        what="the bounce recorded",
    )
    virtual_time.pass_timers(db, "wait", 2)
    wait_until(
        lambda: (
            db.execute("SELECT count(*) FROM timers").fetchone() == (0,)
            and _settled(db)
        ),
        30,
        what="the wait",
    )
    time.sleep(1)

    assert Counter(recipients(smtp_sink)) == {"c1@example.com": 1, "c2@example.com": 2}
    reasons = dict(
        db.execute(
            "SELECT c.contact_id, e.reason FROM entries e JOIN contacts c ON c.id = e.contact"
        ).fetchall()
    )
    assert reasons == {"c1": "bounced", "c2": None}
    assert db.execute(
        "SELECT count(*) FROM interactions WHERE kind = 'bounced'"
    ).fetchone() == (1,)
    for queue in ("tile.email", "tile.wait", "tile.email.DQ", "events.interactions"):
        assert processes.queue_depth(queue) == 0, queue
