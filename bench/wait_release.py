"""Measure how late due waits are released: 10,000 contacts wake at once,
and each one's lag is the time from its due time to its email being sent.

Run: python bench/wait_release.py [--contacts N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from common import processes, scratch_database, scratch_vhost  # type: ignore[import-not-found]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.embedded.sink import SmtpSink
from shared.contacts import import_contacts
from shared.golive import go_live_paths
from tests.support import (
    VirtualTime,
    simple_contacts,
    wait_until,
    write_contacts,
    write_definitions,
)

START = datetime(2027, 6, 1, 9, 0, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as folder,
        scratch_database() as url,
        scratch_vhost() as broker,
    ):
        measure(Path(folder), url, broker, args.contacts, args.processes, args.threads)


def measure(
    folder: Path, url: str, broker: str, count: int, workers: int, threads: int
) -> None:
    sink = SmtpSink().start()
    clock_file = folder / "clock-offset"
    group = processes(
        {
            "JOURNEYS_DATABASE_URL": url,
            "JOURNEYS_BROKER_URL": broker,
            "JOURNEYS_SMTP_URL": sink.url,
            "JOURNEYS_CLOCK_OFFSET_FILE": str(clock_file),
            "JOURNEYS_TICK_SECONDS": "0.5",
        },
        folder / "logs",
    )
    virtual = VirtualTime(clock_file)
    virtual.set(START)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            import_contacts(
                conn, write_contacts(folder / "c.csv", simple_contacts(count))
            )
            tiles = [
                {"id": "wait", "type": "wait", "duration": "1h"},
                {"id": "mail", "type": "email", "email": "hello"},
            ]
            path = write_definitions(
                folder, start="2027-06-01 09:00", end="2027-06-02 09:00", tiles=tiles
            )
            assert not go_live_paths(conn, [path], virtual.now()).errors
            group.start_workers(processes=workers, threads=threads)
            group.start_coordinator()
            wait_until(
                lambda: (
                    conn.execute("SELECT count(*) FROM timers").fetchone() == (count,)
                ),
                600,
                what="all waiting",
            )
            due = dict(conn.execute("SELECT contact, due_at FROM timers").fetchall())
            last_due = max(due.values())
            virtual.set(last_due + timedelta(milliseconds=1))
            woke = time.monotonic()
            wait_until(lambda: _released(conn), 900, what="all released", interval=0.05)
            release_seconds = time.monotonic() - woke
            wait_until(
                lambda: len(sink.handler.messages) >= count,
                900,
                what="all emails",
                interval=0.5,
            )
            elapsed = time.monotonic() - woke
            sent = dict(
                conn.execute(
                    "SELECT contact, finished_at FROM sends WHERE state = 'accepted'"
                ).fetchall()
            )
    finally:
        group.stop_all()
        sink.stop()
    print(f"contacts woken at once: {count}, emails sent: {len(sent)}")
    # Everyone is due by last_due, where the clock jumped, so lags count from there.
    print(
        f"release: all {count} timers released and their messages published "
        f"{release_seconds:.2f} s after they fell due"
    )
    summary(
        "send lag (due time to the email accepted by the SMTP server)", sent, last_due
    )
    print(
        f"all {count} sent {elapsed:.1f} s after waking: "
        f"{count / elapsed:.0f} contacts/s"
    )


def _released(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM timers) + (SELECT count(*) FROM outbox)"
    ).fetchone()
    return row == (0,)


def summary(title: str, moments: dict, since: datetime) -> None:
    lags = sorted((moment - since).total_seconds() for moment in moments.values())
    print(
        f"{title}, seconds: p50 {statistics.median(lags):.2f}, "
        f"p99 {lags[int(len(lags) * 0.99) - 1]:.2f}, max {lags[-1]:.2f}"
    )


if __name__ == "__main__":
    main()
