"""Broken messages from tests/badinput/messages on the tile and event queues
of real worker processes, between valid messages of a live journey.

Each broken message must go to its queue's .XQ dead-letter queue, the valid
ones must still be handled exactly once, and no worker process may die.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
import psycopg
import pytest

from services.tiles.common import enqueue_step
from shared.contacts import import_contacts
from shared.golive import go_live_paths
from tests.support import (
    Processes,
    recipients,
    simple_contacts,
    step_counts,
    tree_pids,
    wait_until,
    write_contacts,
    write_definitions,
)

pytestmark = pytest.mark.integration

MESSAGES = Path(__file__).resolve().parent.parent / "badinput" / "messages"
AUDIENCE = "tile.audience"
EMAIL = "tile.email"
EVENTS = "events.interactions"
ACTORS = {AUDIENCE: "audience_tile", EMAIL: "email_tile", EVENTS: "interaction_event"}
CONTACTS = 12
# Valid in shape, so the workers need the database to find them broken.
UNRESOLVABLE = ("tile_unknown_journey.json", "tile_unknown_tile.json")
# Log text expected for each broken event: the field and the reason.
EVENT_LOG_LINES = {
    "event_at_without_zone.json": "at: Input should have timezone info",
    "event_at_not_a_date.json": "at: Input should be a valid datetime",
    "event_kind_missing.json": "kind: Field required",
    "event_kind_unknown.json": "kind: Input should be 'bounce'",
    "event_message_id_too_long.json": "message_id: String should have at most 998",
    "event_hard_not_boolean.json": "hard: Input should be a valid boolean",
    "event_link_not_string.json": "link: Input should be a valid string",
    "event_field_misspelt.json": "hardd: Extra inputs are not permitted",
    "event_payload_is_string.json": "Input should be a valid dictionary",
}


def channel(broker_url: str) -> tuple[pika.BlockingConnection, Any]:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    return connection, connection.channel()


def queue_exists(broker_url: str, queue: str) -> bool:
    connection, opened = channel(broker_url)
    try:
        opened.queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        connection.close()


def envelope(queue: str, args: list[Any]) -> tuple[str, bytes]:
    """Return a new message id and a Dramatiq message body with these args."""
    message_id = str(uuid.uuid4())
    body = {
        "queue_name": queue,
        "actor_name": ACTORS[queue],
        "args": args,
        "kwargs": {},
        "options": {},
        "message_id": message_id,
        "message_timestamp": int(time.time() * 1000),
    }
    return message_id, json.dumps(body).encode()


def publish(broker_url: str, items: list[tuple[str, bytes]]) -> None:
    """Publish (queue, body) pairs in order, each confirmed by the broker."""
    connection, opened = channel(broker_url)
    try:
        opened.confirm_delivery()
        for queue, body in items:
            opened.basic_publish(
                "", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True
            )
    finally:
        connection.close()


def take_all(broker_url: str, queue: str) -> list[bytes]:
    """Take every message out of a queue and return the bodies."""
    connection, opened = channel(broker_url)
    bodies = []
    try:
        while True:
            method, _, body = opened.basic_get(queue, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(body)
    finally:
        connection.close()


def dead_letter_keys(bodies: list[bytes]) -> Counter[str]:
    """Name each dead letter by its message id, or by its text when the body
    is no Dramatiq message."""
    keys: Counter[str] = Counter()
    for body in bodies:
        try:
            keys[json.loads(body)["message_id"]] += 1
        except (ValueError, KeyError, TypeError):
            keys[body.decode(errors="replace")] += 1
    return keys


def corpus_payload(name: str) -> Any:
    return json.loads((MESSAGES / name).read_text(encoding="utf-8"))


def broken_tile_payloads() -> dict[str, Any]:
    return {
        path.name: corpus_payload(path.name)
        for path in sorted(MESSAGES.glob("tile_*.json"))
        if path.name not in UNRESOLVABLE
    }


def log_text(processes: Processes) -> str:
    return "\n".join(
        path.read_text(errors="replace")
        for path in sorted(processes.logs.glob("*.log"))
    )


def alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def start_live_journey(
    db: psycopg.Connection, processes: Processes, tmp_path: Path
) -> tuple[subprocess.Popen, list[int], int, list[int]]:
    """Import contacts, put a one-email journey live and start two worker
    processes; return the worker, its process ids, the journey id and the
    contact ids."""
    report = import_contacts(
        db, write_contacts(tmp_path / "contacts.csv", simple_contacts(CONTACTS))
    )
    assert report.imported == CONTACTS
    outcome = go_live_paths(db, [write_definitions(tmp_path)], datetime.now(UTC))
    assert not outcome.errors, [str(problem) for problem in outcome.errors]
    journey_id, version = db.execute("SELECT id, version FROM journeys").fetchone()
    # The corpus messages name journey 1, version 1.
    assert (journey_id, version) == (1, 1)
    contacts = [row[0] for row in db.execute("SELECT id FROM contacts ORDER BY id")]

    worker = processes.start_workers(processes=2, threads=4)
    wait_until(
        lambda: (
            worker.poll() is not None
            or all(queue_exists(processes.broker_url, q) for q in ACTORS)
        ),
        60,
        what="the workers to declare their queues",
    )
    assert worker.poll() is None, log_text(processes)
    # The master process and its worker processes.
    wait_until(lambda: len(tree_pids(worker.pid)) >= 3, 30, what="worker processes")
    return worker, tree_pids(worker.pid), journey_id, contacts


def enter_audience(
    db: psycopg.Connection, journey_id: int, contacts: list[int]
) -> None:
    """Create the contacts' entries and audience steps as the coordinator
    does, without publishing: the test publishes the messages itself."""
    now = datetime.now(UTC)
    with db.transaction():
        db.execute(
            "INSERT INTO entries (journey_id, contact, version, entered_at)"
            " SELECT %s, contact, 1, %s FROM unnest(%s::bigint[]) AS contact",
            (journey_id, now, contacts),
        )
        rows = enqueue_step(db, journey_id, 1, "audience", contacts, now)
        db.execute("DELETE FROM outbox WHERE id = ANY(%s)", ([row[0] for row in rows],))


def test_broken_messages_dead_lettered_valid_ones_sent(
    db, processes, smtp_sink, tmp_path
):
    worker, pids, journey_id, contacts = start_live_journey(db, processes, tmp_path)
    enter_audience(db, journey_id, contacts)

    broken = broken_tile_payloads()
    huge = {
        "journey_id": journey_id,
        "version": 1,
        "tile": "audience",
        "contacts": list(range(1, 200_001)),
    }
    valid = [
        {"journey_id": journey_id, "version": 1, "tile": "audience", "contacts": chunk}
        for chunk in (contacts[0:4], contacts[4:8], contacts[8:12], contacts[0:4])
    ]
    expected: dict[str, Counter[str]] = {queue: Counter() for queue in ACTORS}
    items: list[tuple[str, bytes]] = []
    valid_left = list(valid)
    for payload in [*broken.values(), huge]:
        for queue in (AUDIENCE, EMAIL):
            message_id, body = envelope(queue, [payload])
            items.append((queue, body))
            expected[queue][message_id] += 1
        if valid_left:
            items.append((AUDIENCE, envelope(AUDIENCE, [valid_left.pop(0)])[1]))
    for name in ("tile_body_not_json.body", "tile_body_invalid_utf8.body"):
        body = (MESSAGES / name).read_bytes()
        for queue in (AUDIENCE, EMAIL):
            items.append((queue, body))
            expected[queue] += dead_letter_keys([body])
    assert not valid_left

    publish(processes.broker_url, items)

    def dead_lettered(queue: str) -> int:
        return processes.queue_depth(f"{queue}.XQ")

    wait_until(
        lambda: (
            len(smtp_sink.handler.parsed()) >= CONTACTS
            and dead_lettered(AUDIENCE) >= sum(expected[AUDIENCE].values())
            and dead_lettered(EMAIL) >= sum(expected[EMAIL].values())
        ),
        120,
        what="every valid contact emailed and every broken tile message dead-lettered",
    )

    # Events about the emails just sent, between broken events.
    sent = db.execute(
        "SELECT message_id FROM sends WHERE state = 'accepted' ORDER BY id LIMIT 2"
    ).fetchall()
    assert len(sent) == 2
    valid_events = [
        {"kind": "open", "message_id": sent[0][0], "at": "2026-03-01T12:00:00Z"},
        {
            "kind": "click",
            "message_id": sent[1][0],
            "link": "https://example.com/offer",
            "at": "2026-03-01T12:05:00+01:00",
        },
    ]
    event_items: list[tuple[str, bytes]] = []
    for name in EVENT_LOG_LINES:
        message_id, body = envelope(EVENTS, [corpus_payload(name)])
        event_items.append((EVENTS, body))
        expected[EVENTS][message_id] += 1
        if valid_events:
            event_items.append((EVENTS, envelope(EVENTS, [valid_events.pop(0)])[1]))
    for name in (
        "event_body_truncated_json.body",
        "event_body_envelope_without_actor.body",
    ):
        body = (MESSAGES / name).read_bytes()
        event_items.append((EVENTS, body))
        expected[EVENTS] += dead_letter_keys([body])

    publish(processes.broker_url, event_items)

    wait_until(
        lambda: (
            db.execute("SELECT count(*) FROM interactions").fetchone()[0] == 2
            and dead_lettered(EVENTS) >= sum(expected[EVENTS].values())
        ),
        60,
        what="both valid events recorded and every broken event dead-lettered",
    )
    # Let any message still in flight settle before counting.
    time.sleep(1)

    addresses = [f"c{n}@example.com" for n in range(1, CONTACTS + 1)]
    assert Counter(recipients(smtp_sink)) == Counter(addresses)
    assert step_counts(db, "send-hello") == {"sent": CONTACTS}
    kinds = db.execute("SELECT kind FROM interactions ORDER BY kind").fetchall()
    assert kinds == [("clicked",), ("opened",)]
    for queue in ACTORS:
        assert processes.queue_depth(queue) == 0, queue
        assert processes.queue_depth(f"{queue}.DQ") == 0, f"{queue} retried a message"
        assert dead_lettered(queue) == sum(expected[queue].values()), queue
        found = dead_letter_keys(take_all(processes.broker_url, f"{queue}.XQ"))
        assert found == expected[queue], queue
    assert worker.poll() is None
    assert alive(pids) == pids
    log = log_text(processes)
    for name, line in EVENT_LOG_LINES.items():
        assert line in log, f"the log does not explain {name}: expected {line!r}"


def test_broken_tile_message_reason_logged(db, processes, smtp_sink, tmp_path):
    start_live_journey(db, processes, tmp_path)
    cases = {
        "tile_contacts_missing.json": ("contacts", "Field required"),
        "tile_version_zero.json": ("version", "greater than 0"),
        "tile_tile_not_string.json": ("tile", "valid string"),
    }
    items = []
    for name in cases:
        for queue in (AUDIENCE, EMAIL):
            items.append((queue, envelope(queue, [corpus_payload(name)])[1]))

    publish(processes.broker_url, items)

    wait_until(
        lambda: (
            processes.queue_depth(f"{AUDIENCE}.XQ") == len(cases)
            and processes.queue_depth(f"{EMAIL}.XQ") == len(cases)
        ),
        60,
        what="the broken tile messages dead-lettered",
    )
    for field, reason in cases.values():
        # Worker output reaches the log file through the dramatiq parent
        # process, a moment after the message is dead-lettered.
        wait_until(
            lambda f=field, r=reason: any(
                f in line for line in log_text(processes).splitlines() if r in line
            ),
            15,
            what=f"a log line naming {field}",
        )


def test_unresolvable_tile_message_dead_lettered(db, processes, smtp_sink, tmp_path):
    start_live_journey(db, processes, tmp_path)
    unknown_journey = corpus_payload("tile_unknown_journey.json")
    unknown_tile = corpus_payload("tile_unknown_tile.json")
    published = {
        envelope(AUDIENCE, [unknown_journey]): AUDIENCE,
        envelope(EMAIL, [unknown_journey]): EMAIL,
        envelope(EMAIL, [unknown_tile]): EMAIL,
        envelope(AUDIENCE, []): AUDIENCE,
    }

    publish(
        processes.broker_url, [(queue, body) for (_, body), queue in published.items()]
    )

    def settled() -> bool:
        log = log_text(processes)
        retried = sum(f"Retrying message '{mid}'" in log for mid, _ in published)
        dead = processes.queue_depth(f"{AUDIENCE}.XQ") + processes.queue_depth(
            f"{EMAIL}.XQ"
        )
        return retried + dead >= len(published)

    wait_until(settled, 60, what="each message dead-lettered or retried")
    assert processes.queue_depth(f"{AUDIENCE}.XQ") == 2
    assert processes.queue_depth(f"{EMAIL}.XQ") == 2


def test_unknown_audience_tile_dead_lettered(db, processes, smtp_sink, tmp_path):
    worker, _, _, _ = start_live_journey(db, processes, tmp_path)
    message_id, body = envelope(AUDIENCE, [corpus_payload("tile_unknown_tile.json")])

    publish(processes.broker_url, [(AUDIENCE, body)])

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if processes.queue_depth(f"{AUDIENCE}.XQ"):
            break
        time.sleep(0.2)
    assert worker.poll() is None
    assert dead_letter_keys(
        take_all(processes.broker_url, f"{AUDIENCE}.XQ")
    ) == Counter([message_id])
