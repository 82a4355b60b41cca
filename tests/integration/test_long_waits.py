"""Long waits against a RabbitMQ node whose consumer timeout is 60 s: waits
are rows in PostgreSQL, so no message stays unacknowledged while contacts wait."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.contacts import import_contacts
from shared.golive import go_live_paths
from tests.support import (
    free_port,
    recipients,
    simple_contacts,
    wait_until,
    write_contacts,
    write_definitions,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Per test process, so that two test runs on one machine do not collide.
NODE = f"journeys-timeout60-{os.getpid()}@localhost"
PORT = free_port()
DIST_PORT = free_port()
CONSUMER_TIMEOUT_MS = 60_000


def _node_env(folder: Path) -> dict[str, str]:
    return {
        **os.environ,
        "RABBITMQ_NODENAME": NODE,
        "RABBITMQ_NODE_PORT": str(PORT),
        "RABBITMQ_DIST_PORT": str(DIST_PORT),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(folder / "pid"),
    }


def _ctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["rabbitmqctl", "-n", NODE, *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def short_timeout_broker() -> Iterator[str]:
    """A second RabbitMQ node on a free port with consumer_timeout = 60 s."""
    folder = Path("/tmp") / f"journeys-rabbit-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "mnesia").mkdir(parents=True)
    (folder / "log").mkdir()
    (folder / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = {PORT}\nconsumer_timeout = {CONSUMER_TIMEOUT_MS}\n"
    )
    (folder / "enabled_plugins").write_text("[].\n")
    if _has_user("rabbitmq"):  # the server drops root and runs as this user
        for path in [folder, *folder.rglob("*")]:
            shutil.chown(path, "rabbitmq", "rabbitmq")
    subprocess.run(
        ["rabbitmq-server", "-detached"], env=_node_env(folder), check=True, timeout=60
    )
    wait_until(
        lambda: _ctl("await_startup").returncode == 0,
        90,
        what="the second RabbitMQ node",
    )
    timeout = _ctl("eval", "application:get_env(rabbit, consumer_timeout).").stdout
    assert str(CONSUMER_TIMEOUT_MS) in timeout
    yield f"amqp://guest:guest@127.0.0.1:{PORT}/%2F"
    _ctl("stop")
    shutil.rmtree(folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_long_wait_outlives_consumer_timeout(
    db, processes, smtp_sink, virtual_time, short_timeout_broker, tmp_path
):
    """Email 1, wait 5 minutes, email 2, for 3 contacts. The contacts wait
    longer than the consumer timeout in real time, then the clock moves on."""
    processes.env["JOURNEYS_BROKER_URL"] = processes.broker_url = short_timeout_broker
    processes.purge_queues()
    start = datetime(2027, 6, 1, 9, 0, tzinfo=UTC)
    virtual_time.set(start)
    tiles = [
        {"id": "email-1", "type": "email", "email": "first"},
        {"id": "wait-5m", "type": "wait", "duration": "5m"},
        {"id": "email-2", "type": "email", "email": "second"},
    ]
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(3)))
    path = write_definitions(
        tmp_path,
        start="2027-06-01 09:00",
        end="2027-06-02 09:00",
        emails={"first": "live", "second": "live"},
        tiles=tiles,
    )
    assert not go_live_paths(db, [path], virtual_time.now()).errors
    processes.start_workers(processes=1, threads=4)
    processes.start_coordinator()
    wait_until(
        lambda: len(smtp_sink.handler.messages) == 3, 60, what="the first emails"
    )

    held = []
    for _ in range(14):  # 70 s of real time, past the 60 s consumer timeout
        time.sleep(5)
        held.append(
            sum(
                processes.queue_depth(q)
                for q in ("tile.wait", "tile.wait.DQ", "tile.email")
            )
        )
        assert len(smtp_sink.handler.messages) == 3
    assert held == [0] * 14

    virtual_time.set(start + timedelta(minutes=5, seconds=1))
    wait_until(
        lambda: len(smtp_sink.handler.messages) == 6, 60, what="the second emails"
    )
    time.sleep(2)

    assert Counter(recipients(smtp_sink)) == {f"c{n}@example.com": 2 for n in (1, 2, 3)}
    firsts = dict(
        db.execute(
            "SELECT contact, finished_at FROM sends WHERE tile = 'email-1'"
        ).fetchall()
    )
    for contact, finished in db.execute(
        "SELECT contact, finished_at FROM sends WHERE tile = 'email-2'"
    ):
        assert finished - firsts[contact] >= timedelta(minutes=5)
    waits = db.execute(
        "SELECT state, count(*) FROM steps WHERE tile = 'wait-5m' GROUP BY state"
    ).fetchall()
    assert waits == [("completed", 3)]
    logs = processes.log_text()
    for sign in ("PRECONDITION_FAILED", "consumer ack timed out", "ChannelClosed"):
        assert sign not in logs
