"""Helpers for tests: definition files, contacts, separate processes, queues."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pika
import psycopg
import yaml

ROOT = Path(__file__).resolve().parent.parent
TABLES = (
    "contacts",
    "contact_fields",
    "definitions",
    "journey_versions",
    "journeys",
    "entries",
    "steps",
    "outbox",
    "sends",
    "timers",
    "interactions",
)
TILE_QUEUES = (
    "tile.audience",
    "tile.email",
    "tile.wait",
    "tile.condition",
    "tile.split",
    "tile.exit",
    "events.interactions",
    "events.contacts",
    "events.segments",
)

HTML = (
    "<p>Hello {{ contact.firstname }},</p><p>news for you.</p>"
    '<p>{{ content.postal_address }} <a href="{{ content.subscription_center_url }}">unsubscribe</a></p>'
)


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def local(moment: datetime, zone: str) -> str:
    from zoneinfo import ZoneInfo

    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")


def write_definitions(
    folder: Path,
    *,
    journey: str = "test-journey",
    start: str = "2026-01-01 00:00",
    end: str = "2035-01-01 00:00",
    timezone: str = "UTC",
    segment: dict[str, Any] | None = None,
    tiles: list[dict[str, Any]] | None = None,
    emails: dict[str, str] | None = None,
    status: str = "live",
) -> Path:
    """Write a complete set of definitions to one YAML file and return its path."""
    emails = emails if emails is not None else {"hello": "live"}
    documents: list[dict[str, Any]] = [
        {
            "kind": "content-settings",
            "name": "default",
            "status": "live",
            "sender": "Test Sender <news@sender.example.com>",
            "postal_address": "Teststraße 1, 10115 Berlin",
            "subscription_center_url": "https://prefs.example.com/unsubscribe",
        },
        {
            "kind": "segment",
            "name": "audience",
            "status": "live",
            **(segment or {"where": []}),
        },
    ]
    for name, email_status in emails.items():
        documents.append(
            {
                "kind": "email",
                "name": name,
                "status": email_status,
                "subject": "Hello {{ contact.firstname }}",
                "html": HTML,
            }
        )
    documents.append(
        {
            "kind": "journey",
            "name": journey,
            "status": status,
            "start": start,
            "end": end,
            "timezone": timezone,
            "content_settings": "default",
            "audience": {"segment": "audience"},
            "tiles": tiles or [{"id": "send-hello", "type": "email", "email": "hello"}],
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{journey}.yaml"
    path.write_text(
        yaml.safe_dump_all(documents, allow_unicode=True, sort_keys=False),
        encoding="utf-8",
    )
    return path


def write_contacts(path: Path, rows: Iterable[dict[str, str]]) -> Path:
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns.extend(name for name in row if name not in columns)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def simple_contacts(count: int, prefix: str = "c") -> list[dict[str, str]]:
    return [
        {
            "contact_id": f"{prefix}{n}",
            "email": f"{prefix}{n}@example.com",
            "firstname": f"Name{n}",
        }
        for n in range(1, count + 1)
    ]


def recipients(sink: Any) -> list[str]:
    return [
        str(message["To"].addresses[0].addr_spec).lower()
        for message in sink.handler.parsed()
    ]


def rss_peak_mb(pid: int) -> float:
    """Peak resident memory of a process (VmHWM), in megabytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_pids(pid: int) -> list[int]:
    """The process and all its descendants."""
    result = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            result.extend(tree_pids(int(child)))
    return result


class Processes:
    """Workers and coordinators started as separate processes for one test."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = {**os.environ, **env}
        self.broker_url = env["JOURNEYS_BROKER_URL"]
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.started: list[subprocess.Popen] = []
        self.metrics_ports: dict[int, int] = {}

    def _start(
        self, role: str, args: list[str], extra_env: dict[str, str]
    ) -> subprocess.Popen:
        with open(self.logs / f"{role}-{len(self.started)}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", *args],
                env={**self.env, **extra_env},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def start_workers(self, processes: int = 2, threads: int = 4) -> subprocess.Popen:
        port = free_port()
        folder = self.logs / f"metrics-{len(self.started)}"
        process = self._start(
            "worker",
            ["worker", "-p", str(processes), "-t", str(threads)],
            {"JOURNEYS_METRICS_PORT": str(port), "JOURNEYS_METRICS_DIR": str(folder)},
        )
        self.metrics_ports[process.pid] = port
        return process

    def start_tracking(self) -> subprocess.Popen:
        """Start the tracking service on the port that the email links name."""
        process = self._start("tracking", ["tracking"], {})
        port = int(self.env["JOURNEYS_TRACKING_PORT"])
        wait_until(lambda: _answers(port), 30, what="the tracking service")
        return process

    def start_coordinator(self) -> subprocess.Popen:
        port = free_port()
        process = self._start(
            "coordinator",
            ["coordinator"],
            {"JOURNEYS_COORDINATOR_METRICS_PORT": str(port)},
        )
        self.metrics_ports[process.pid] = port
        return process

    def kill(self, process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill(process)

    def stop_all(self) -> None:
        for process in self.started:
            self.stop(process)
            try:
                os.killpg(process.pid, signal.SIGKILL)  # leftovers of the group
            except ProcessLookupError:
                pass

    def log_text(self) -> str:
        return "\n".join(
            path.read_text(errors="replace")[-4000:]
            for path in sorted(self.logs.glob("*.log"))
        )

    def _channel(self) -> tuple[pika.BlockingConnection, Any]:
        # A passive declare of a queue that does not exist yet closes the
        # channel with a 404, which pika logs as a warning; that is expected here.
        logging.getLogger("pika").setLevel(logging.CRITICAL)
        connection = pika.BlockingConnection(pika.URLParameters(self.broker_url))
        return connection, connection.channel()

    def purge_queues(self) -> None:
        connection, channel = self._channel()
        try:
            for queue in TILE_QUEUES:
                for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                    try:
                        channel.queue_purge(name)
                    except pika.exceptions.ChannelClosedByBroker:
                        channel = connection.channel()
        finally:
            connection.close()

    def queue_depth(self, queue: str) -> int:
        connection, channel = self._channel()
        try:
            return int(channel.queue_declare(queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        finally:
            connection.close()

    def publish(
        self, queue: str, actor: str, payloads: Iterable[dict[str, Any]]
    ) -> int:
        """Publish Dramatiq messages the way a producer in another language does."""
        connection, channel = self._channel()
        count = 0
        try:
            channel.confirm_delivery()
            for payload in payloads:
                body = {
                    "queue_name": queue,
                    "actor_name": actor,
                    "args": [payload],
                    "kwargs": {},
                    "options": {},
                    "message_id": str(uuid.uuid4()),
                    "message_timestamp": int(time.time() * 1000),
                }
                channel.basic_publish(
                    "",
                    queue,
                    json.dumps(body).encode(),
                    pika.BasicProperties(delivery_mode=2),
                )
                count += 1
        finally:
            connection.close()
        return count


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class VirtualTime:
    """Moves the clock of every process started with this offset file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.write_text("0")

    def set(self, moment: datetime) -> None:
        offset = (moment - datetime.now(UTC)).total_seconds()
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(repr(offset))
        temporary.replace(self.path)  # atomic, so no process reads half a number

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=float(self.path.read_text()))

    def pass_timers(self, conn: psycopg.Connection, kind: str, count: int) -> None:
        """Wait for `count` timers of this kind, then move the clock just past
        the latest, however long the processes took to set them."""
        query = "SELECT count(*), max(due_at) FROM timers WHERE kind = %s"
        wait_until(
            lambda: conn.execute(query, (kind,)).fetchone()[0] == count,
            60,
            what=f"{count} {kind} timers",
        )
        latest = conn.execute(query, (kind,)).fetchone()[1]
        self.set(max(latest, self.now()) + timedelta(seconds=1))


def step_counts(conn: psycopg.Connection, tile: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT coalesce(outcome, state), count(*) FROM steps WHERE tile = %s GROUP BY 1",
        (tile,),
    ).fetchall()
    return {key: int(value) for key, value in rows}
