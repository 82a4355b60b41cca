"""The interaction_event actor in a Dramatiq worker process on RabbitMQ, fed
the way a producer in another language feeds it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pika
import psycopg
import pytest

from shared.golive import go_live_paths
from tests.support import ROOT, Processes, free_port, wait_until, write_definitions

pytestmark = pytest.mark.integration

QUEUE = "events.interactions"
DEAD_LETTERS = f"{QUEUE}.XQ"
MESSAGE_ID = "<m1@sender.example.com>"
BOUNCED_AT = "2026-03-01T12:00:00Z"


@pytest.fixture
def events_worker(processes: Processes, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A Dramatiq worker process that loads only services.events.actors, so
    the test does not depend on what the tile workers import."""
    env = {
        **processes.env,
        "dramatiq_prom_db": str(tmp_path / "prometheus"),
        "dramatiq_prom_port": str(free_port()),
    }
    with open(tmp_path / "events-worker.log", "wb") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dramatiq",
                "services.events.actors",
                "-p",
                "1",
                "-t",
                "2",
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # RabbitMQ drops messages sent to a queue that does not exist yet,
        # and the worker declares it when it starts.
        wait_until(
            lambda: (
                worker.poll() is not None or _queue_exists(processes.broker_url, QUEUE)
            ),
            30,
            what=f"the worker to declare {QUEUE}",
        )
        assert worker.poll() is None, (tmp_path / "events-worker.log").read_text()
        yield worker
    finally:
        processes.stop(worker)


def _channel(broker_url: str) -> tuple[pika.BlockingConnection, object]:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    return connection, connection.channel()


def _queue_exists(broker_url: str, queue: str) -> bool:
    connection, channel = _channel(broker_url)
    try:
        channel.queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        connection.close()


def _publish_without_args(broker_url: str) -> None:
    """Publish a message whose args list is empty, as a faulty producer might."""
    body = {
        "queue_name": QUEUE,
        "actor_name": "interaction_event",
        "args": [],
        "kwargs": {},
        "options": {},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": int(time.time() * 1000),
    }
    connection, channel = _channel(broker_url)
    try:
        channel.confirm_delivery()
        channel.basic_publish(
            "",
            QUEUE,
            json.dumps(body).encode(),
            pika.BasicProperties(delivery_mode=2),
            mandatory=True,
        )
    finally:
        connection.close()


def _dead_letters(broker_url: str) -> list[dict]:
    """Take every message out of the dead-letter queue and return its args."""
    connection, channel = _channel(broker_url)
    events = []
    try:
        while True:
            method, _, body = channel.basic_get(DEAD_LETTERS, auto_ack=True)
            if method is None:
                return events
            events.append(json.loads(body)["args"])
    finally:
        connection.close()


def _send(db: psycopg.Connection, tmp_path: Path) -> tuple[int, int]:
    """Create a contact, a live journey and an accepted send, and return the
    ids of the send and the contact."""
    contact = db.execute(
        "INSERT INTO contacts (key, contact_id, email, firstname)"
        " VALUES ('c1', 'c1', 'c1@example.com', 'Ann') RETURNING id"
    ).fetchone()[0]
    outcome = go_live_paths(db, [write_definitions(tmp_path)], datetime.now(UTC))
    assert not outcome.errors, [str(problem) for problem in outcome.errors]
    journey_id = db.execute("SELECT id FROM journeys").fetchone()[0]
    send_id = db.execute(
        "INSERT INTO sends (journey_id, tile, contact, address, state, message_id,"
        " started_at, finished_at)"
        " VALUES (%s, 'send-hello', %s, 'c1@example.com', 'accepted', %s, now(), now())"
        " RETURNING id",
        (journey_id, contact, MESSAGE_ID),
    ).fetchone()[0]
    return send_id, contact


def test_events_deduplicated_broken_dead_lettered(
    db, processes, events_worker, tmp_path
):
    send_id, contact = _send(db, tmp_path)
    bounce = {
        "kind": "bounce",
        "message_id": MESSAGE_ID,
        "hard": True,
        "at": BOUNCED_AT,
    }
    missing_kind = {"message_id": MESSAGE_ID, "at": BOUNCED_AT}
    naive_time = {"kind": "open", "message_id": MESSAGE_ID, "at": "2026-03-01T12:05:00"}
    unknown = {"kind": "open", "message_id": "<nobody@example.com>", "at": BOUNCED_AT}
    # Without angle brackets, as some bounce processors report it.
    opened = {
        "kind": "open",
        "message_id": MESSAGE_ID.strip("<>"),
        "at": "2026-03-01T12:10:00+01:00",
    }

    processes.publish(QUEUE, "interaction_event", [bounce, bounce, unknown])
    processes.publish(QUEUE, "interaction_event", [missing_kind, naive_time])
    _publish_without_args(processes.broker_url)
    processes.publish(QUEUE, "interaction_event", [opened])

    log = tmp_path / "events-worker.log"
    wait_until(
        lambda: (
            db.execute(
                "SELECT count(*) FROM interactions WHERE kind = 'opened'"
            ).fetchone()[0]
            == 1
            and processes.queue_depth(DEAD_LETTERS) == 3
            and "already recorded" in log.read_text(errors="replace")
            and "no send has Message-ID" in log.read_text(errors="replace")
        ),
        60,
        what="all seven messages handled",
    )

    assert events_worker.poll() is None
    rows = db.execute(
        "SELECT kind, send_id, contact, hard, at, source FROM interactions"
        " ORDER BY kind"
    ).fetchall()
    assert rows == [
        (
            "bounced",
            send_id,
            contact,
            True,
            datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
            "queue",
        ),
        (
            "opened",
            send_id,
            contact,
            None,
            datetime(2026, 3, 1, 11, 10, tzinfo=UTC),
            "queue",
        ),
    ]
    bounced_at = db.execute(
        "SELECT bounced_at FROM contacts WHERE id = %s", (contact,)
    ).fetchone()[0]
    assert bounced_at == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert processes.queue_depth(QUEUE) == 0

    dead = _dead_letters(processes.broker_url)
    assert sorted(dead, key=json.dumps) == sorted(
        [[missing_kind], [naive_time], []], key=json.dumps
    )
    text = log.read_text(errors="replace")
    assert "kind: Field required" in text
    assert "at: Input should have timezone info" in text
    assert "got 0 args" in text
