"""The embedded default: the whole engine in one process, with an embedded
PostgreSQL, Dramatiq's in-process broker and a loopback SMTP server that
writes every email to a folder."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from services.cli.output import (
    import_with_progress,
    print_outcome,
    print_status,
    status_payload,
)
from services.embedded.sink import SmtpSink
from shared import clock
from shared.config import get_settings

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2


def run_embedded(
    console: Console,
    paths: Sequence[Path],
    *,
    contacts_file: Path,
    outbox: Path,
    data_dir: Path,
    threads: int,
) -> int:
    """Import, check, go live and process until no contact is in flight.

    Returns the exit code: 0 when done, 1 when the check found errors or the
    contacts file could not be read.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    server = start_embedded_postgres(data_dir.resolve())
    sink = SmtpSink(folder=outbox).start()
    os.environ.update(
        JOURNEYS_DATABASE_URL=server.get_uri(),
        JOURNEYS_BROKER_URL="stub://",
        JOURNEYS_SMTP_URL=sink.url,
    )
    get_settings.cache_clear()
    console.print(f"embedded PostgreSQL in {data_dir}, SMTP sink writing to {outbox}")
    try:
        return _run(console, paths, contacts_file, threads, sink)
    finally:
        sink.stop()


def _run(
    console: Console,
    paths: Sequence[Path],
    contacts_file: Path,
    threads: int,
    sink: SmtpSink,
) -> int:
    import dramatiq

    from services.tiles.actors import broker
    from shared.db import close_pool, migrate
    from shared.golive import go_live_paths

    migrate()
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    try:
        with psycopg.connect(get_settings().database_url, autocommit=True) as conn:
            if import_with_progress(console, conn, contacts_file) is None:
                return 1
            outcome = go_live_paths(conn, paths, clock.now())
            print_outcome(console, outcome, as_json=False, checked_database=True)
            if outcome.errors:
                return 1
            journey_ids = [result.journey_id for result in outcome.journeys]
            _process_until_idle(console, conn, journey_ids)
            _print_results(console, conn, journey_ids)
    finally:
        worker.stop()
        close_pool()
    console.print(
        f"{len(sink.handler.messages)} emails accepted by the SMTP sink this run"
    )
    return 0


def _process_until_idle(
    console: Console, conn: psycopg.Connection, journey_ids: list[int]
) -> None:
    """Tick the coordinator until every journey in its window has fed all
    members and no contact is in flight."""
    from services.coordinator.loop import tick

    columns = (
        TextColumn("processing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("contacts", total=None)
        while True:
            report = tick()
            entered, in_flight = _progress_counts(conn, journey_ids)
            progress.update(task, total=entered, completed=entered - in_flight)
            if report.feeding_done and report.fed == 0 and in_flight == 0:
                return
            time.sleep(POLL_SECONDS)


def _progress_counts(
    conn: psycopg.Connection, journey_ids: list[int]
) -> tuple[int, int]:
    """Return the contacts that entered and those still moving; a contact
    held by a wait or condition timer is not moving until it falls due."""
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE e.state = 'in_progress'"
        "  AND NOT EXISTS (SELECT 1 FROM timers t"
        "  WHERE t.journey_id = e.journey_id AND t.contact = e.contact))"
        " FROM entries e WHERE e.journey_id = ANY(%s)",
        (journey_ids,),
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _print_results(
    console: Console, conn: psycopg.Connection, journey_ids: list[int]
) -> None:
    from shared.store import tile_counts

    for journey_id in journey_ids:
        row = conn.execute(
            "SELECT id, name, status, version, timezone, start_at, end_at"
            " FROM journeys WHERE id = %s",
            (journey_id,),
        ).fetchone()
        if row is None:
            continue
        journey = dict(
            zip(
                ("id", "name", "status", "version", "timezone", "start_at", "end_at"),
                row,
                strict=True,
            )
        )
        now = clock.now()
        if now < journey["start_at"]:
            console.print(
                f"journey {journey['name']!r} starts at "
                f"{journey['start_at']:%Y-%m-%d %H:%M}Z; "
                "nothing is processed before then"
            )
        print_status(
            console, status_payload(journey, tile_counts(conn, journey_id), now)
        )
        waiting = conn.execute(
            "SELECT count(*), min(due_at) FROM timers WHERE journey_id = %s",
            (journey_id,),
        ).fetchone()
        if waiting and waiting[0]:
            console.print(
                f"{waiting[0]} contacts wait in journey {journey['name']!r}, the first "
                f"until {waiting[1]:%Y-%m-%d %H:%M}Z; "
                "run again after that to move them on"
            )


def start_embedded_postgres(data_dir: Path) -> Any:
    """Start the PostgreSQL server that pgserver bundles on `data_dir`, or
    return the one already running there. It stops when this process exits."""
    with warnings.catch_warnings():
        # Importing pgserver looks up a runtime folder with platformdirs,
        # which warns when XDG_RUNTIME_DIR is unset, as on most servers. The
        # fallback under /tmp works.
        warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs")
        import pgserver

        return pgserver.get_server(str(data_dir), cleanup_mode="stop")
