"""The email tile: sends one personalised marketing email to each contact.

Each contact goes through three short transactions. The first claims the
step and commits a 'sending' record; then the SMTP conversation runs; the
second records the server's answer and hands the contact on. A crash between
the server's acceptance and that second commit leaves 'sending' behind, and
the next delivery marks it 'unconfirmed' instead of sending again. A
session advisory lock on (journey, contact) keeps a duplicate message from
mistaking a send in flight for a crashed one.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from enum import StrEnum

import dramatiq
import psycopg
from psycopg.types.json import Jsonb

from services.tiles.common import (
    ContactMessage,
    hand_on,
    journey_gate,
    leave_journey,
    parse_message,
    publish_outbox,
    stop_contacts,
)
from services.tiles.email_content import PreparedSend, prepare_send
from services.tiles.plan import JourneyPlan, load_plan
from shared import clock
from shared.broker import configure_broker, current_retries
from shared.config import get_settings
from shared.db import get_pool
from shared.errors import PermanentError, SmtpTemporaryError
from shared.mail import SmtpOutcomeUnknown, SmtpRejected, SmtpSender
from shared.metrics import count_outcome, observe_smtp

logger = logging.getLogger(__name__)
configure_broker()

_LOCK_SPACE = 2**31


class Result(StrEnum):
    SENT = "sent"
    BLOCKED = "blocked"
    BOUNCED = "bounced"
    FAILED = "failed"
    UNCONFIRMED = "unconfirmed"
    STOPPED = "stopped"
    DEFERRED = "deferred"
    SKIPPED = "skipped"


_sender: SmtpSender | None = None
_sender_lock = threading.Lock()


def smtp_sender() -> SmtpSender:
    global _sender
    with _sender_lock:
        if _sender is None:
            settings = get_settings()
            _sender = SmtpSender(settings.smtp_target(), settings.smtp_timeout_seconds)
        return _sender


def run_email(message: ContactMessage, *, retries: int = 0) -> dict[Result, int]:
    """Send the tile's email to each contact of the message.

    Raises SmtpTemporaryError after the whole batch when any contact got a 4xx
    answer, so that the broker retries the message with back-off; contacts
    already done are skipped on the retry.
    """
    settings = get_settings()
    final_attempt = retries >= settings.smtp_max_retries
    results: dict[Result, int] = dict.fromkeys(Result, 0)
    with get_pool().connection() as conn:
        plan = load_plan(conn, message.journey_id, message.version)
        for contact in message.contacts:
            result = _process_contact(conn, plan, message.tile, contact, final_attempt)
            results[result] += 1
            if result not in (Result.SKIPPED, Result.DEFERRED):
                count_outcome(plan.name, message.tile, result.value)
    if results[Result.DEFERRED]:
        raise SmtpTemporaryError(
            f"journey {plan.name!r} tile {message.tile!r}: {results[Result.DEFERRED]} "
            f"contact(s) deferred, attempt {retries + 1}"
        )
    return results


def _process_contact(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    contact: int,
    final_attempt: bool,
) -> Result:
    lock = (plan.journey_id, contact % _LOCK_SPACE)
    locked = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", lock).fetchone()
    if not locked or not locked[0]:
        logger.info(
            "journey %s tile %s contact %s: send in flight elsewhere, retrying later",
            plan.name,
            tile,
            contact,
        )
        return Result.DEFERRED
    try:
        prepared, result = _claim(conn, plan, tile, contact)
        if prepared is None:
            return result
        return _send_and_record(conn, plan, tile, contact, prepared, final_attempt)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", lock)


def _claim(
    conn: psycopg.Connection, plan: JourneyPlan, tile: str, contact: int
) -> tuple[PreparedSend | None, Result]:
    """Decide in one transaction whether to send; commit 'sending' if so."""
    now = clock.now()
    with conn.transaction():
        row = conn.execute(
            "SELECT state FROM steps WHERE journey_id = %s AND tile = %s AND contact = %s FOR UPDATE",
            (plan.journey_id, tile, contact),
        ).fetchone()
        if row is None or row[0] != "in_progress":
            return None, Result.SKIPPED
        gate = journey_gate(conn, plan.journey_id, now)
        if gate is not None:
            stop_contacts(conn, plan.journey_id, tile, [contact], gate, now)
            return None, Result.STOPPED

        previous = conn.execute(
            "SELECT state FROM sends WHERE journey_id = %s AND tile = %s AND contact = %s",
            (plan.journey_id, tile, contact),
        ).fetchone()
        if previous is not None and previous[0] in ("sending", "unconfirmed"):
            _finish(
                conn,
                plan,
                tile,
                contact,
                now,
                "failed",
                "unconfirmed",
                "send outcome unknown after a crash",
            )
            conn.execute(
                "UPDATE sends SET state = 'unconfirmed', finished_at = %s"
                " WHERE journey_id = %s AND tile = %s AND contact = %s",
                (now, plan.journey_id, tile, contact),
            )
            logger.warning(
                "journey %s tile %s contact %s: send unconfirmed, not resent",
                plan.name,
                tile,
                contact,
            )
            return None, Result.UNCONFIRMED

        send_id = _send_id(conn, plan, tile, contact)
        prepared, reason = prepare_send(conn, plan, tile, contact, send_id)
        if prepared is None:
            return None, _refuse(conn, plan, tile, contact, now, reason)
        if previous is None:
            inserted = conn.execute(
                "INSERT INTO sends (id, journey_id, tile, contact, address, state,"
                " message_id, links, started_at)"
                " VALUES (%s, %s, %s, %s, %s, 'sending', %s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                (
                    send_id,
                    plan.journey_id,
                    tile,
                    contact,
                    prepared.address,
                    prepared.message_id,
                    Jsonb(prepared.links),
                    now,
                ),
            ).fetchone()
            if inserted is None:
                return None, _refuse(
                    conn, plan, tile, contact, now, "duplicate_address"
                )
        else:
            conn.execute(
                "UPDATE sends SET state = 'sending', attempts = attempts + 1,"
                " message_id = %s, links = %s, started_at = %s"
                " WHERE id = %s",
                (prepared.message_id, Jsonb(prepared.links), now, send_id),
            )
    return prepared, Result.SENT


def _send_id(conn: psycopg.Connection, plan: JourneyPlan, tile: str, contact: int) -> int:
    """Return the send's number: the earlier attempt's, or a new one."""
    row = conn.execute(
        "SELECT id FROM sends WHERE journey_id = %s AND tile = %s AND contact = %s",
        (plan.journey_id, tile, contact),
    ).fetchone()
    if row is None:
        row = conn.execute("SELECT nextval(pg_get_serial_sequence('sends', 'id'))").fetchone()
    return int(row[0])  # type: ignore[index]


def _refuse(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    contact: int,
    now: datetime,
    reason: str,
) -> Result:
    """Record why a contact gets no email: blocked for consent or address,
    failed when the email itself cannot be sent."""
    if reason.startswith("failed:"):
        _finish(
            conn,
            plan,
            tile,
            contact,
            now,
            "failed",
            None,
            reason.removeprefix("failed:"),
        )
        logger.warning(
            "journey %s tile %s contact %s: %s", plan.name, tile, contact, reason
        )
        return Result.FAILED
    _finish(conn, plan, tile, contact, now, "completed", "blocked", reason)
    return Result.BLOCKED


def _send_and_record(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    contact: int,
    prepared: PreparedSend,
    final_attempt: bool,
) -> Result:
    started = time.perf_counter()
    try:
        code, reply = smtp_sender().send(
            prepared.sender_address, prepared.address, prepared.data
        )
    except SmtpRejected as error:
        return _record(
            conn,
            plan,
            tile,
            contact,
            "rejected",
            error.code,
            error.reply,
            Result.BOUNCED,
        )
    except SmtpOutcomeUnknown as error:
        logger.warning(
            "journey %s tile %s contact %s: %s", plan.name, tile, contact, error
        )
        return _record(
            conn,
            plan,
            tile,
            contact,
            "unconfirmed",
            None,
            str(error),
            Result.UNCONFIRMED,
        )
    except SmtpTemporaryError as error:
        if final_attempt:
            logger.warning(
                "journey %s tile %s contact %s: giving up: %s",
                plan.name,
                tile,
                contact,
                error,
            )
            return _record(
                conn, plan, tile, contact, "deferred", None, str(error), Result.FAILED
            )
        logger.warning(
            "journey %s tile %s contact %s: deferred: %s",
            plan.name,
            tile,
            contact,
            error,
        )
        _record(
            conn, plan, tile, contact, "deferred", None, str(error), Result.DEFERRED
        )
        return Result.DEFERRED
    finally:
        observe_smtp(time.perf_counter() - started)
    return _record(conn, plan, tile, contact, "accepted", code, reply, Result.SENT)


_STEP_FOR_RESULT = {
    Result.SENT: ("completed", "sent", None),
    Result.BOUNCED: ("failed", "bounced", "bounced"),
    Result.UNCONFIRMED: ("failed", "unconfirmed", "send outcome unknown"),
    Result.FAILED: ("failed", None, "SMTP server kept deferring the message"),
}


def _record(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    contact: int,
    send_state: str,
    code: int | None,
    reply: str,
    result: Result,
) -> Result:
    """Store the SMTP answer and, unless deferred, the step's outcome."""
    now = clock.now()
    outbox: list[tuple] = []
    with conn.transaction():
        conn.execute(
            "UPDATE sends SET state = %s, smtp_code = %s, smtp_reply = %s, finished_at = %s"
            " WHERE journey_id = %s AND tile = %s AND contact = %s",
            (send_state, code, reply[:500], now, plan.journey_id, tile, contact),
        )
        if result is Result.BOUNCED:
            conn.execute(
                "UPDATE contacts SET bounced_at = %s WHERE id = %s AND bounced_at IS NULL",
                (now, contact),
            )
        if result in _STEP_FOR_RESULT:
            state, outcome, reason = _STEP_FOR_RESULT[result]
            outbox = _finish(conn, plan, tile, contact, now, state, outcome, reason)
    publish_outbox(conn, outbox)
    return result


def _finish(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    contact: int,
    now: datetime,
    state: str,
    outcome: str | None,
    reason: str | None,
) -> list[tuple]:
    """Set the step's final state; hand a completed contact on, and take any
    other out of the journey. A step that the journey's end stopped while
    the email was in flight still records that it was sent."""
    conn.execute(
        "UPDATE steps SET state = %s, outcome = %s, reason = %s, done_at = %s"
        " WHERE journey_id = %s AND tile = %s AND contact = %s",
        (state, outcome, reason, now, plan.journey_id, tile, contact),
    )
    if state == "completed" and outcome == "sent":
        if journey_gate(conn, plan.journey_id, now) is None:
            return hand_on(conn, plan, tile, [contact], now)
        return []
    # The entry keeps the kind of exit; the step keeps the detail.
    if outcome == "bounced":
        exit_reason = "bounced"
    elif state == "failed":
        exit_reason = "failed"
    else:
        exit_reason = reason or outcome or state
    leave_journey(conn, plan.journey_id, [contact], "left", exit_reason, now)
    return []


@dramatiq.actor(
    actor_name="email_tile",
    queue_name="tile.email",
    throws=(PermanentError,),
    max_retries=get_settings().smtp_max_retries,
    min_backoff=1_000,
    max_backoff=300_000,
    time_limit=get_settings().actor_time_limit_seconds * 1000,
)
def email_tile(payload: dict) -> None:
    run_email(parse_message(payload), retries=current_retries())
