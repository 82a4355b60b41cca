"""Fixtures: a fresh PostgreSQL database and RabbitMQ virtual host per test
session, an SMTP sink per test, and helpers that start workers and the
coordinator as separate processes."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

# The pytest process itself only ever uses the in-process broker: tile actors
# bind to one broker at import, and the RabbitMQ tests run the actors in
# separate worker processes instead.
os.environ["JOURNEYS_BROKER_URL"] = "stub://"
os.environ.setdefault("JOURNEYS_SECRET_KEY", "test-secret-key")

from services.embedded.sink import SmtpSink
from shared.config import get_settings
from shared.db import close_pool, migrate
from tests.support import TABLES, Processes, VirtualTime, free_port

ADMIN_URL = os.environ.get(
    "JOURNEYS_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RABBITMQ_HOST = os.environ.get("JOURNEYS_TEST_RABBITMQ", "127.0.0.1:5672")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A new, migrated database for this test session; dropped afterwards."""
    name = f"journeys_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    migrate(url)
    yield url
    close_pool()
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[psycopg.Connection]:
    """An empty database for one test, and this process's settings pointing at it."""
    monkeypatch.setenv("JOURNEYS_DATABASE_URL", database_url)
    get_settings.cache_clear()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        yield conn
    close_pool()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """A RabbitMQ virtual host of this test session's own, deleted afterwards."""
    vhost = f"journeys-test-{os.getpid()}-{secrets.token_hex(3)}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@{RABBITMQ_HOST}/{vhost}"
    _rabbitmqctl("delete_vhost", vhost)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60
    )


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def processes(
    db: psycopg.Connection,
    database_url: str,
    rabbitmq_url: str,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> Iterator[Processes]:
    """Starts workers and coordinators against this test's database, virtual
    host and SMTP sink; stops them all when the test ends."""
    tracking_port = free_port()
    group = Processes(
        env={
            "JOURNEYS_TRACKING_PORT": str(tracking_port),
            "JOURNEYS_TRACKING_URL": f"http://127.0.0.1:{tracking_port}",
            "JOURNEYS_DATABASE_URL": database_url,
            "JOURNEYS_BROKER_URL": rabbitmq_url,
            "JOURNEYS_SMTP_URL": smtp_sink.url,
            "JOURNEYS_SECRET_KEY": os.environ["JOURNEYS_SECRET_KEY"],
            "JOURNEYS_TICK_SECONDS": "0.5",
            "JOURNEYS_METRICS_HOST": "127.0.0.1",
            "JOURNEYS_CLOCK_OFFSET_FILE": str(tmp_path / "clock-offset"),
        },
        logs=tmp_path / "logs",
    )
    group.purge_queues()
    yield group
    group.stop_all()
    group.purge_queues()


@pytest.fixture
def virtual_time(processes: Processes) -> VirtualTime:
    """The clock of the processes this test starts; it runs at real speed
    from wherever the test last set it."""
    return VirtualTime(Path(processes.env["JOURNEYS_CLOCK_OFFSET_FILE"]))
