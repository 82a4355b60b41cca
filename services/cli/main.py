"""The operators' command-line tool: `journeys`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from rich.console import Console

from services.cli.output import print_outcome, print_status, status_payload
from shared import clock
from shared.config import get_settings
from shared.db import migrate as apply_migrations
from shared.errors import JourneyError, SettingsError

app = typer.Typer(
    help="Define, check, put live and watch customer journeys.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
contacts_app = typer.Typer(help="Manage contacts.", no_args_is_help=True)


@app.callback()
def _settings_or_exit() -> None:
    """Read the settings before any command, so that an invalid variable
    ends the command with its name instead of a traceback later on."""
    try:
        get_settings()
    except SettingsError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from error


app.add_typer(contacts_app, name="contacts")
# Tables stay readable when the output goes to a file or a pipe, where Rich
# would otherwise assume 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True)

Paths = Annotated[
    list[Path], typer.Argument(help="Definition files or folders (YAML or JSON).")
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")
]


def _setup_logging(level: int = logging.WARNING) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _connect() -> psycopg.Connection:
    url = get_settings().database_url
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as error:
        errors.print(
            f"[red]cannot connect to PostgreSQL[/red] at JOURNEYS_DATABASE_URL: {error}"
        )
        raise typer.Exit(2) from error
    apply_migrations(url)
    return conn


MESSAGES = {
    "contact-upsert": ("events.contacts", "contact_upsert", "ContactUpsert"),
    "segment-membership": (
        "events.segments",
        "segment_membership",
        "SegmentMembershipChange",
    ),
    "interaction-event": (
        "events.interactions",
        "interaction_event",
        "InteractionEvent",
    ),
}


def _message_model(kind: str):  # type: ignore[no-untyped-def]
    from services.events import models

    if kind not in MESSAGES:
        errors.print(
            f"unknown message kind {kind!r}; expected one of {', '.join(MESSAGES)}"
        )
        raise typer.Exit(2)
    return getattr(models, MESSAGES[kind][2])


@app.command()
def schema(
    message: Annotated[
        str | None,
        typer.Option(
            help="Print a queue message's schema instead: " + ", ".join(MESSAGES)
        ),
    ] = None,
) -> None:
    """Print the JSON Schema of definition files, for editors, or of a queue message."""
    from shared.definitions import document_adapter

    if message is not None:
        print(json.dumps(_message_model(message).model_json_schema(), indent=2))
        return
    print(json.dumps(document_adapter.json_schema(by_alias=True), indent=2))


@app.command()
def publish(
    kind: Annotated[
        str,
        typer.Argument(help="contact-upsert, segment-membership or interaction-event"),
    ],
    file: Annotated[
        Path,
        typer.Argument(
            help=(
                "JSON file with one message object or a list of them; "
                "- for standard input"
            )
        ),
    ],
) -> None:
    """Publish messages onto the queue that other systems use, after validating them."""
    from pydantic import ValidationError

    from services.tiles import actors  # noqa: F401  (binds the actors to the broker)
    from shared.broker import configure_broker
    from shared.intake import describe

    model = _message_model(kind)
    text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        errors.print(
            f"{file}: invalid JSON at line {error.lineno}, column {error.colno}: "
            f"{error.msg}"
        )
        raise typer.Exit(1) from error
    items = data if isinstance(data, list) else [data]
    problems = []
    for index, item in enumerate(items):
        try:
            model.model_validate(item)
        except ValidationError as error:
            reasons = "; ".join(describe(e) for e in error.errors(include_url=False))
            problems.append(f"{file}: message #{index + 1}: {reasons}")
    if problems:
        for problem in problems:
            errors.print(problem, highlight=False)
        raise typer.Exit(1)
    actor = configure_broker().get_actor(MESSAGES[kind][1])
    for item in items:
        actor.send(item)
    console.print(f"published {len(items)} message(s) to {MESSAGES[kind][0]}")


# Help that is too long for one source line goes in help= rather than in a
# docstring, because Typer's Rich help shows a docstring's line breaks in the
# command list.
@app.command(
    name="check",
    help=(
        "Check for errors: report every problem at once; "
        "exit 1 when there is any error."
    ),
)
def check_command(paths: Paths, as_json: AsJson = False) -> None:
    from shared.golive import check_paths

    conn = _try_connect()
    try:
        outcome, _ = check_paths(paths, conn, for_go_live=False, now=clock.now())
    finally:
        if conn is not None:
            conn.close()
    print_outcome(console, outcome, as_json=as_json, checked_database=conn is not None)
    if outcome.errors:
        raise typer.Exit(1)


def _try_connect() -> psycopg.Connection | None:
    """Connect for a check when the database responds and has the schema; a
    check never changes the database and also works offline."""
    try:
        conn = psycopg.connect(
            get_settings().database_url, autocommit=True, connect_timeout=3
        )
    except psycopg.OperationalError:
        return None
    exists = conn.execute(
        "SELECT to_regclass('schema_migrations') IS NOT NULL"
    ).fetchone()
    if not exists or not exists[0]:
        conn.close()
        return None
    return conn


@app.command(
    name="go-live",
    help=(
        "Publish the definitions and put their journeys live, "
        "if the check finds no error."
    ),
)
def go_live_command(paths: Paths, as_json: AsJson = False) -> None:
    from shared.golive import go_live_paths

    with _connect() as conn:
        outcome = go_live_paths(conn, paths, clock.now())
    print_outcome(console, outcome, as_json=as_json, checked_database=True)
    if outcome.errors:
        raise typer.Exit(1)


@app.command()
def stop(name: str) -> None:
    """Stop a live journey now: every contact still inside it stops where it is."""
    from shared.store import end_journey, journey_row

    with _connect() as conn, conn.transaction():
        journey = _journey_or_exit(conn, name, journey_row)
        if journey["status"] != "live":
            console.print(f"journey {name!r} is already {journey['status']}")
            return
        stopped = end_journey(
            conn, journey["id"], "stopped", "journey_stopped", clock.now()
        )
    console.print(f"journey {name!r} stopped; {stopped} contacts were still inside it")


@app.command()
def withdraw(
    kind: Annotated[str, typer.Argument(help="email, segment or content-settings")],
    name: str,
) -> None:
    """Take a published email, segment or content settings back to draft."""
    with _connect() as conn:
        changed = conn.execute(
            "UPDATE definitions SET status = 'draft', revision = revision + 1,"
            " body = jsonb_set(body, '{status}', '\"draft\"'), updated_at = now()"
            " WHERE kind = %s AND name = %s AND status = 'live'",
            (kind, name),
        ).rowcount
    if not changed:
        errors.print(f"{kind} {name!r} not found or not published")
        raise typer.Exit(1)
    console.print(
        f"{kind} {name!r} withdrawn; tiles that use it now fail instead of sending"
    )


@app.command(
    help=(
        "Show per tile how many contacts entered, are in progress, "
        "completed, stopped or failed."
    )
)
def status(name: str, as_json: AsJson = False) -> None:
    from shared.store import journey_row, tile_counts, version_counts

    with _connect() as conn:
        journey = _journey_or_exit(conn, name, journey_row)
        tiles = tile_counts(conn, journey["id"])
        versions = version_counts(conn, journey["id"])
    payload = status_payload(journey, tiles, clock.now())
    payload["versions"] = versions
    if as_json:
        print(json.dumps(payload, indent=2))
    else:
        print_status(console, payload)


@app.command(
    help=(
        "Show email results with rates, branch counts "
        "and how contacts left the journey."
    )
)
def insights(name: str, as_json: AsJson = False) -> None:
    from services.cli.output import print_insights
    from shared.insights import journey_insights
    from shared.store import journey_row

    with _connect() as conn:
        journey = _journey_or_exit(conn, name, journey_row)
        payload = journey_insights(conn, journey["id"])
    if as_json:
        print(json.dumps(payload, indent=2))
    else:
        print_insights(console, payload)


def _journey_or_exit(conn, name, journey_row):  # type: ignore[no-untyped-def]
    try:
        return journey_row(conn, name)
    except JourneyError as error:
        errors.print(str(error))
        raise typer.Exit(1) from error


@app.command()
def migrate() -> None:
    """Apply the database schema migrations that are not applied yet."""
    applied = apply_migrations(get_settings().database_url)
    console.print(
        f"applied {len(applied)} migration(s): "
        f"{', '.join(applied) or 'schema is up to date'}"
    )


@contacts_app.command(name="import")
def import_command(file: Path) -> None:
    """Import contacts from a CSV file with a header row; re-importing updates them."""
    from services.cli.output import import_with_progress

    with _connect() as conn:
        report = import_with_progress(console, conn, file)
    if report is None:
        raise typer.Exit(1)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def worker(ctx: typer.Context) -> None:
    """Run the tile actors as Dramatiq worker processes.

    Extra options go to `dramatiq`, for example -p 2 -t 4 for two processes of
    four threads. Each thread keeps JOURNEYS_SMTP_CONNECTIONS_PER_THREAD SMTP
    connections open.
    """
    settings = get_settings()
    apply_migrations(settings.database_url)
    folder = Path(settings.metrics_dir)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ.update(
        dramatiq_prom_db=str(folder),
        dramatiq_prom_port=str(settings.metrics_port),
        dramatiq_prom_host=settings.metrics_host,
        PROMETHEUS_MULTIPROC_DIR=str(folder),
    )
    command = [sys.executable, "-m", "dramatiq", "services.tiles.actors", *ctx.args]
    os.execv(sys.executable, command)


@app.command(
    help=(
        "Run the coordinator: journey windows, segment feeding, "
        "outbox recovery, /metrics."
    )
)
def coordinator() -> None:
    from prometheus_client import REGISTRY, start_http_server

    from services.coordinator.loop import run_forever
    from services.coordinator.metrics import JourneyCollector
    from services.tiles import actors  # noqa: F401  (the actors must exist to be sent to)

    _setup_logging(logging.INFO)
    settings = get_settings()
    apply_migrations(settings.database_url)
    REGISTRY.register(JourneyCollector())
    start_http_server(settings.coordinator_metrics_port, addr=settings.metrics_host)
    stop_event = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_event.set())
    run_forever(stop_event, settings)


@app.command()
def simulate(
    paths: Paths,
    contacts: Annotated[Path, typer.Option("--contacts", help="CSV file of contacts.")],
    start: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Virtual start, ISO 8601 with offset; the journey's start by default.",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            help=(
                "Virtual end, ISO 8601 with offset; "
                "when nothing is left to happen by default."
            ),
        ),
    ] = None,
    interactions: Annotated[
        Path | None,
        typer.Option("--interactions", help="CSV of contact,tile,kind,at[,link] rows."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Run journeys on a virtual clock in one process, sending nothing, and print
    every contact's path and the per-tile counts."""
    from services.simulation.run import simulate as run_simulation

    _setup_logging()
    code = run_simulation(
        console,
        paths,
        contacts,
        start=_aware(start, "--from"),
        until=_aware(until, "--until"),
        interactions_file=interactions,
        as_json=as_json,
    )
    raise typer.Exit(code)


def _aware(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO 8601 date-time", param_hint=option
        ) from None
    if moment.tzinfo is None:
        raise typer.BadParameter(
            f"{text!r} has no offset; add one, such as 2027-05-03T09:00:00+02:00",
            param_hint=option,
        )
    return moment


@app.command()
def tracking() -> None:
    """Run the tracking service: open pixel, click redirect, one-click unsubscribe."""
    from services.tracking.app import serve

    _setup_logging(logging.INFO)
    settings = get_settings()
    apply_migrations(settings.database_url)
    serve(settings)


@app.command()
def run(
    paths: Paths,
    contacts: Annotated[
        Path, typer.Option("--contacts", help="CSV file of contacts to import first.")
    ],
    outbox: Annotated[
        Path,
        typer.Option(
            "--outbox", help="Folder that receives every sent email as an .eml file."
        ),
    ],
    data: Annotated[
        Path, typer.Option(help="Folder of the embedded PostgreSQL's data.")
    ] = Path(".journeys/pgdata"),
    threads: Annotated[int, typer.Option(help="Worker threads.")] = 8,
) -> None:
    """Run a journey in one process, with nothing else installed.

    Uses an embedded PostgreSQL, the in-process broker and a loopback SMTP
    server that writes each email to --outbox; exits when no contact is in flight.
    """
    from services.embedded.run import run_embedded

    _setup_logging()
    code = run_embedded(
        console,
        paths,
        contacts_file=contacts,
        outbox=outbox,
        data_dir=data,
        threads=threads,
    )
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
