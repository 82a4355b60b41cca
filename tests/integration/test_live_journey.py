"""A live journey on RabbitMQ and PostgreSQL, with workers and the coordinator
as separate processes and an SMTP server on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from examples.make_contacts import write_csv
from shared.contacts import import_contacts
from shared.golive import go_live_paths
from shared.mail import normalize_address
from tests.support import (
    ROOT,
    local,
    recipients,
    rss_peak_mb,
    simple_contacts,
    step_counts,
    tree_pids,
    wait_until,
    write_contacts,
    write_definitions,
)

pytestmark = pytest.mark.integration


def _go_live(db, path: Path) -> None:
    outcome = go_live_paths(db, [path], datetime.now(UTC))
    assert not outcome.errors, [str(p) for p in outcome.errors]


def _eligible_addresses(csv_path: Path) -> set[str]:
    """Addresses the example journey must email: customers, subscribed, valid,
    each address once."""
    import csv

    eligible: set[str] = set()
    with open(csv_path, encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["lifecycle_stage"] != "customer" or row["unsubscribed"] == "true":
                continue
            address = normalize_address(row["email"])
            if address:
                eligible.add(address.lower())
    return eligible


def _status_json(env: dict[str, str], name: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "status", name, "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} {labels} not found")


@pytest.mark.slow
def test_example_journey_emails_each_eligible_contact_once(
    db, processes, smtp_sink, tmp_path
):
    contacts = tmp_path / "contacts.csv"
    write_csv(contacts, 10_000, 11)
    import_contacts(db, contacts)
    _go_live(db, ROOT / "examples" / "welcome")
    expected = _eligible_addresses(contacts)

    started = time.monotonic()
    workers = processes.start_workers(processes=2, threads=8)
    coordinator = processes.start_coordinator()
    wait_until(
        lambda: len(smtp_sink.handler.messages) >= len(expected), 300, what="all emails"
    )
    peaks = {"coordinator": rss_peak_mb(coordinator.pid)}
    for index, pid in enumerate(tree_pids(workers.pid)):
        peaks[f"worker process {index}"] = rss_peak_mb(pid)
    elapsed = time.monotonic() - started
    time.sleep(2)  # anything extra would arrive now

    got = Counter(recipients(smtp_sink))
    assert set(got) == expected
    assert max(got.values()) == 1
    status = _status_json(processes.env, "welcome")
    mail_tile = next(tile for tile in status["tiles"] if tile["type"] == "email")
    assert mail_tile["sent"] == len(expected)
    assert mail_tile["in_progress"] == 0
    assert mail_tile["sent"] + mail_tile["blocked"] == mail_tile["entered"]

    scrape = httpx.get(
        f"http://127.0.0.1:{processes.metrics_ports[coordinator.pid]}/metrics",
        timeout=10,
    ).text
    labels = {"journey": "welcome", "tile": "welcome-mail"}
    assert _metric(
        scrape, "journeys_email_results_total", result="sent", **labels
    ) == len(expected)
    assert (
        _metric(scrape, "journeys_tile_entered_total", **labels) == mail_tile["entered"]
    )

    worker_scrape = httpx.get(
        f"http://127.0.0.1:{processes.metrics_ports[workers.pid]}/metrics", timeout=10
    ).text
    assert _metric(
        worker_scrape,
        "journeys_tile_contacts_processed_total",
        outcome="sent",
        **labels,
    ) == len(expected)
    assert (
        _metric(worker_scrape, "dramatiq_messages_total", actor_name="email_tile") > 0
    )
    rate = len(expected) / elapsed
    print(f"\n{len(expected)} emails in {elapsed:.1f} s: {rate:.0f} contacts/s")
    print(f"peak resident memory (MB): {peaks}")


def test_late_joiner_is_emailed(db, processes, smtp_sink, tmp_path):
    import_contacts(db, write_contacts(tmp_path / "first.csv", simple_contacts(5)))
    _go_live(db, write_definitions(tmp_path))
    processes.start_workers(processes=1, threads=2)
    processes.start_coordinator()
    wait_until(
        lambda: len(smtp_sink.handler.messages) == 5, 60, what="first five emails"
    )

    late = [{"contact_id": "late1", "email": "late1@example.com", "firstname": "Late"}]
    import_contacts(db, write_contacts(tmp_path / "late.csv", late))
    wait_until(
        lambda: len(smtp_sink.handler.messages) == 6, 60, what="the late joiner's email"
    )
    assert recipients(smtp_sink).count("late1@example.com") == 1


def test_nothing_sent_before_start_or_after_end(db, processes, smtp_sink, tmp_path):
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now + timedelta(seconds=5), now + timedelta(seconds=12)
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(3)))
    _go_live(
        db,
        write_definitions(
            tmp_path,
            start=local(start, "Europe/Berlin"),
            end=local(end, "Europe/Berlin"),
            timezone="Europe/Berlin",
        ),
    )
    processes.start_workers(processes=1, threads=2)
    processes.start_coordinator()

    time.sleep(max(0.0, (start - datetime.now(UTC)).total_seconds() - 1.0))
    assert smtp_sink.handler.messages == []
    wait_until(
        lambda: len(smtp_sink.handler.messages) == 3, 30, what="emails after the start"
    )
    first_arrival = datetime.now(UTC)
    assert first_arrival >= start

    wait_until(
        lambda: db.execute("SELECT status FROM journeys").fetchone()[0] == "completed",
        30,
        what="the end",
    )
    import_contacts(
        db, write_contacts(tmp_path / "late.csv", simple_contacts(2, prefix="after"))
    )
    time.sleep(3)
    assert len(smtp_sink.handler.messages) == 3


def test_journey_end_drops_queued_messages(db, processes, smtp_sink, tmp_path):
    """Messages already on the queue when the journey ends are dropped, and
    their contacts recorded as stopped because the journey ended."""
    end = datetime.now(UTC) + timedelta(seconds=6)
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(20)))
    _go_live(db, write_definitions(tmp_path, end=local(end, "UTC")))
    coordinator = (
        processes.start_coordinator()
    )  # no workers yet: messages wait on the queue
    wait_until(
        lambda: processes.queue_depth("tile.audience") > 0,
        30,
        what="queued audience messages",
    )
    wait_until(
        lambda: db.execute("SELECT status FROM journeys").fetchone()[0] == "completed",
        30,
        what="the end",
    )
    processes.stop(coordinator)

    processes.start_workers(processes=1, threads=2)
    wait_until(
        lambda: processes.queue_depth("tile.audience") == 0,
        30,
        what="the queue to drain",
    )
    time.sleep(1)
    assert smtp_sink.handler.messages == []
    assert step_counts(db, "audience") == {"stopped": 20}
    reasons = db.execute("SELECT DISTINCT reason FROM entries").fetchall()
    assert reasons == [("journey_ended",)]


def test_duplicate_messages_change_nothing(db, processes, smtp_sink, tmp_path):
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(30)))
    _go_live(db, write_definitions(tmp_path))
    processes.start_workers(processes=2, threads=4)
    processes.start_coordinator()
    wait_until(lambda: len(smtp_sink.handler.messages) == 30, 60, what="thirty emails")

    journey_id, version = db.execute("SELECT id, version FROM journeys").fetchone()
    contacts = [row[0] for row in db.execute("SELECT id FROM contacts ORDER BY id")]
    for queue, actor, tile in (
        ("tile.audience", "audience_tile", "audience"),
        ("tile.email", "email_tile", "send-hello"),
    ):
        payloads = [
            {
                "journey_id": journey_id,
                "version": version,
                "tile": tile,
                "contacts": [contact],
            }
            for contact in contacts
        ] * 2
        processes.publish(queue, actor, payloads)
    wait_until(
        lambda: (
            processes.queue_depth("tile.audience") + processes.queue_depth("tile.email")
            == 0
        ),
        60,
        what="duplicates consumed",
    )
    time.sleep(2)
    assert len(smtp_sink.handler.messages) == 30
    assert step_counts(db, "send-hello") == {"sent": 30}
