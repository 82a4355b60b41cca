"""The email tile's send loop, run in this process against PostgreSQL and an
SMTP sink on loopback: each reply is committed with the next contact's
'sending' record, and a batch leaves no lock behind."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest
import yaml
from psycopg.types.json import Jsonb

from services.coordinator.loop import tick
from services.tiles import actors  # noqa: F401  (the stub broker needs the actors)
from services.tiles import email as email_tile
from services.tiles.audience import run_audience
from services.tiles.common import ContactMessage
from services.tiles.email import Batch, Reply, Result, SendRun, _recover, run_email
from services.tiles.plan import load_plan
from shared.config import get_settings
from shared.contacts import import_contacts
from shared.db import get_pool
from shared.golive import go_live_paths
from tests.support import (
    HTML,
    recipients,
    step_counts,
    write_contacts,
    write_definitions,
)

pytestmark = pytest.mark.integration

# Bob's three-letter name makes the template divide by zero.
NAMES = ["Anna", "Bob", "Carla", "Dora", "Emil"]


@pytest.fixture
def sink_settings(db, smtp_sink, monkeypatch):
    """Point this process's settings and SMTP sender at the test's sink."""
    monkeypatch.setenv("JOURNEYS_SMTP_URL", smtp_sink.url)
    get_settings.cache_clear()
    monkeypatch.setattr(email_tile, "_senders", None)
    yield smtp_sink
    for sender in email_tile._senders or []:
        sender.close()


def _live_journey(
    db, tmp_path, html: str, addresses: dict[str, str] | None = None
) -> tuple[int, int, list[int]]:
    """Publish a journey whose email has this HTML, with one contact per
    name; `addresses` gives some of them another address than their own."""
    addresses = addresses or {}
    rows = [
        {
            "contact_id": f"c{n}",
            "email": addresses.get(name, f"{name.lower()}@example.com"),
            "firstname": name,
        }
        for n, name in enumerate(NAMES, start=1)
    ]
    import_contacts(db, write_contacts(tmp_path / "c.csv", rows))
    path = write_definitions(tmp_path)
    documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    for document in documents:
        if document["kind"] == "email":
            document["html"] = html
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
    outcome = go_live_paths(db, [path], datetime.now(UTC))
    assert not outcome.errors, [str(p) for p in outcome.errors]
    tick(get_settings())
    journey_id, version = db.execute("SELECT id, version FROM journeys").fetchone()
    contacts = [row[0] for row in db.execute("SELECT id FROM contacts ORDER BY id")]
    run_audience(
        ContactMessage(
            journey_id=journey_id, version=version, tile="audience", contacts=contacts
        )
    )
    return journey_id, version, contacts


def _insert_send(db, journey_id: int, contact: int, state: str) -> int:
    """Write Anna's send record as an earlier attempt left it; return its id."""
    row = db.execute(
        "INSERT INTO sends (journey_id, tile, contact, address, state, started_at)"
        " VALUES (%s, 'send-hello', %s, 'anna@example.com', %s, now())"
        " RETURNING id",
        (journey_id, contact, state),
    ).fetchone()
    return row[0]


def _record_in_thread(
    journey_id: int, version: int, replies: list[Reply], errors: list[BaseException]
) -> threading.Thread:
    """Start a thread that records these replies as a send run's flush()
    does, adding any exception it raises to `errors`."""

    def record() -> None:
        try:
            with get_pool().connection() as conn:
                plan = load_plan(conn, journey_id, version)
                run = SendRun(conn, plan, "send-hello", False, Batch())
                run.pending = list(replies)
                run.flush()
        except BaseException as error:  # reported by the caller's assert
            errors.append(error)

    recorder = threading.Thread(target=record)
    recorder.start()
    return recorder


def _advisory_locks(db) -> int:
    """Count the advisory locks held in this test's database."""
    row = db.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database"
        " WHERE datname = current_database())"
    )
    return row.fetchone()[0]


@pytest.mark.parametrize("connections", [1, 2, 3])
def test_every_reply_recorded_and_no_lock_left(
    db, sink_settings, tmp_path, monkeypatch, connections
):
    """Whatever the number of connections per thread, each contact gets one
    email and one record, and the 'sending' records of each group of one
    email per connection share a transaction."""
    monkeypatch.setenv("JOURNEYS_SMTP_CONNECTIONS_PER_THREAD", str(connections))
    get_settings.cache_clear()
    journey_id, version, contacts = _live_journey(db, tmp_path, HTML)
    message = ContactMessage(
        journey_id=journey_id, version=version, tile="send-hello", contacts=contacts
    )

    results = run_email(message)

    assert +results == {Result.SENT: 5}
    assert sorted(recipients(sink_settings)) == sorted(
        f"{name.lower()}@example.com" for name in NAMES
    )
    states = db.execute("SELECT state, count(*) FROM sends GROUP BY state").fetchall()
    assert states == [("accepted", 5)]
    # A send row was last written by the transaction that recorded its
    # reply, one per group: with two connections, the groups are
    # (Anna, Bob), (Carla, Dora) and (Emil).
    groups = db.execute("SELECT count(DISTINCT xmin::text) FROM sends").fetchone()
    assert groups == (-(-len(NAMES) // connections),)
    assert step_counts(db, "send-hello") == {"sent": 5}
    entries = db.execute("SELECT state, count(*) FROM entries GROUP BY state")
    assert entries.fetchall() == [("completed", 5)]
    assert _advisory_locks(db) == 0

    # The same message again finds every step done and sends nothing.
    assert +run_email(message) == {Result.SKIPPED: 5}
    assert len(recipients(sink_settings)) == 5


def test_render_failure_between_sends_keeps_the_reply_before(
    db, sink_settings, tmp_path
):
    """Bob's email fails to render before any email goes out. He is
    recorded as failed, and the envelope that follows Anna's content is
    Carla's, so the others go out once each."""
    html = HTML + "<p>{{ 12 // (contact.firstname | length - 3) }}</p>"
    journey_id, version, contacts = _live_journey(db, tmp_path, html)

    results = run_email(
        ContactMessage(
            journey_id=journey_id, version=version, tile="send-hello", contacts=contacts
        )
    )

    assert +results == {Result.SENT: 4, Result.FAILED: 1}
    assert "bob@example.com" not in recipients(sink_settings)
    rows = db.execute(
        "SELECT c.firstname, coalesce(s.outcome, s.state), se.state FROM steps s"
        " JOIN contacts c ON c.id = s.contact"
        " LEFT JOIN sends se ON se.contact = s.contact AND se.tile = s.tile"
        " WHERE s.tile = 'send-hello' ORDER BY c.id"
    ).fetchall()
    assert rows == [
        ("Anna", "sent", "accepted"),
        ("Bob", "failed", None),
        ("Carla", "sent", "accepted"),
        ("Dora", "sent", "accepted"),
        ("Emil", "sent", "accepted"),
    ]
    reason = db.execute(
        "SELECT s.reason FROM steps s JOIN contacts c ON c.id = s.contact"
        " WHERE s.tile = 'send-hello' AND c.firstname = 'Bob'"
    ).fetchone()[0]
    assert "ZeroDivisionError" in reason
    assert _advisory_locks(db) == 0


@pytest.mark.parametrize(("connections", "opened"), [(2, 3), (4, 4)])
def test_taken_address_blocked_and_envelope_abandoned(
    db, sink_settings, tmp_path, caplog, monkeypatch, connections, opened
):
    """Carla has Anna's address, so her 'sending' record conflicts with
    Anna's: she is blocked, the envelope opened for her is abandoned, and the
    sink gets one email per address. With two connections, her envelope
    rode behind Anna's content, and the email after hers on that connection
    needs a new one. With four, she is in Anna's group; her connection is
    closed and not needed again in this batch."""
    monkeypatch.setenv("JOURNEYS_SMTP_CONNECTIONS_PER_THREAD", str(connections))
    get_settings.cache_clear()
    journey_id, version, contacts = _live_journey(
        db, tmp_path, HTML, {"Carla": "anna@example.com"}
    )

    with caplog.at_level(logging.INFO, logger="shared.mail"):
        results = run_email(
            ContactMessage(
                journey_id=journey_id,
                version=version,
                tile="send-hello",
                contacts=contacts,
            )
        )

    assert +results == {Result.SENT: 4, Result.BLOCKED: 1}
    # The sink was waiting for Carla's content, so the sender closed that
    # connection.
    opens = [r for r in caplog.messages if r.startswith("opened SMTP connection")]
    assert len(opens) == opened
    assert sorted(recipients(sink_settings)) == [
        "anna@example.com",
        "bob@example.com",
        "dora@example.com",
        "emil@example.com",
    ]
    reason = db.execute(
        "SELECT s.reason FROM steps s JOIN contacts c ON c.id = s.contact"
        " WHERE s.tile = 'send-hello' AND c.firstname = 'Carla'"
    ).fetchone()[0]
    assert reason == "duplicate_address"
    assert _advisory_locks(db) == 0


def test_reply_record_waits_for_journey_end_without_deadlock(
    db, database_url, sink_settings, tmp_path
):
    """The end of a journey locks a contact's step, then its entry. Recording
    the reply of the journey's last email locks them in the same order, so it
    waits for the end instead of deadlocking with it."""
    journey_id, version, contacts = _live_journey(db, tmp_path, HTML)
    contact = contacts[0]
    send_id = _insert_send(db, journey_id, contact, "sending")

    errors: list[BaseException] = []
    replies = [Reply(contact, send_id, "accepted", 250, "OK", Result.SENT)]

    with psycopg.connect(database_url) as ending:
        ending.execute(
            "UPDATE steps SET state = 'stopped', reason = 'journey_ended'"
            " WHERE journey_id = %s AND tile = 'send-hello' AND contact = %s",
            (journey_id, contact),
        )
        recorder = _record_in_thread(journey_id, version, replies, errors)
        time.sleep(1)  # the recorder now waits for the step row
        ending.execute(
            "UPDATE entries SET state = 'stopped', reason = 'journey_ended'"
            " WHERE journey_id = %s AND contact = %s AND state = 'in_progress'",
            (journey_id, contact),
        )
        ending.commit()
    recorder.join(30)

    assert not recorder.is_alive()
    assert errors == []
    state = db.execute("SELECT state FROM sends WHERE id = %s", (send_id,))
    assert state.fetchone() == ("accepted",)
    step = db.execute(
        "SELECT state, outcome FROM steps WHERE tile = 'send-hello' AND contact = %s",
        (contact,),
    )
    assert step.fetchone() == ("completed", "sent")


def test_recovery_keeps_a_reply_recorded_since(db, sink_settings, tmp_path):
    """A duplicate message read 'sending', but by the time it holds the lock
    the sender has recorded a 4xx deferral. The deferral stays, and the
    contact is retried instead of being marked unconfirmed."""
    journey_id, version, contacts = _live_journey(db, tmp_path, HTML)
    contact = contacts[0]
    send_id = _insert_send(db, journey_id, contact, "deferred")

    with get_pool().connection() as conn, conn.transaction():
        plan = load_plan(conn, journey_id, version)
        result = _recover(
            conn,
            plan,
            "send-hello",
            contact,
            send_id,
            "sending",
            datetime.now(UTC),
            Batch(),
        )

    assert result is Result.DEFERRED
    state = db.execute("SELECT state FROM sends WHERE id = %s", (send_id,))
    assert state.fetchone() == ("deferred",)
    step = db.execute(
        "SELECT state FROM steps WHERE tile = 'send-hello' AND contact = %s",
        (contact,),
    )
    assert step.fetchone() == ("in_progress",)


def test_every_statement_shape_plans(db):
    """Each combination of parts that a reply and a mark can call for makes a
    statement that PostgreSQL plans with the loop's parameter types."""
    reply = {
        "r_send": 1,
        "r_contact": 1,
        "r_state": "accepted",
        "r_code": 250,
        "r_text": "ok",
        "step_outcome": "sent",
        "step_reason": None,
        "exit_reason": None,
    }
    mark = {
        "m_key": 1,
        "m_id": 2,
        "m_contact": 2,
        "address": "a@example.com",
        "message_id": "<m@example.com>",
        "links": Jsonb([]),
    }
    shapes = set()
    for has_reply, bounced, step_state, entry_state, next_tile in itertools.product(
        (False, True), (False, True), (None, "completed"), (None, "left"), (None, "b")
    ):
        for has_mark, retry, unlock_key in itertools.product(
            (False, True), (False, True), (None, 7)
        ):
            if not (has_reply or has_mark):
                continue
            params = {
                **email_tile._NO_REPLY,
                **email_tile._NO_MARK,
                "journey": 1,
                "version": 1,
                "tile": "t",
                "now": datetime.now(UTC),
                "unlock_key": unlock_key,
            }
            if has_reply:
                params |= reply | {
                    "r_bounced": bounced,
                    "step_state": step_state,
                    "entry_state": entry_state,
                    "next_tile": next_tile,
                }
            if has_mark:
                params |= mark | {"retry": retry}
            statement = email_tile._record_and_mark(email_tile._parts_for(params))
            shapes.add(statement)
            with db.transaction(force_rollback=True):
                db.execute("EXPLAIN " + statement, params)
    assert len(shapes) > 20


def test_group_replies_recorded_despite_deadlock(
    db, database_url, sink_settings, tmp_path
):
    """Two accepted replies are recorded in one transaction while another
    session locks the same two steps in the other order. PostgreSQL cancels
    one side. If that is the recording, it is retried, so the replies of
    emails that went out are never lost."""
    journey_id, version, contacts = _live_journey(db, tmp_path, HTML)
    first, second = contacts[0], contacts[1]
    sends = {
        contact: db.execute(
            "INSERT INTO sends (journey_id, tile, contact, address, state, started_at)"
            " VALUES (%s, 'send-hello', %s, %s, 'sending', now()) RETURNING id",
            (journey_id, contact, f"{contact}@example.com"),
        ).fetchone()[0]
        for contact in (first, second)
    }
    errors: list[BaseException] = []
    replies = [
        Reply(contact, sends[contact], "accepted", 250, "OK", Result.SENT)
        for contact in (first, second)
    ]

    with psycopg.connect(database_url) as other:
        other.execute(
            "UPDATE steps SET reason = 'locked' WHERE journey_id = %s"
            " AND tile = 'send-hello' AND contact = %s",
            (journey_id, second),
        )
        recorder = _record_in_thread(journey_id, version, replies, errors)
        time.sleep(0.5)  # the recorder has locked the first step, waits for the second
        try:
            other.execute(
                "UPDATE steps SET reason = 'locked' WHERE journey_id = %s"
                " AND tile = 'send-hello' AND contact = %s",
                (journey_id, first),
            )
            other.commit()
        except psycopg.errors.DeadlockDetected:
            other.rollback()
    recorder.join(30)

    assert not recorder.is_alive()
    assert errors == []
    states = db.execute("SELECT state FROM sends ORDER BY contact").fetchall()
    assert states == [("accepted",), ("accepted",)]
    assert _advisory_locks(db) == 0


def test_failure_after_group_commit_keeps_sent_replies(
    db, sink_settings, tmp_path, monkeypatch
):
    """Carla has Anna's address, and recording why she gets no email fails.
    By then the other emails of her group went out and their replies are
    pending, so they are recorded, and the retry sends the rest once."""
    monkeypatch.setenv("JOURNEYS_SMTP_CONNECTIONS_PER_THREAD", "4")
    get_settings.cache_clear()
    journey_id, version, contacts = _live_journey(
        db, tmp_path, HTML, {"Carla": "anna@example.com"}
    )
    message = ContactMessage(
        journey_id=journey_id, version=version, tile="send-hello", contacts=contacts
    )
    unmarked = email_tile._unmarked

    def cancelled(*args: object, **kwargs: object) -> None:
        raise psycopg.errors.QueryCanceled(
            "canceling statement due to statement timeout"
        )

    monkeypatch.setattr(email_tile, "_unmarked", cancelled)
    with pytest.raises(psycopg.errors.QueryCanceled):
        run_email(message)
    first_attempt = sorted(recipients(sink_settings))
    recorded = db.execute(
        "SELECT address, state FROM sends ORDER BY contact"
    ).fetchall()
    monkeypatch.setattr(email_tile, "_unmarked", unmarked)
    retry = run_email(message)

    assert first_attempt == ["anna@example.com", "bob@example.com", "dora@example.com"]
    assert recorded == [
        ("anna@example.com", "accepted"),
        ("bob@example.com", "accepted"),
        ("dora@example.com", "accepted"),
    ]
    assert +retry == {Result.SKIPPED: 3, Result.BLOCKED: 1, Result.SENT: 1}
    assert sorted(recipients(sink_settings)) == [
        "anna@example.com",
        "bob@example.com",
        "dora@example.com",
        "emil@example.com",
    ]
    assert _advisory_locks(db) == 0
