"""Simulation: a journey run on a virtual clock in one process, with the same
tiles, coordinator and SQL as a live run, sending nothing beyond loopback.

Time jumps from one event to the next: a wait or condition timeout falling
due, an interaction from the interactions file, the journey's start or end.
Between jumps the coordinator ticks and the in-process broker is drained, so
every contact moves exactly as it would live.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console

from services.embedded.run import start_embedded_postgres
from services.embedded.sink import SmtpSink
from services.simulation.interactions import (
    PlannedInteraction,
    apply_due,
    read_interactions,
)
from services.simulation.joiners import Joining, split_contacts
from services.simulation.report import contact_paths, print_report
from shared import clock
from shared.config import get_settings
from shared.errors import JourneyError

logger = logging.getLogger(__name__)

MAX_JUMPS = 100_000
SETTLE_ROUNDS = 50


def simulate(
    console: Console,
    paths: Sequence[Path],
    contacts_file: Path,
    *,
    start: datetime | None,
    until: datetime | None,
    interactions_file: Path | None,
    as_json: bool,
) -> int:
    """Run the simulation and print each contact's path and the per-tile counts.

    Returns the exit code: 0 when it ran, 1 when an input was invalid.
    """
    with tempfile.TemporaryDirectory(prefix="journeys-simulation-") as folder:
        try:
            planned = read_interactions(interactions_file) if interactions_file else []
            contacts_file, joinings = split_contacts(contacts_file, Path(folder))
        except JourneyError as error:
            console.print(f"[red]{error}[/red]")
            return 1
        server = start_embedded_postgres(Path(folder) / "pgdata")
        sink = SmtpSink().start()
        os.environ.update(
            JOURNEYS_DATABASE_URL=server.get_uri(),
            JOURNEYS_BROKER_URL="stub://",
            JOURNEYS_SMTP_URL=sink.url,
        )
        get_settings.cache_clear()
        try:
            return _run(
                console, paths, contacts_file, joinings, start, until, planned, as_json
            )
        finally:
            sink.stop()
            server.cleanup()


def _run(
    console: Console,
    paths: Sequence[Path],
    contacts_file: Path,
    joinings: list[Joining],
    start: datetime | None,
    until: datetime | None,
    planned: list[PlannedInteraction],
    as_json: bool,
) -> int:
    import dramatiq

    from services.cli.output import print_outcome
    from services.tiles.actors import broker
    from shared.contacts import import_contacts
    from shared.db import close_pool, migrate
    from shared.golive import go_live_paths

    first = start or _earliest_start(paths)
    virtual = clock.ManualClock(first)
    clock.use_clock(virtual)
    migrate()
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    try:
        with psycopg.connect(get_settings().database_url, autocommit=True) as conn:
            report = import_contacts(conn, contacts_file)
            for bad in report.bad_rows:
                console.print(
                    f"[yellow]{contacts_file}:{bad.line}: "
                    f"skipped: {bad.reason}[/yellow]"
                )
            outcome = go_live_paths(conn, paths, virtual.now())
            if outcome.errors:
                print_outcome(console, outcome, as_json=False, checked_database=True)
                return 1
            _advance(conn, broker, worker, virtual, until, planned, joinings)
            journey_ids = [result.journey_id for result in outcome.journeys]
            results = [contact_paths(conn, journey_id) for journey_id in journey_ids]
    finally:
        worker.stop()
        close_pool()
    print_report(
        console, results, as_json=as_json, notes=[p.note for p in planned if p.note]
    )
    return 0


def _earliest_start(paths: Sequence[Path]) -> datetime:
    from shared.definitions import Journey
    from shared.windows import load_zone, to_utc

    documents, _ = _load(paths)
    starts = [
        to_utc(
            doc.start,
            load_zone(doc.timezone),
            ambiguous=doc.ambiguous_time,
            nonexistent=doc.nonexistent_time,
        )
        for doc in documents
        if isinstance(doc, Journey)
    ]
    if not starts:
        raise JourneyError("the files hold no journey to simulate")
    return min(starts)


def _load(paths: Sequence[Path]) -> tuple[list[Any], list[Any]]:
    from shared.loading import load_documents

    loaded, problems = load_documents(paths)
    return [doc.model for doc in loaded if doc.model is not None], problems


def _advance(
    conn: psycopg.Connection,
    broker: Any,
    worker: Any,
    virtual: clock.ManualClock,
    until: datetime | None,
    planned: list[PlannedInteraction],
    joinings: list[Joining],
) -> None:
    """Jump the clock from event to event until nothing is left to happen."""
    from services.coordinator.loop import tick
    from shared.contacts import import_contacts

    remaining = sorted(planned, key=lambda item: item.at)
    joining = list(joinings)
    for _ in range(MAX_JUMPS):
        while joining and joining[0].at <= virtual.now():
            import_contacts(conn, joining.pop(0).path)
        _settle(conn, broker, worker, virtual, tick)
        remaining = apply_due(conn, remaining, virtual.now())
        _settle(conn, broker, worker, virtual, tick)
        moment = _next_event(conn, virtual.now(), remaining, joining)
        if moment is None or (until is not None and moment > until):
            if until is not None and until > virtual.now():
                virtual.set(until)
                _settle(conn, broker, worker, virtual, tick)
            return
        virtual.set(moment)
    raise JourneyError(f"the simulation did not settle within {MAX_JUMPS} clock jumps")


def _settle(
    conn: psycopg.Connection,
    broker: Any,
    worker: Any,
    virtual: clock.ManualClock,
    tick: Any,
) -> None:
    """Tick and drain the queues until no message and no fed contact is left.

    Gives up after a bounded number of rounds, so a contact stuck by a failing
    tile cannot hold the simulation forever; the report then shows it in progress.
    """
    for _ in range(SETTLE_ROUNDS):
        report = tick(now=virtual.now())
        for queue in list(broker.get_declared_queues()):
            broker.join(queue, fail_fast=True)
        worker.join()
        busy = conn.execute(
            "SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM steps s"
            " WHERE s.state = 'in_progress' AND NOT EXISTS (SELECT 1 FROM timers t"
            " WHERE t.journey_id = s.journey_id AND t.tile = s.tile"
            " AND t.contact = s.contact))"
        ).fetchone()
        if (
            report.feeding_done
            and report.fed == 0
            and report.released == 0
            and busy == (0,)
        ):
            return


def _next_event(
    conn: psycopg.Connection,
    now: datetime,
    remaining: list[PlannedInteraction],
    joining: list[Joining],
) -> datetime | None:
    row = conn.execute(
        "SELECT (SELECT min(due_at) FROM timers),"
        " (SELECT min(end_at) FROM journeys WHERE status = 'live' AND end_at > %s),"
        " (SELECT min(start_at) FROM journeys WHERE status = 'live' AND start_at > %s)",
        (now, now),
    ).fetchone()
    timer, end, start = row if row else (None, None, None)
    candidates = [moment for moment in (timer, start) if moment is not None]
    if remaining:
        candidates.append(remaining[0].at)
    if joining:
        candidates.append(joining[0].at)
    if candidates and end is not None:
        candidates.append(end)  # only worth reaching while something is pending
    later = [moment for moment in candidates if moment > now]
    return min(later) if later else None
