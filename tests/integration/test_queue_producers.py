"""Contacts and segment members published by other systems on the documented
queues, including broken messages that must not take valid ones down."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx
import pytest

from shared.contacts import import_contacts
from shared.golive import go_live_paths
from tests.support import (
    ROOT,
    recipients,
    simple_contacts,
    wait_until,
    write_contacts,
    write_definitions,
)

pytestmark = pytest.mark.integration


def _publish(
    processes, kind: str, messages: list, tmp_path
) -> subprocess.CompletedProcess:
    path = tmp_path / f"{kind}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(messages), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "publish", kind, str(path)],
        env=processes.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_queue_member_joins_live_journey(db, processes, smtp_sink, tmp_path):
    """A contact and its segment membership arrive on the queues while the
    journey is live; the contact is emailed once as a late joiner."""
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(2)))
    path = write_definitions(tmp_path, segment={"source": "queue"})
    assert not go_live_paths(db, [path], datetime.now(UTC)).errors
    processes.start_workers(processes=1, threads=4)
    processes.start_coordinator()

    added = _publish(
        processes,
        "segment-membership",
        [
            {
                "segment": "audience",
                "action": "add",
                "contacts": ["c1", "C2@example.com"],
            }
        ],
        tmp_path,
    )
    assert added.returncode == 0, added.stderr
    wait_until(
        lambda: len(smtp_sink.handler.messages) == 2, 60, what="two members emailed"
    )

    # The membership arrives before the contact itself.
    _publish(
        processes,
        "segment-membership",
        [{"segment": "audience", "action": "add", "contacts": ["q1"]}],
        tmp_path,
    )
    upsert = _publish(
        processes,
        "contact-upsert",
        [
            {
                "contact_id": "q1",
                "email": "q1@example.com",
                "firstname": "Quinn",
                "fields": {"city": "Gent"},
            }
        ],
        tmp_path,
    )
    assert upsert.returncode == 0, upsert.stderr
    wait_until(
        lambda: len(smtp_sink.handler.messages) == 3, 60, what="the late joiner's email"
    )
    time.sleep(2)
    assert sorted(recipients(smtp_sink)) == [
        "c1@example.com",
        "c2@example.com",
        "q1@example.com",
    ]
    fields = db.execute(
        "SELECT fields FROM contacts WHERE contact_id = 'q1'"
    ).fetchone()[0]
    assert fields == {"city": "Gent"}


def test_publish_rejects_invalid_message_before_sending(processes, tmp_path):
    result = _publish(
        processes,
        "contact-upsert",
        [{"email": "a@example.com"}, {"contact_id": "x"}],
        tmp_path,
    )
    assert result.returncode == 1
    assert "message #2: email: Field required" in result.stderr


def test_broken_queue_messages_dead_lettered_and_counted(
    db, processes, smtp_sink, tmp_path
):
    path = write_definitions(tmp_path, segment={"source": "queue"})
    assert not go_live_paths(db, [path], datetime.now(UTC)).errors
    worker = processes.start_workers(processes=1, threads=2)
    processes.start_coordinator()
    good = [{"contact_id": f"g{n}", "email": f"g{n}@example.com"} for n in range(3)]
    broken = [
        {"email": "x@example.com", "fields": {"bad name!": "v"}},
        {"email": "y@example.com\r\nBcc: z@example.com"},
        {"contact_id": 5, "email": "z@example.com"},
    ]
    processes.publish(
        "events.contacts",
        "contact_upsert",
        [good[0], *broken[:2], good[1], broken[2], good[2]],
    )
    processes.publish(
        "events.segments",
        "segment_membership",
        [
            {"segment": "missing-segment", "action": "add", "contacts": ["g0"]},
            {"segment": "audience", "action": "add", "contacts": ["g0", "g1", "g2"]},
        ],
    )
    wait_until(
        lambda: processes.queue_depth("events.contacts.XQ") == 3,
        60,
        what="three dead letters",
    )
    wait_until(
        lambda: processes.queue_depth("events.segments.XQ") == 1,
        60,
        what="one dead letter",
    )
    wait_until(
        lambda: len(smtp_sink.handler.messages) == 3,
        60,
        what="the valid contacts emailed",
    )

    assert worker.poll() is None
    scrape = httpx.get(
        f"http://127.0.0.1:{processes.metrics_ports[worker.pid]}/metrics", timeout=10
    ).text
    assert (
        'journeys_queue_messages_rejected_total{queue="events.contacts"} 3.0' in scrape
    )
    logs = processes.log_text()
    assert "fields.bad name!.[key]" in logs or "bad name!" in logs
    assert "segment 'missing-segment' does not take members from the queue" in logs
