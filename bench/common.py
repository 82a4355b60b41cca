"""Helpers the benchmark scripts share: a scratch database and virtual host,
and the project's processes started against them."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.db import migrate  # noqa: E402
from tests.support import Processes  # noqa: E402

ADMIN_URL = os.environ.get(
    "JOURNEYS_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RABBITMQ = os.environ.get("JOURNEYS_BENCH_RABBITMQ", "127.0.0.1:5672")


@contextmanager
def scratch_database() -> Iterator[str]:
    name = f"journeys_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_vhost() -> Iterator[str]:
    vhost = f"journeys-bench-{secrets.token_hex(4)}"
    _ctl("add_vhost", vhost)
    _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@{RABBITMQ}/{vhost}"
    finally:
        _ctl("delete_vhost", vhost)


def _ctl(*args: str) -> None:
    subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60
    )


def processes(env: dict[str, str], logs: Path) -> Processes:
    return Processes(env=env, logs=logs)
