"""Faults during a live run: killed workers, a restarted broker, dropped
database connections, a misbehaving SMTP server, two coordinators at once and
a journey that ends while contacts wait.

Every test ends with check_invariants: no address got two emails from one
tile, every contact that entered is accounted for, nothing is stuck, and the
email counts of `journeys status --json` equal the sends table.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import psycopg
import pytest

from examples.make_contacts import write_csv
from services.embedded.sink import SmtpSink
from shared.contacts import import_contacts
from shared.golive import go_live_paths
from shared.mail import normalize_address
from tests.support import (
    ROOT,
    TILE_QUEUES,
    Processes,
    free_port,
    simple_contacts,
    wait_until,
    write_contacts,
    write_definitions,
)

pytestmark = pytest.mark.integration

JOURNEY = "test-journey"
MAIL_TILE = "send-hello"


def _one(db: psycopg.Connection, query: str, params: tuple = ()) -> tuple[Any, ...]:
    """Return the only row of a query."""
    row = db.execute(query, params).fetchone()
    assert row is not None, query
    return row


# --- the invariant check that every test ends with ----------------------------


def check_invariants(
    db: psycopg.Connection,
    processes: Processes,
    sink: SmtpSink,
    contacts: int,
    label: str,
) -> Counter[str]:
    """Assert that a finished run lost and duplicated nothing, print what was
    checked, and return the email steps' outcomes, counted.

    `contacts` is how many contacts must have entered the journey.
    """
    entered, distinct, inside = _one(
        db,
        "SELECT count(*), count(DISTINCT contact),"
        " count(*) FILTER (WHERE state = 'in_progress') FROM entries",
    )
    assert entered == contacts, f"{entered} entries for {contacts} contacts"
    assert distinct == contacts, f"{distinct} distinct contacts entered"
    assert inside == 0, f"{inside} entries still in progress"
    (stuck,) = _one(
        db,
        "SELECT count(*) FROM steps s WHERE s.state = 'in_progress' AND NOT EXISTS"
        " (SELECT 1 FROM timers t WHERE t.journey_id = s.journey_id"
        " AND t.tile = s.tile AND t.contact = s.contact)",
    )
    assert stuck == 0, f"{stuck} steps in progress without a timer"
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
    sending = db.execute("SELECT count(*) FROM sends WHERE state = 'sending'")
    assert sending.fetchone() == (0,), "a send record was left in state 'sending'"

    status = journey_status(processes)
    email_tiles = [tile["id"] for tile in status["tiles"] if tile["type"] == "email"]
    sends = {
        row[0]: row[1:]
        for row in db.execute(
            "SELECT message_id, tile, lower(address) FROM sends"
            " WHERE message_id IS NOT NULL"
        )
    }

    # Emails in the sink, by the send record whose Message-ID they carry.
    per_message: Counter[str] = Counter()
    per_address: Counter[tuple[str, str]] = Counter()
    strays = []
    for message_id, address in sink_messages(sink):
        send = sends.get(message_id)
        if send is None or send[1] != address:
            strays.append((message_id, address))
            continue
        per_message[message_id] += 1
        per_address[(send[0], address)] += 1
    duplicates = sum(count - 1 for count in per_address.values())
    assert strays == [], (
        f"emails in the sink that no send record explains: {strays[:10]}"
    )
    assert duplicates == 0, [key for key, n in per_address.items() if n > 1][:10]

    outcomes: Counter[str] = Counter()
    unconfirmed_in_sink = 0
    wrong = []
    rows = db.execute(
        "SELECT tile, contact, s.state, s.outcome, s.reason, se.state, se.message_id"
        " FROM steps s LEFT JOIN sends se USING (journey_id, tile, contact)"
        " WHERE tile = ANY(%s::text[])",
        (email_tiles,),
    ).fetchall()
    for tile, contact, state, outcome, reason, send_state, message_id in rows:
        emails = per_message.get(message_id, 0)
        kind = _email_step_kind(state, outcome)
        outcomes[kind] += 1
        if kind == "unconfirmed":
            unconfirmed_in_sink += emails
        problem = _email_step_problem(kind, state, reason, send_state, emails)
        if problem:
            wrong.append(f"{tile} contact {contact}: {problem}")
    assert wrong == [], f"{len(wrong)} email steps not accounted for: {wrong[:10]}"

    for tile in status["tiles"]:
        if tile["type"] != "email":
            continue
        by_state: dict[str, int] = dict(
            db.execute(
                "SELECT state, count(*) FROM sends WHERE tile = %s GROUP BY state",
                (tile["id"],),
            ).fetchall()
        )
        (unsent_failures,) = _one(
            db,
            "SELECT count(*) FROM steps s WHERE s.tile = %s AND s.state = 'failed'"
            " AND NOT EXISTS (SELECT 1 FROM sends se WHERE se.journey_id = s.journey_id"
            " AND se.tile = s.tile AND se.contact = s.contact)",
            (tile["id"],),
        )
        assert tile["sent"] == by_state.get("accepted", 0), (tile, by_state)
        assert tile["bounced"] == by_state.get("rejected", 0), (tile, by_state)
        assert tile["unconfirmed"] == by_state.get("unconfirmed", 0), (tile, by_state)
        assert tile["failed"] == (
            by_state.get("rejected", 0)
            + by_state.get("unconfirmed", 0)
            + by_state.get("deferred", 0)
            + unsent_failures
        ), (tile, by_state)
        assert tile["in_progress"] == 0, tile
    first_tile = status["tiles"][1]
    if first_tile["type"] == "email":
        assert first_tile["entered"] == contacts, first_tile

    print(
        f"\n{label}: checked {contacts} contacts: {outcomes['sent']} sent,"
        f" {outcomes['unconfirmed']} unconfirmed ({unconfirmed_in_sink} of them"
        f" in the sink), {outcomes['bounced']} bounced,"
        f" {outcomes['failed']} failed, {outcomes['blocked']} blocked,"
        f" {outcomes['stopped']} stopped, {len(per_message)} emails in the sink,"
        f" {duplicates} duplicates"
    )
    return outcomes


def _email_step_kind(state: str, outcome: str | None) -> str:
    if outcome in ("sent", "unconfirmed", "bounced", "blocked"):
        return outcome
    return state


def _email_step_problem(
    kind: str, state: str, reason: str | None, send_state: str | None, emails: int
) -> str | None:
    """Return what is wrong with one finished email step, or None."""
    if kind == "sent" and (state, send_state, emails) != ("completed", "accepted", 1):
        return f"sent, but step {state}, send {send_state}, {emails} emails"
    if kind == "unconfirmed" and (send_state != "unconfirmed" or emails > 1):
        return f"unconfirmed, but send {send_state}, {emails} emails"
    if kind == "bounced" and (send_state, emails) != ("rejected", 0):
        return f"bounced, but send {send_state}, {emails} emails"
    if kind == "blocked" and send_state is not None:
        return f"blocked, but send {send_state}"
    if kind == "failed" and (send_state not in (None, "deferred") or emails):
        return f"failed, but send {send_state}, {emails} emails"
    if kind == "stopped" and emails > 1:
        return f"stopped with {emails} emails"
    if (
        kind in ("unconfirmed", "bounced", "blocked", "failed", "stopped")
        and not reason
    ):
        return f"{kind} without a reason"
    if kind not in ("sent", "unconfirmed", "bounced", "blocked", "failed", "stopped"):
        return f"unexpected step state {state}"
    return None


def sink_messages(sink: SmtpSink) -> list[tuple[str, str]]:
    """Return the Message-ID and lowered To address of every email in the sink."""
    parser = BytesHeaderParser(policy=policy.default)
    with sink.handler.lock:
        raw = list(sink.handler.messages)
    result = []
    for data in raw:
        headers = parser.parsebytes(data)
        address = headers["To"].addresses[0].addr_spec.lower()
        result.append((str(headers["Message-ID"]).strip(), address))
    return result


def journey_status(processes: Processes, name: str = JOURNEY) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "status", name, "--json"],
        env=processes.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- waiting for a run to finish ----------------------------------------------


def _unfinished(db: psycopg.Connection, contacts: int) -> str | None:
    """Return what is still unfinished, or None when every contact entered
    and nothing is in flight."""
    entered, inside, stuck, outbox = _one(
        db,
        "SELECT (SELECT count(*) FROM entries),"
        " (SELECT count(*) FROM entries WHERE state = 'in_progress'),"
        " (SELECT count(*) FROM steps s WHERE s.state = 'in_progress' AND NOT EXISTS"
        "  (SELECT 1 FROM timers t WHERE t.journey_id = s.journey_id"
        "   AND t.tile = s.tile AND t.contact = s.contact)),"
        " (SELECT count(*) FROM outbox)",
    )
    if (entered, inside, stuck, outbox) == (contacts, 0, 0, 0):
        return None
    return (
        f"{entered} of {contacts} entered, {inside} entries in progress,"
        f" {stuck} steps in progress, {outbox} outbox rows"
    )


def wait_finished(
    db: psycopg.Connection,
    processes: Processes,
    contacts: int,
    timeout: float,
    watched: dict[str, subprocess.Popen],
) -> float:
    """Wait until the run is finished and return the seconds it took.

    Fails with the steps, sends and queues as they are on timeout, or as soon
    as one of the `watched` processes, named by role, has exited.
    """
    started = time.monotonic()
    deadline = started + timeout
    while (left := _unfinished(db, contacts)) is not None:
        exited = [role for role, process in watched.items() if not _alive(process)]
        if exited:
            pytest.fail(
                f"{' and '.join(exited)} exited before the run finished: {left}\n"
                f"{_diagnosis(db, processes)}"
            )
        if time.monotonic() > deadline:
            diagnosis = _diagnosis(db, processes)
            pytest.fail(f"run not finished after {timeout} s: {left}\n{diagnosis}")
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    time.sleep(2)  # a duplicate email still on its way would arrive now
    return elapsed


def _diagnosis(db: psycopg.Connection, processes: Processes) -> str:
    steps = db.execute(
        "SELECT tile, state, coalesce(outcome, ''), count(*) FROM steps"
        " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ).fetchall()
    sends = db.execute("SELECT state, count(*) FROM sends GROUP BY 1").fetchall()
    queues: dict[str, object]
    try:
        queues = {
            name: processes.queue_depth(name)
            for queue in TILE_QUEUES[:6]
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ")
        }
    except Exception as error:  # the broker itself may be the fault
        queues = {"error": repr(error)}
    errors = [
        line[:300]
        for line in processes.log_text().splitlines()
        if "Error" in line
        or "WARNING" in line
        or ('File "' in line and ("/services/" in line or "/shared/" in line))
    ]
    return f"steps: {steps}\nsends: {sends}\nqueues: {queues}\nlog: {errors[-30:]}"


def _go_live(db: psycopg.Connection, path: Path, now: datetime | None = None) -> None:
    outcome = go_live_paths(db, [path], now or datetime.now(UTC))
    assert not outcome.errors, [str(problem) for problem in outcome.errors]


def _emails(sink: SmtpSink) -> int:
    return len(sink.handler.messages)


def _alive(process: subprocess.Popen) -> bool:
    return process.poll() is None


# --- workers killed -----------------------------------------------------------


@pytest.mark.slow
def test_worker_killed_twenty_times(db, processes, smtp_sink, tmp_path):
    """SIGKILL the whole worker process group 20 times over one run of 3000
    contacts, restarting it at once each time."""
    total, kills = 3000, 20
    processes.env["JOURNEYS_OUTBOX_RETRY_SECONDS"] = "3"
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(total)))
    _go_live(db, write_definitions(tmp_path))
    workers = processes.start_workers(processes=2, threads=4)
    coordinator = processes.start_coordinator()

    started = time.monotonic()
    # The kills are spread over the run by the number of emails sent so far,
    # and each one lands at a random moment shortly after its threshold.
    for number in range(1, kills + 1):
        threshold = total * number // (kills + 2)
        wait_until(
            lambda t=threshold: _emails(smtp_sink) >= t,
            120,
            what=f"{threshold} emails before kill {number}",
            interval=0.05,
        )
        time.sleep(random.uniform(0, 0.3))
        processes.kill(workers)
        workers = processes.start_workers(processes=2, threads=4)
    wait_finished(
        db, processes, total, 300, {"workers": workers, "coordinator": coordinator}
    )
    elapsed = time.monotonic() - started

    outcomes = check_invariants(
        db, processes, smtp_sink, total, f"{kills} worker kills"
    )
    assert outcomes["sent"] + outcomes["unconfirmed"] == total
    print(f"{kills} kills, run took {elapsed:.0f} s")


# --- RabbitMQ restarted -------------------------------------------------------

# The node's name and ports are this pytest process's own, so that test runs
# on one machine at the same time never share, stop or restart a node.
NODE = f"journeys-faults-{os.getpid()}@localhost"


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["rabbitmqctl", "-n", NODE, *args], capture_output=True, text=True, timeout=90
    )


@pytest.fixture(scope="module")
def restartable_broker() -> Iterator[str]:
    """A RabbitMQ node of this module's own on a free port, so that restarting
    it disturbs no other test run; stopped and removed afterwards."""
    node_port = free_port()
    folder = Path("/tmp") / f"journeys-faults-rabbit-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "mnesia").mkdir(parents=True)
    (folder / "log").mkdir()
    (folder / "rabbitmq.conf").write_text(f"listeners.tcp.default = {node_port}\n")
    (folder / "enabled_plugins").write_text("[].\n")

    if _user_exists("rabbitmq"):  # the server drops root and runs as this user
        for path in [folder, *folder.rglob("*")]:
            shutil.chown(path, "rabbitmq", "rabbitmq")

    env = {
        **os.environ,
        "RABBITMQ_NODENAME": NODE,
        "RABBITMQ_NODE_PORT": str(node_port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(folder / "pid"),
    }
    subprocess.run(["rabbitmq-server", "-detached"], env=env, check=True, timeout=60)

    try:
        wait_until(
            lambda: _rabbitmqctl("await_startup").returncode == 0,
            90,
            what=f"RabbitMQ node {NODE}",
        )
        yield f"amqp://guest:guest@127.0.0.1:{node_port}/%2F"
    finally:
        _rabbitmqctl("stop")
        shutil.rmtree(folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _start_on_broker(
    processes: Processes, broker_url: str, outbox_retry_seconds: int
) -> tuple[subprocess.Popen, subprocess.Popen]:
    processes.env["JOURNEYS_BROKER_URL"] = processes.broker_url = broker_url
    processes.env["JOURNEYS_OUTBOX_RETRY_SECONDS"] = str(outbox_retry_seconds)
    processes.purge_queues()
    workers = processes.start_workers(processes=2, threads=4)
    coordinator = processes.start_coordinator()
    return workers, coordinator


def _stop_broker_for(seconds: float, meanwhile: Callable[[], None]) -> None:
    """Stop the node's RabbitMQ application, call `meanwhile`, and start it
    again `seconds` after the stop. Durable queues and their persistent
    messages survive this."""
    stopped = _rabbitmqctl("stop_app")
    assert stopped.returncode == 0, stopped.stderr
    stopped_at = time.monotonic()
    meanwhile()
    time.sleep(max(0.0, seconds - (time.monotonic() - stopped_at)))
    started = _rabbitmqctl("start_app")
    assert started.returncode == 0, started.stderr


@pytest.mark.slow
def test_broker_restart_mid_run(restartable_broker, db, processes, smtp_sink, tmp_path):
    """Stop the broker's application for about 3 s while emails flow through
    [email, exit]. The workers reconnect, and once the broker is back the
    coordinator republishes the exit tile's messages that they could not publish.

    The outbox rows are only republished 15 s after they were written, so the
    coordinator has nothing to publish while the broker is down: a coordinator
    that does exits (test_coordinator_feeds_during_broker_outage).
    """
    total = 1500
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(total)))
    tiles = [
        {"id": MAIL_TILE, "type": "email", "email": "hello"},
        {"id": "done", "type": "exit"},
    ]
    _go_live(db, write_definitions(tmp_path, tiles=tiles))
    # The sink's replies, 5 ms apart, keep the worker threads inside their
    # batches when the broker stops, so that batches end, and fail to
    # publish, during the outage. At full speed a run could fall between
    # batches and leave nothing to republish.
    smtp_sink.handler.on_accepted = lambda _recipient: time.sleep(0.005)
    workers, coordinator = _start_on_broker(processes, restartable_broker, 15)

    wait_until(
        lambda: _emails(smtp_sink) >= total // 4, 120, what="a quarter of the emails"
    )
    at_stop = _emails(smtp_sink)
    _stop_broker_for(3, lambda: None)
    at_start = _emails(smtp_sink)
    elapsed = wait_finished(
        db, processes, total, 240, {"workers": workers, "coordinator": coordinator}
    )

    outcomes = check_invariants(db, processes, smtp_sink, total, "broker restart")
    assert outcomes["sent"] + outcomes["unconfirmed"] == total
    assert _republished(processes) > 0, "no publish failed during the outage"
    print(
        f"broker stopped at {at_stop} emails, started at {at_start};"
        f" {_republished(processes)} outbox rows republished;"
        f" the run finished {elapsed:.0f} s after the restart"
    )


def _republished(processes: Processes) -> int:
    """Return how many outbox rows the coordinators logged as republished."""
    total = 0
    for path in processes.logs.glob("coordinator-*.log"):
        text = path.read_text(errors="replace")
        total += sum(int(n) for n in re.findall(r"republished (\d+) outbox rows", text))
    return total


@pytest.mark.slow
def test_coordinator_feeds_during_broker_outage(
    restartable_broker, db, processes, smtp_sink, tmp_path
):
    """200 contacts join the segment while the broker is down, so that the
    coordinator feeds them then. It must survive the failed publish and
    publish their outbox rows once the broker is back."""
    total, joiners = 1000, 200
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(total)))
    _go_live(db, write_definitions(tmp_path))
    workers, coordinator = _start_on_broker(processes, restartable_broker, 3)

    wait_until(
        lambda: _emails(smtp_sink) >= total // 4, 120, what="a quarter of the emails"
    )
    joined = write_contacts(tmp_path / "j.csv", simple_contacts(joiners, prefix="j"))
    _stop_broker_for(3, lambda: import_contacts(db, joined))
    total += joiners
    elapsed = wait_finished(
        db, processes, total, 120, {"workers": workers, "coordinator": coordinator}
    )

    outcomes = check_invariants(
        db, processes, smtp_sink, total, "contacts joined during a broker outage"
    )
    assert outcomes["sent"] + outcomes["unconfirmed"] == total
    print(f"the run finished {elapsed:.0f} s after the restart")


# --- PostgreSQL connections dropped -------------------------------------------


def _terminate_backends(database_url: str, keep: int) -> int:
    """Terminate every other connection to this test's database except `keep`,
    and return how many were terminated."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND pid <> %s",
            (keep,),
        ).fetchall()
    return sum(1 for (terminated,) in rows if terminated)


@pytest.mark.slow
def test_database_connections_dropped_mid_run(
    db, database_url, processes, smtp_sink, tmp_path
):
    """Terminate every backend of the test database three times, a second
    apart, while emails flow. The pools reconnect and the run finishes."""
    total = 1500
    processes.env["JOURNEYS_OUTBOX_RETRY_SECONDS"] = "3"
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(total)))
    _go_live(db, write_definitions(tmp_path))
    workers = processes.start_workers(processes=2, threads=4)
    coordinator = processes.start_coordinator()

    wait_until(
        lambda: _emails(smtp_sink) >= total // 5, 120, what="a fifth of the emails"
    )
    at_first_drop = _emails(smtp_sink)
    terminated = []
    for _ in range(3):
        # The test's own connection `db` is spared because the checks use it.
        terminated.append(_terminate_backends(database_url, db.info.backend_pid))
        time.sleep(1)
    assert terminated[0] > 0, "no worker or coordinator connection was open"
    elapsed = wait_finished(
        db, processes, total, 240, {"workers": workers, "coordinator": coordinator}
    )

    outcomes = check_invariants(db, processes, smtp_sink, total, "connections dropped")
    assert outcomes["sent"] + outcomes["unconfirmed"] == total
    print(
        f"backends terminated per round: {terminated}, first at {at_first_drop}"
        f" emails; the run finished {elapsed:.0f} s after the last round"
    )


# --- a faulty SMTP server -----------------------------------------------------

MAX_SMTP_RETRIES = 3


def _fault_for(number: int) -> str:
    """Return what the server does to contact number `number`. The first
    matching rule wins."""
    if number % 10 == 3:
        return "bounce"  # 550 on every attempt
    if number % 120 == 20:
        return "defer_always"  # 451 on every attempt
    if number % 50 == 11:
        return "drop_before_data"  # TCP reset at RCPT, first attempt only
    if number % 50 == 27:
        return "closing_at_data"  # 421 at the end of DATA, first attempt only
    if number % 50 == 39:
        return "drop_after_data"  # stored, then TCP reset instead of the reply
    if number % 7 == 0:
        return "defer_once"  # 451 on the first attempt
    return "accept"


class FaultySmtp:
    """Per-recipient faults for the SMTP sink, counting each RCPT and DATA."""

    def __init__(self, sink: SmtpSink) -> None:
        self.rcpt_calls: Counter[str] = Counter()
        self.data_calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        handler = sink.handler
        store = handler.handle_DATA
        # aiosmtpd 1.4 reads the handle_* hooks from the handler when a
        # connection opens, so these must be in place before the workers connect.
        handler.handle_RCPT = self.handle_rcpt  # type: ignore[attr-defined]
        handler.handle_DATA = self._data_hook(store)  # type: ignore[method-assign]
        handler.choose_reply = self.choose_reply

    @staticmethod
    def fault(address: str) -> str:
        return _fault_for(int(address.split("@")[0].removeprefix("c")))

    async def handle_rcpt(
        self, server: Any, session: Any, envelope: Any, address: str, options: list
    ) -> str:
        with self.lock:
            self.rcpt_calls[address] += 1
            first = self.rcpt_calls[address] == 1
        if first and self.fault(address) == "drop_before_data":
            server.transport.abort()
            return "421 4.3.2 closing"  # never reaches the client
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    def choose_reply(self, address: str) -> str | None:
        """Return the reply at the end of DATA, or None to store the message."""
        with self.lock:
            self.data_calls[address] += 1
            first = self.data_calls[address] == 1
        fault = self.fault(address)
        if fault == "bounce":
            return "550 5.1.1 no such user"
        if fault == "defer_always" or (fault == "defer_once" and first):
            return "451 4.3.0 try later"
        if fault == "closing_at_data" and first:
            return "421 4.3.2 closing"
        return None

    def _data_hook(self, store: Callable) -> Callable:
        async def handle_data(server: Any, session: Any, envelope: Any) -> str:
            reply = await store(server, session, envelope)
            address = envelope.rcpt_tos[0]
            with self.lock:
                first = self.data_calls[address] == 1
            if (
                first
                and reply.startswith("250")
                and self.fault(address) == "drop_after_data"
            ):
                # The message is stored; the client never sees the 250.
                server.transport.abort()
            return reply

        return handle_data


@pytest.mark.slow
def test_smtp_faults_retried_or_recorded(db, processes, smtp_sink, tmp_path):
    """4xx replies are retried and delivered once, 5xx bounce without a retry,
    a connection lost before DATA completes is retried, and one lost after the
    server stored the message is unconfirmed and not sent again.

    A connection lost at RCPT costs a delivery attempt only when the email's
    own send wrote that RCPT. When the RCPT went out behind the previous
    email's content, the loss shows before this email's send begins, and
    that send opens a new connection at once."""
    total = 300
    processes.env["JOURNEYS_SMTP_MAX_RETRIES"] = str(MAX_SMTP_RETRIES)
    faults = FaultySmtp(smtp_sink)
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(total)))
    _go_live(db, write_definitions(tmp_path))
    workers = processes.start_workers(processes=2, threads=4)
    coordinator = processes.start_coordinator()
    elapsed = wait_finished(
        db, processes, total, 120, {"workers": workers, "coordinator": coordinator}
    )

    outcomes = check_invariants(db, processes, smtp_sink, total, "SMTP faults")
    received = Counter(address for _, address in sink_messages(smtp_sink))
    rows = db.execute(
        "SELECT c.email, s.state, s.outcome, s.reason, se.state, se.attempts"
        " FROM steps s JOIN contacts c ON c.id = s.contact"
        " LEFT JOIN sends se USING (journey_id, tile, contact) WHERE tile = %s",
        (MAIL_TILE,),
    ).fetchall()
    assert len(rows) == total
    # What each fault must leave: step state, outcome, send state, the
    # possible numbers of attempts, emails.
    expected = {
        "accept": ("completed", "sent", "accepted", {1}, 1),
        "defer_once": ("completed", "sent", "accepted", {2}, 1),
        "drop_before_data": ("completed", "sent", "accepted", {1, 2}, 1),
        "closing_at_data": ("completed", "sent", "accepted", {2}, 1),
        "drop_after_data": ("failed", "unconfirmed", "unconfirmed", {1}, 1),
        "bounce": ("failed", "bounced", "rejected", {1}, 0),
        "defer_always": ("failed", None, "deferred", {MAX_SMTP_RETRIES + 1}, 0),
    }
    by_fault: Counter[str] = Counter()
    lost_at_rcpt_attempts: Counter[int] = Counter()
    wrong = []
    for address, state, outcome, reason, send_state, attempts in rows:
        fault = faults.fault(address)
        by_fault[fault] += 1
        step, step_outcome, send, tries, emails = expected[fault]
        found = (state, outcome, send_state, received[address])
        if found != (step, step_outcome, send, emails) or attempts not in tries:
            wrong.append(
                f"{address} ({fault}): {found}, {attempts} attempts, {reason!r}"
            )
        if fault == "drop_before_data":
            lost_at_rcpt_attempts[attempts] += 1
    assert wrong == [], wrong[:20]

    bounced = [address for address, *_ in rows if faults.fault(address) == "bounce"]
    assert all(faults.data_calls[address] == 1 for address in bounced)
    gave_up = db.execute(
        "SELECT DISTINCT reason FROM steps WHERE tile = %s AND state = 'failed'"
        " AND outcome IS NULL",
        (MAIL_TILE,),
    ).fetchall()
    assert gave_up == [("SMTP server kept deferring the message",)]
    assert outcomes["sent"] == sum(
        by_fault[name]
        for name in ("accept", "defer_once", "drop_before_data", "closing_at_data")
    )
    print(
        f"faults per contact: {dict(by_fault)}; attempts of those lost at RCPT:"
        f" {dict(lost_at_rcpt_attempts)}; run took {elapsed:.0f} s"
    )


# --- two coordinators ---------------------------------------------------------


def _fed_per_coordinator(processes: Processes) -> list[int]:
    """Return how many contacts each coordinator logged as fed."""
    fed = []
    for path in sorted(processes.logs.glob("coordinator-*.log")):
        text = path.read_text(errors="replace")
        fed.append(sum(int(n) for n in re.findall(r"tick: (\d+) contacts fed", text)))
    return fed


@pytest.mark.slow
def test_two_coordinators_feed_each_member_once(db, processes, smtp_sink, tmp_path):
    """Two coordinators feed a 20,000-member segment into an exit-only journey
    at the same time: every member enters once and passes each tile once."""
    contacts = tmp_path / "contacts.csv"
    write_csv(contacts, 20_000, 7)
    total = import_contacts(db, contacts).inserted
    assert total == 20_000
    _go_live(db, write_definitions(tmp_path, tiles=[{"id": "done", "type": "exit"}]))
    workers = processes.start_workers(processes=2, threads=4)
    first = processes.start_coordinator()
    second = processes.start_coordinator()
    elapsed = wait_finished(
        db,
        processes,
        total,
        300,
        {"workers": workers, "first coordinator": first, "second coordinator": second},
    )

    steps = dict(
        db.execute("SELECT tile, count(*) FROM steps GROUP BY tile").fetchall()
    )
    assert steps == {"audience": total, "done": total}
    finished = db.execute(
        "SELECT state, reason, count(*) FROM entries GROUP BY 1, 2"
    ).fetchall()
    assert finished == [("completed", "exit done", total)]
    check_invariants(db, processes, smtp_sink, total, "two coordinators, exit tile")
    assert smtp_sink.handler.messages == []
    print(
        f"fed per coordinator: {_fed_per_coordinator(processes)};"
        f" run took {elapsed:.0f} s"
    )


def _eligible_addresses(path: Path) -> set[str]:
    """Return the lowered addresses that must get an email: subscribed, valid,
    each address once however many contacts share it."""
    eligible = set()
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            address = normalize_address(row["email"])
            if address and row["unsubscribed"] != "true":
                eligible.add(address.lower())
    return eligible


@pytest.mark.slow
def test_two_coordinators_email_each_address_once(db, processes, smtp_sink, tmp_path):
    """Two coordinators over 2000 generated contacts, with shared addresses,
    invalid ones and unsubscribed contacts: each eligible address gets one email."""
    contacts = tmp_path / "contacts.csv"
    write_csv(contacts, 2000, 3)
    total = import_contacts(db, contacts).inserted
    eligible = _eligible_addresses(contacts)
    _go_live(db, write_definitions(tmp_path))
    # Small pages make the two coordinators take turns at the journey's row lock.
    processes.env["JOURNEYS_FEED_PAGE_SIZE"] = "50"
    workers = processes.start_workers(processes=2, threads=4)
    first = processes.start_coordinator()
    second = processes.start_coordinator()
    elapsed = wait_finished(
        db,
        processes,
        total,
        180,
        {"workers": workers, "first coordinator": first, "second coordinator": second},
    )

    outcomes = check_invariants(
        db, processes, smtp_sink, total, "two coordinators, email tile"
    )
    assert {address for _, address in sink_messages(smtp_sink)} == eligible
    assert outcomes["sent"] == len(eligible)
    assert outcomes["sent"] + outcomes["blocked"] == total
    print(
        f"fed per coordinator: {_fed_per_coordinator(processes)};"
        f" run took {elapsed:.0f} s"
    )


# --- the journey ends while contacts wait -------------------------------------


def test_journey_end_stops_waiting_contacts(
    db, processes, smtp_sink, virtual_time, tmp_path
):
    """[email, wait 1h, email] with the end 30 minutes after the start: the
    clock passes the end while every contact waits, so no contact gets the
    second email and every contact stops with the reason journey_ended."""
    total = 200
    start = datetime(2027, 6, 1, 9, 0, tzinfo=UTC)
    end = start + timedelta(minutes=30)
    virtual_time.set(start)
    tiles = [
        {"id": "email-1", "type": "email", "email": "first"},
        {"id": "wait-1h", "type": "wait", "duration": "1h"},
        {"id": "email-2", "type": "email", "email": "second"},
    ]
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(total)))
    path = write_definitions(
        tmp_path,
        start="2027-06-01 09:00",
        end="2027-06-01 09:30",
        emails={"first": "live", "second": "live"},
        tiles=tiles,
    )
    _go_live(db, path, virtual_time.now())
    processes.start_workers(processes=2, threads=4)
    processes.start_coordinator()
    wait_until(
        lambda: db.execute("SELECT count(*) FROM timers").fetchone() == (total,),
        120,
        what="every contact waiting",
    )
    assert _emails(smtp_sink) == total

    virtual_time.set(end + timedelta(minutes=1))
    wait_until(
        lambda: journey_status(processes)["status"] == "completed",
        60,
        what="the journey completed at its end",
    )
    # Past every wait's due time as well: no timer may fire after the end.
    virtual_time.set(start + timedelta(hours=1, minutes=5))
    time.sleep(3)  # six coordinator ticks at 0.5 s

    assert _emails(smtp_sink) == total
    assert db.execute(
        "SELECT count(*) FROM sends WHERE tile = 'email-2'"
    ).fetchone() == (0,)
    assert db.execute(
        "SELECT count(*) FROM steps WHERE tile = 'email-2'"
    ).fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM timers").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
    late = db.execute(
        "SELECT count(*) FROM sends WHERE finished_at IS NULL OR finished_at >= %s",
        (end,),
    ).fetchone()
    assert late == (0,)
    waits = db.execute(
        "SELECT state, reason, count(*) FROM steps WHERE tile = 'wait-1h' GROUP BY 1, 2"
    ).fetchall()
    assert waits == [("stopped", "journey_ended", total)]
    entries = db.execute(
        "SELECT state, reason, count(*) FROM entries GROUP BY 1, 2"
    ).fetchall()
    assert entries == [("stopped", "journey_ended", total)]
    counts = {tile["id"]: tile for tile in journey_status(processes)["tiles"]}
    assert counts["wait-1h"]["in_progress"] == 0
    assert counts["wait-1h"]["stopped"] == total
    assert counts["email-2"]["entered"] == 0

    outcomes = check_invariants(
        db, processes, smtp_sink, total, "journey ended mid-wait"
    )
    assert outcomes["sent"] == total
    print(f"{total} contacts stopped at the wait, 0 second emails")
