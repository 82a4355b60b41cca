"""The ceilings the engine is measured against: plain smtplib sending
pre-rendered emails, the same with a send record committed per email or
with the engine's pipelining SMTP client, and plain pika publishing and
consuming persistent messages with publisher confirms."""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pika
import psycopg

from shared.config import SmtpTarget
from shared.mail import SmtpSender

SENDER = "news@sender.example.com"


def smtp_ceiling(
    folder: Path,
    messages: list[tuple[str, bytes]],
    connections: int,
    start_sink: Callable,
    database_url: str | None = None,
    pipelined: bool = False,
) -> float:
    """Emails per second that smtplib alone delivers to the sink.

    `messages` are (recipient, message) pairs: the emails that the engine
    sent, as its sink received them. With a database, each email first
    commits one statement that records the reply to the email before and a
    'sending' row for this one, in a table of its own. An engine that never
    sends an email twice writes at least that much per email. `pipelined`
    sends through the engine's own SMTP client, as the email tile does:
    MAIL, RCPT and DATA in one write, and behind each content the next
    email's MAIL, RCPT and DATA, instead of smtplib's sendmail().
    """
    if pipelined and database_url:
        raise ValueError("the pipelined baseline commits nothing; pass no database")
    count = len(messages)
    if database_url is not None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(_RECORD_TABLE)
    name = "smtp"
    if database_url:
        name = "record"
    elif pipelined:
        name = "pipelined"
    sink, port, out = start_sink(folder, f"{name}-baseline")
    try:
        started = time.monotonic()
        errors: list[BaseException] = []
        threads = [
            threading.Thread(
                target=_send_share,
                args=(port, messages[i::connections], database_url, pipelined, errors),
            )
            for i in range(connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    finally:
        sink.terminate()
        sink.wait(timeout=30)
    if errors:
        raise RuntimeError(
            f"{len(errors)} of {connections} baseline senders failed: {errors[0]!r}"
        ) from errors[0]
    received = len(out.read_text().splitlines())
    if received != count:
        raise RuntimeError(
            f"the SMTP baseline sink received {received} of {count} emails"
        )
    return count / elapsed


_RECORD_TABLE = """
CREATE TABLE baseline_sends (
    address text PRIMARY KEY, state text NOT NULL, reply text,
    started_at timestamptz NOT NULL, finished_at timestamptz)
"""

_RECORD = """
WITH recorded AS (
    UPDATE baseline_sends SET state = 'accepted', reply = %(reply)s,
        finished_at = now()
    WHERE address = %(previous)s)
INSERT INTO baseline_sends (address, state, started_at)
SELECT %(address)s, 'sending', now() WHERE %(address)s::text IS NOT NULL
"""


def _send_share(
    port: int,
    messages: list[tuple[str, bytes]],
    database_url: str | None,
    pipelined: bool,
    errors: list[BaseException],
) -> None:
    try:
        if pipelined:
            sender = SmtpSender(SmtpTarget(host="127.0.0.1", port=port), timeout=30)
            try:
                for index, (address, data) in enumerate(messages):
                    following = (
                        messages[index + 1][0] if index + 1 < len(messages) else None
                    )
                    sender.send(
                        SENDER,
                        address,
                        data,
                        (SENDER, following) if following else None,
                    )
            finally:
                sender.close()
        else:
            _send(port, messages, database_url)
    except BaseException as error:
        errors.append(error)
        raise


def _send(
    port: int, messages: list[tuple[str, bytes]], database_url: str | None
) -> None:
    db = psycopg.connect(database_url, autocommit=True) if database_url else None
    previous: tuple[str | None, str | None] = (None, None)
    try:
        with smtplib.SMTP("127.0.0.1", port) as connection:
            for address, data in [*messages, (None, b"")]:
                if db is not None:
                    db.execute(
                        _RECORD,
                        {
                            "previous": previous[0],
                            "reply": previous[1],
                            "address": address,
                        },
                    )
                if address is None:
                    break
                connection.sendmail(SENDER, [address], data)
                # sendmail() returns only the refused recipients, not the
                # reply text, so the record stores a fixed one.
                previous = (address, "250 accepted")
    finally:
        if db is not None:
            db.close()


def broker_ceiling(url: str, count: int) -> float:
    """Messages per second through RabbitMQ: persistent, confirmed, acknowledged."""
    queue = "bench.baseline"
    setup = pika.BlockingConnection(pika.URLParameters(url))
    setup.channel().queue_declare(queue, durable=True)
    setup.close()
    consumed = threading.Event()
    consumer = threading.Thread(target=_consume, args=(url, queue, count, consumed))
    started = time.monotonic()
    consumer.start()
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    body = b'{"journey_id": 1, "version": 1, "tile": "mail", "contacts": [1]}'
    for _ in range(count):
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    connection.close()
    consumer.join()
    return count / (time.monotonic() - started)


def _consume(url: str, queue: str, count: int, done: threading.Event) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=16)
    for received, (method, _, _) in enumerate(channel.consume(queue), start=1):
        channel.basic_ack(method.delivery_tag)
        if received >= count:
            break
    channel.cancel()
    connection.close()
    done.set()
