"""The email tile's send loop, run in this process against PostgreSQL and an
SMTP sink on loopback: each reply is committed with the next contact's
'sending' record, and a batch leaves no lock behind."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml

from services.coordinator.loop import tick
from services.tiles import actors  # noqa: F401  (the stub broker needs the actors)
from services.tiles import email as email_tile
from services.tiles.audience import run_audience
from services.tiles.common import ContactMessage
from services.tiles.email import Result, run_email
from shared.config import get_settings
from shared.contacts import import_contacts
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
    monkeypatch.setattr(email_tile, "_sender", None)
    yield smtp_sink
    if email_tile._sender is not None:
        email_tile._sender.close()


def _live_journey(db, tmp_path, html: str) -> tuple[int, int, list[int]]:
    rows = [
        {
            "contact_id": f"c{n}",
            "email": f"{name.lower()}@example.com",
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


def _advisory_locks(db) -> int:
    row = db.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    return row.fetchone()[0]


def test_every_reply_recorded_and_no_lock_left(db, sink_settings, tmp_path):
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
    """Anna's reply waits to be committed with Bob's 'sending' record; Bob's
    email fails to render, and Anna's reply is recorded before Bob's failure."""
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
