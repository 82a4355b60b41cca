"""The email tile: sends one personalised marketing email to each contact.

A message's contacts are handled as a batch. One transaction reads their
steps, sends, data and consent, and records every contact that gets no
email. Then, per contact, one statement takes a session advisory lock on
(journey, contact) and commits a 'sending' record; the SMTP conversation
runs; one pipelined transaction records the reply, hands the contact on
and releases the lock. A crash between the server's acceptance and that
commit leaves 'sending' behind, and the next delivery marks it
'unconfirmed' instead of sending again. The lock keeps a duplicate
message from taking a send in flight for a crashed one. The next tile's
messages go out once for the whole batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import psycopg
from psycopg.types.json import Jsonb

from services.tiles.common import (
    ContactMessage,
    check_tile,
    declare_tile_actor,
    journey_gate,
    leave_journey,
    publish_outbox,
    start_enqueue,
    stop_contacts,
)
from services.tiles.email_content import (
    EmailContext,
    PreparedSend,
    load_context,
    load_recipients,
    render_send,
)
from services.tiles.plan import JourneyPlan, load_plan
from shared import clock
from shared.broker import configure_broker, current_retries
from shared.config import get_settings
from shared.db import get_pool
from shared.errors import SmtpTemporaryError
from shared.mail import SmtpOutcomeUnknown, SmtpRejected, SmtpSender
from shared.metrics import count_outcome, observe_smtp
from shared.templates import RenderError

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


# The step state, outcome and reason that each final result records.
_STEP_FOR_RESULT = {
    Result.SENT: ("completed", "sent", None),
    Result.BOUNCED: ("failed", "bounced", "bounced"),
    Result.UNCONFIRMED: ("failed", "unconfirmed", "send outcome unknown"),
    Result.FAILED: ("failed", None, "SMTP server kept deferring the message"),
}


@dataclass
class Batch:
    """The contacts of one message, sorted by what happens to them."""

    to_send: list[tuple[int, int, str | None]] = field(default_factory=list)
    results: Counter[Result] = field(default_factory=Counter)
    outbox: list[tuple] = field(default_factory=list)


_sender: SmtpSender | None = None
_sender_lock = threading.Lock()


def smtp_sender() -> SmtpSender:
    global _sender
    with _sender_lock:
        if _sender is None:
            settings = get_settings()
            _sender = SmtpSender(settings.smtp_target(), settings.smtp_timeout_seconds)
        return _sender


def run_email(message: ContactMessage, *, retries: int = 0) -> Counter[Result]:
    """Send the tile's email to each contact of the message.

    Raises SmtpTemporaryError after the whole batch when any contact got a 4xx
    reply, so that the broker retries the message with back-off; contacts
    already done are skipped on the retry.
    """
    final_attempt = retries >= get_settings().smtp_max_retries
    with get_pool().connection() as conn:
        plan = load_plan(conn, message.journey_id, message.version)
        check_tile(plan, message, "email")
        batch, context, recipients = _sort_contacts(conn, plan, message)
        for contact, send_id, previous in batch.to_send:
            person, address = recipients[contact]
            result = _send_one(
                conn,
                plan,
                message.tile,
                contact,
                send_id,
                previous,
                lambda s=send_id, p=person, a=address: render_send(context, p, a, s),
                final_attempt,
                batch,
            )
            batch.results[result] += 1
        publish_outbox(conn, batch.outbox)
    for result, count in batch.results.items():
        if result not in (Result.SKIPPED, Result.DEFERRED):
            count_outcome(plan.name, message.tile, result.value, count)
    if batch.results[Result.DEFERRED]:
        raise SmtpTemporaryError(
            f"journey {plan.name!r} tile {message.tile!r}: "
            f"{batch.results[Result.DEFERRED]} contact(s) deferred, "
            f"attempt {retries + 1}"
        )
    return batch.results


def _sort_contacts(
    conn: psycopg.Connection, plan: JourneyPlan, message: ContactMessage
) -> tuple[Batch, EmailContext, dict]:
    """Decide in one transaction who gets an email, recording everyone who does not."""
    now = clock.now()
    batch = Batch()
    tile = message.tile
    with conn.transaction():
        rows = conn.execute(
            "SELECT s.contact, se.id, se.state FROM steps s LEFT JOIN sends se"
            " ON se.journey_id = s.journey_id AND se.tile = s.tile"
            " AND se.contact = s.contact"
            " WHERE s.journey_id = %s AND s.tile = %s AND s.contact = ANY(%s)"
            " AND s.state = 'in_progress' ORDER BY s.contact FOR UPDATE OF s",
            (plan.journey_id, tile, message.contacts),
        ).fetchall()
        batch.results[Result.SKIPPED] += len(set(message.contacts)) - len(rows)
        gate = journey_gate(conn, plan.journey_id, now)
        if gate is not None:
            stopped = stop_contacts(
                conn, plan.journey_id, tile, [r[0] for r in rows], gate, now
            )
            batch.results[Result.STOPPED] += len(stopped)
            return batch, load_context(conn, plan, tile), {}

        fresh = _settle_earlier_sends(conn, plan, tile, rows, now, batch)
        context = load_context(conn, plan, tile)
        if context.failure is not None:
            for contact, _, _ in fresh:
                _finish_now(
                    conn,
                    plan,
                    tile,
                    contact,
                    now,
                    "failed",
                    None,
                    context.failure,
                    batch,
                )
            batch.results[Result.FAILED] += len(fresh)
            return batch, context, {}
        recipients, refused = load_recipients(
            conn, plan, [contact for contact, _, _ in fresh]
        )
        for contact, reason in refused.items():
            batch.results[_refuse(conn, plan, tile, contact, now, reason, batch)] += 1
        new_ids = _new_send_ids(
            conn, sum(1 for c, s, _ in fresh if c in recipients and s is None)
        )
        for contact, send_id, previous in fresh:
            if contact in recipients:
                batch.to_send.append((contact, send_id or new_ids.pop(), previous))
    return batch, context, recipients


def _settle_earlier_sends(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    rows: list[tuple],
    now: datetime,
    batch: Batch,
) -> list[tuple[int, int | None, str | None]]:
    """Deal with contacts that an earlier attempt left a send record for;
    return the ones still to send, with their send number and state."""
    fresh = []
    for contact, send_id, state in rows:
        if state is None or state == "deferred":
            fresh.append((contact, send_id, state))
        elif state == "sending" and not _try_lock(conn, plan.journey_id, contact):
            batch.results[Result.DEFERRED] += 1  # another worker is sending it now
        else:
            result = _recover(conn, plan, tile, contact, send_id, state, now, batch)
            batch.results[result] += 1
            if state == "sending":
                _unlock(conn, plan.journey_id, contact)
    return fresh


def _recover(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    contact: int,
    send_id: int,
    state: str,
    now: datetime,
    batch: Batch,
) -> Result:
    """Finish a step whose send record outlived the attempt that made it."""
    if state == "accepted":
        _finish_now(
            conn, plan, tile, contact, now, *_STEP_FOR_RESULT[Result.SENT], batch
        )
        return Result.SENT
    if state == "rejected":
        _finish_now(
            conn, plan, tile, contact, now, *_STEP_FOR_RESULT[Result.BOUNCED], batch
        )
        return Result.BOUNCED
    conn.execute(
        "UPDATE sends SET state = 'unconfirmed', finished_at = %s WHERE id = %s",
        (now, send_id),
    )
    _finish_now(
        conn,
        plan,
        tile,
        contact,
        now,
        "failed",
        "unconfirmed",
        "send outcome unknown after a crash",
        batch,
    )
    logger.warning(
        "journey %s tile %s contact %s: send unconfirmed after a crash, not resent",
        plan.name,
        tile,
        contact,
    )
    return Result.UNCONFIRMED


def _new_send_ids(conn: psycopg.Connection, count: int) -> list[int]:
    if not count:
        return []
    rows = conn.execute(
        "SELECT nextval(pg_get_serial_sequence('sends', 'id'))"
        " FROM generate_series(1, %s)",
        (count,),
    ).fetchall()
    return [row[0] for row in rows]


def _refuse(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    contact: int,
    now: datetime,
    reason: str,
    batch: Batch,
) -> Result:
    """Record why a contact gets no email: blocked for consent or address,
    failed when the email cannot be made."""
    if reason.startswith("failed:"):
        detail = reason.removeprefix("failed:")
        _finish_now(conn, plan, tile, contact, now, "failed", None, detail, batch)
        logger.warning(
            "journey %s tile %s contact %s: %s", plan.name, tile, contact, detail
        )
        return Result.FAILED
    _finish_now(conn, plan, tile, contact, now, "completed", "blocked", reason, batch)
    return Result.BLOCKED


def _send_one(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    contact: int,
    send_id: int,
    previous: str | None,
    render,  # type: ignore[no-untyped-def]
    final_attempt: bool,
    batch: Batch,
) -> Result:
    try:
        prepared: PreparedSend = render()
    except RenderError as error:
        with conn.transaction():
            return _refuse(
                conn, plan, tile, contact, clock.now(), f"failed:{error}", batch
            )
    locked, marked = _lock_and_mark(
        conn, plan, tile, contact, send_id, previous, prepared
    )
    if not locked:
        return Result.DEFERRED
    if not marked:
        return _unmarked(conn, plan, tile, contact, batch)
    return _send_and_record(
        conn, plan, tile, contact, send_id, prepared, final_attempt, batch
    )


_LOCK_AND_INSERT = """
WITH lock AS (SELECT pg_try_advisory_lock(%(journey)s, %(key)s) AS held),
marked AS (
    INSERT INTO sends (id, journey_id, tile, contact, address, state, message_id,
                       links, started_at)
    SELECT %(id)s, %(journey)s, %(tile)s, %(contact)s, %(address)s, 'sending',
           %(message_id)s, %(links)s, %(now)s
    FROM lock WHERE lock.held
    ON CONFLICT DO NOTHING RETURNING id)
SELECT (SELECT held FROM lock), (SELECT id FROM marked)
"""

_LOCK_AND_RETRY = """
WITH lock AS (SELECT pg_try_advisory_lock(%(journey)s, %(key)s) AS held),
marked AS (
    UPDATE sends SET state = 'sending', attempts = attempts + 1,
        message_id = %(message_id)s, links = %(links)s, started_at = %(now)s
    FROM lock WHERE lock.held AND id = %(id)s AND state = 'deferred'
    RETURNING id)
SELECT (SELECT held FROM lock), (SELECT id FROM marked)
"""


def _lock_and_mark(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    contact: int,
    send_id: int,
    previous: str | None,
    prepared: PreparedSend,
) -> tuple[bool, bool]:
    """Take the contact's lock and commit 'sending' in one round trip; return
    whether the lock was taken and whether the record was written."""
    row = conn.execute(
        _LOCK_AND_RETRY if previous == "deferred" else _LOCK_AND_INSERT,
        {
            "journey": plan.journey_id,
            "key": contact % _LOCK_SPACE,
            "id": send_id,
            "tile": tile,
            "contact": contact,
            "address": prepared.address,
            "message_id": prepared.message_id,
            "links": Jsonb(prepared.links),
            "now": clock.now(),
        },
    ).fetchone()
    locked, marked = row or (False, None)
    if not locked:
        logger.info(
            "journey %s tile %s contact %s: send in flight elsewhere, retrying later",
            plan.name,
            tile,
            contact,
        )
    return bool(locked), marked is not None


def _unmarked(
    conn: psycopg.Connection, plan: JourneyPlan, tile: str, contact: int, batch: Batch
) -> Result:
    """Return SKIPPED when another attempt wrote the send record since, or block
    the contact when another contact already took its address on this tile."""
    try:
        with conn.transaction():
            mine = conn.execute(
                "SELECT 1 FROM sends"
                " WHERE journey_id = %s AND tile = %s AND contact = %s",
                (plan.journey_id, tile, contact),
            ).fetchone()
            if mine:
                return Result.SKIPPED
            return _refuse(
                conn, plan, tile, contact, clock.now(), "duplicate_address", batch
            )
    finally:
        _unlock(conn, plan.journey_id, contact)


def _send_and_record(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    contact: int,
    send_id: int,
    prepared: PreparedSend,
    final_attempt: bool,
    batch: Batch,
) -> Result:
    started = time.perf_counter()
    try:
        code, reply = smtp_sender().send(
            prepared.sender_address, prepared.address, prepared.data
        )
        state, result = "accepted", Result.SENT
    except SmtpRejected as error:
        code, reply, state, result = error.code, error.reply, "rejected", Result.BOUNCED
    except SmtpOutcomeUnknown as error:
        logger.warning(
            "journey %s tile %s contact %s: %s", plan.name, tile, contact, error
        )
        code, reply, state, result = None, str(error), "unconfirmed", Result.UNCONFIRMED
    except SmtpTemporaryError as error:
        code, reply, state = None, str(error), "deferred"
        result = Result.FAILED if final_attempt else Result.DEFERRED
        logger.warning(
            "journey %s tile %s contact %s: %s: %s",
            plan.name,
            tile,
            contact,
            "giving up" if final_attempt else "deferred",
            error,
        )
    finally:
        observe_smtp(time.perf_counter() - started)
    _record(conn, plan, tile, contact, send_id, state, code, reply, result, batch)
    return result


def _record(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    contact: int,
    send_id: int,
    send_state: str,
    code: int | None,
    reply: str,
    result: Result,
    batch: Batch,
) -> None:
    """Store the SMTP reply and the step's outcome, hand the contact on and
    release its lock, all in one round trip."""
    now = clock.now()
    enqueued = None
    with conn.pipeline():
        with conn.transaction():
            conn.execute(
                "UPDATE sends SET state = %s, smtp_code = %s, smtp_reply = %s,"
                " finished_at = %s WHERE id = %s",
                (send_state, code, reply[:500], now, send_id),
            )
            if result is Result.BOUNCED:
                conn.execute(
                    "UPDATE contacts SET bounced_at = %s"
                    " WHERE id = %s AND bounced_at IS NULL",
                    (now, contact),
                )
            if result in _STEP_FOR_RESULT:
                step = _STEP_FOR_RESULT[result]
                enqueued = _finish(conn, plan, tile, contact, now, *step)
        _unlock(conn, plan.journey_id, contact)
    if enqueued is not None:
        batch.outbox.extend(enqueued.fetchall())


def _finish(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    contact: int,
    now: datetime,
    state: str,
    outcome: str | None,
    reason: str | None,
) -> psycopg.Cursor | None:
    """Set the step's final state; hand a sent contact on, and take any other
    out of the journey. A step that the journey's end stopped while the email
    was in flight still records that it was sent.

    Returns the cursor of the next tile's outbox rows, if any, for the caller
    to read into the batch, which in pipeline mode can only happen after
    the pipeline's sync.
    """
    conn.execute(
        "UPDATE steps SET state = %s, outcome = %s, reason = %s, done_at = %s"
        " WHERE journey_id = %s AND tile = %s AND contact = %s",
        (state, outcome, reason, now, plan.journey_id, tile, contact),
    )
    if state == "completed" and outcome == "sent":
        following = plan.after(tile)
        if following is None:
            leave_journey(conn, plan.journey_id, [contact], "completed", None, now)
            return None
        return start_enqueue(
            conn, plan.journey_id, plan.version, following, [contact], now
        )
    # The entry keeps the kind of exit; the step keeps the detail.
    if outcome == "bounced":
        exit_reason = "bounced"
    elif state == "failed":
        exit_reason = "failed"
    else:
        exit_reason = reason or outcome or state
    leave_journey(conn, plan.journey_id, [contact], "left", exit_reason, now)
    return None


def _finish_now(
    conn: psycopg.Connection,
    plan: JourneyPlan,
    tile: str,
    contact: int,
    now: datetime,
    state: str,
    outcome: str | None,
    reason: str | None,
    batch: Batch,
) -> None:
    """_finish outside a pipeline: read the outbox rows at once."""
    cursor = _finish(conn, plan, tile, contact, now, state, outcome, reason)
    if cursor is not None:
        batch.outbox.extend(cursor.fetchall())


def _unlock(conn: psycopg.Connection, journey_id: int, contact: int) -> None:
    conn.execute(
        "SELECT pg_advisory_unlock(%s, %s)", (journey_id, contact % _LOCK_SPACE)
    )


def _try_lock(conn: psycopg.Connection, journey_id: int, contact: int) -> bool:
    row = conn.execute(
        "SELECT pg_try_advisory_lock(%s, %s)", (journey_id, contact % _LOCK_SPACE)
    ).fetchone()
    return bool(row and row[0])


def _run_with_retries(message: ContactMessage) -> None:
    run_email(message, retries=current_retries())


email_tile = declare_tile_actor(
    "email",
    _run_with_retries,
    max_retries=get_settings().smtp_max_retries,
    max_backoff=300_000,
)
