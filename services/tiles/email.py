"""The email tile: sends one personalised marketing email to each contact.

A message's contacts are handled as a batch. One transaction reads their
steps, sends, data and consent, and records every contact that gets no
email. The emails are rendered, then go out in groups of one per SMTP
connection of the thread. Before a group's contents go out, one
transaction takes a session advisory lock on (journey, contact) and
commits a 'sending' record for each. The same transaction records the
replies to the group before, hands those contacts on, and releases the
locks of the contacts recorded one transaction earlier. A crash between
the server's acceptance and the commit of its record leaves 'sending'
behind, and the next delivery marks it 'unconfirmed' instead of sending
again. The lock keeps a duplicate message from taking a send in flight
for a crashed one. The next tile's messages go out once for the whole
batch.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import psycopg
from psycopg.types.json import Jsonb

from services.tiles.common import (
    ContactMessage,
    check_tile,
    declare_tile_actor,
    enqueue_step,
    journey_gate,
    leave_journey,
    publish_outbox,
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
from shared.mail import Sending, SmtpOutcomeUnknown, SmtpRejected, SmtpSender
from shared.metrics import count_outcome, observe_smtp
from shared.templates import RenderError

logger = logging.getLogger(__name__)
configure_broker()

_LOCK_SPACE = 2**31
_FLUSH_ATTEMPTS = 3


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


_senders: list[SmtpSender] | None = None
_sender_lock = threading.Lock()


def smtp_senders() -> list[SmtpSender]:
    """Return the process's SMTP senders. Each worker thread keeps one
    connection open through each of them."""
    global _senders
    with _sender_lock:
        if _senders is None:
            settings = get_settings()
            _senders = [
                SmtpSender(
                    settings.smtp_target(),
                    settings.smtp_timeout_seconds,
                    pipelining=settings.smtp_pipelining,
                )
                for _ in range(settings.smtp_connections_per_thread)
            ]
        return _senders


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
        run: SendRun | None = None
        try:
            batch, context, recipients = _sort_contacts(conn, plan, message)
            run = SendRun(conn, plan, message.tile, final_attempt, batch)
            ready = run.render_all(
                lambda contact, send_id: render_send(
                    context, recipients[contact][0], recipients[contact][1], send_id
                )
            )
            run.send_all(ready)
        finally:
            try:
                if run is not None:
                    run.flush()
            finally:
                # Also frees a lock that an error left behind, before the
                # connection goes back to the pool.
                conn.execute("SELECT pg_advisory_unlock_all()")
                for sender in smtp_senders():
                    sender.abandon()
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
                _finish(
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
        _finish(conn, plan, tile, contact, now, *_STEP_FOR_RESULT[Result.SENT], batch)
        return Result.SENT
    if state == "rejected":
        _finish(
            conn, plan, tile, contact, now, *_STEP_FOR_RESULT[Result.BOUNCED], batch
        )
        return Result.BOUNCED
    if state == "sending":
        marked = conn.execute(
            "UPDATE sends SET state = 'unconfirmed', finished_at = %s"
            " WHERE id = %s AND state = 'sending' RETURNING id",
            (now, send_id),
        ).fetchone()
        if marked is None:
            # The sender recorded its reply after this transaction read
            # 'sending' and before it took the lock. This new statement
            # reads that reply.
            found = conn.execute(
                "SELECT state FROM sends WHERE id = %s", (send_id,)
            ).fetchone()
            current = found[0] if found else "deferred"
            if current in ("sending", "deferred"):
                return Result.DEFERRED  # a retry of this message sends it
            return _recover(conn, plan, tile, contact, send_id, current, now, batch)
    _finish(
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
        _finish(conn, plan, tile, contact, now, "failed", None, detail, batch)
        logger.warning(
            "journey %s tile %s contact %s: %s", plan.name, tile, contact, detail
        )
        return Result.FAILED
    _finish(conn, plan, tile, contact, now, "completed", "blocked", reason, batch)
    return Result.BLOCKED


@dataclass
class Reply:
    """The SMTP server's reply for one contact, not yet recorded."""

    contact: int
    send_id: int
    state: str
    code: int | None
    text: str
    result: Result


class SendRun:
    """Sends a batch's emails over this thread's SMTP connections, one email
    in flight on each.

    The emails go out in groups of one per connection. One database
    transaction records the replies to the group before. It also takes the
    lock and commits the 'sending' record of each email of the next group.
    Then their contents go out, one on each connection, and the replies are
    read. So each group costs one database round trip and one commit. With
    pipelining, the MAIL, RCPT and DATA of the email that a connection sends
    next follow each content in the same write, so each email also costs one
    SMTP round trip. Its content still waits until its 'sending' record has
    committed. An email that is not marked after all (its lock is held
    elsewhere, or its address is taken) leaves its envelope open, and the
    sender abandons it. A crash between an acceptance and its record leaves
    'sending', which the next delivery marks 'unconfirmed' and does not
    resend: at most one email per connection.
    """

    def __init__(
        self,
        conn: psycopg.Connection,
        plan: JourneyPlan,
        tile: str,
        final_attempt: bool,
        batch: Batch,
    ) -> None:
        self.conn = conn
        self.plan = plan
        self.tile = tile
        self.final_attempt = final_attempt
        self.batch = batch
        self.senders = smtp_senders()
        self.pending: list[Reply] = []
        self.recorded_keys: list[int] = []
        # One cursor per statement of a transaction, kept for the batch: a
        # new one per execute costs a few percent of a send's CPU.
        self.cursors: list[psycopg.Cursor] = []

    def render_all(
        self, render: Callable[[int, int], PreparedSend]
    ) -> list[tuple[int, int, str | None, PreparedSend]]:
        """Render the batch's emails before the first goes out, so that each
        send can carry the next email's envelope. A contact whose email cannot
        be rendered is recorded as failed."""
        ready = []
        for contact, send_id, previous in self.batch.to_send:
            try:
                ready.append((contact, send_id, previous, render(contact, send_id)))
            except RenderError as error:
                with self.conn.transaction():
                    result = _refuse(
                        self.conn,
                        self.plan,
                        self.tile,
                        contact,
                        clock.now(),
                        f"failed:{error}",
                        self.batch,
                    )
                self.batch.results[result] += 1
        return ready

    def send_all(self, ready: list[tuple[int, int, str | None, PreparedSend]]) -> None:
        """Send the rendered emails, one group of one per connection at a time."""
        lanes = len(self.senders)
        if lanes > 1 and not self.senders[0].pipelines():
            # Without pipelining each envelope costs round trips after its
            # 'sending' record commits, so emails would wait marked while
            # others go out: one connection keeps that to one email.
            lanes = 1
        for start in range(0, len(ready), lanes):
            self._send_group(
                ready[start : start + lanes], ready[start + lanes : start + 2 * lanes]
            )

    def flush(self) -> None:
        """Record the replies still waiting, if any: those of the last group,
        or those whose transaction failed. A deadlock is retried, because
        these emails went out and their replies must not be lost."""
        for attempt in range(1, _FLUSH_ATTEMPTS + 1):
            if not self.pending:
                return
            try:
                self._commit([])
            except psycopg.errors.DeadlockDetected:
                if attempt == _FLUSH_ATTEMPTS:
                    raise
                logger.warning(
                    "journey %s tile %s: deadlock while recording %d replies,"
                    " attempt %d of %d",
                    self.plan.name,
                    self.tile,
                    len(self.pending),
                    attempt,
                    _FLUSH_ATTEMPTS,
                )

    def _send_group(
        self,
        group: list[tuple[int, int, str | None, PreparedSend]],
        following: list[tuple[int, int, str | None, PreparedSend]],
    ) -> None:
        """Mark the group's emails as sending and send each over its own
        connection. `following` is the next group, whose envelopes ride with
        these contents."""
        # Envelopes first, so that no content waits for a round trip once
        # its 'sending' record has committed. Most rode with the contents
        # of the group before.
        for lane, (_, _, _, prepared) in enumerate(group):
            self.senders[lane].open(prepared.sender_address, prepared.address)
        marks = self._commit(group)

        marked, unmarked = [], []
        for lane, (email, (locked, written)) in enumerate(
            zip(group, marks, strict=True)
        ):
            sender = self.senders[lane]
            if locked and written:
                after = following[lane][3] if lane < len(following) else None
                marked.append((email, sender, after))
            else:
                unmarked.append((email, sender, locked))

        # Every content goes out before the first reply is awaited, and the
        # replies are pending before anything else can fail.
        begun = [
            (email, sender, self._begin(sender, email, after))
            for email, sender, after in marked
        ]
        for (contact, send_id, _, _), sender, (sending, started) in begun:
            if isinstance(sending, Reply):
                reply = sending
            else:
                reply = self._finish(sender, contact, send_id, sending)
            observe_smtp(time.perf_counter() - started)
            self.pending.append(reply)
            self.batch.results[reply.result] += 1

        for email, sender, locked in unmarked:
            # The group before may have opened this email's envelope.
            sender.abandon()
            result = Result.DEFERRED
            if locked:
                result = _unmarked(
                    self.conn, self.plan, self.tile, email[0], self.batch
                )
            self.batch.results[result] += 1

    def _begin(
        self,
        sender: SmtpSender,
        email: tuple[int, int, str | None, PreparedSend],
        after: PreparedSend | None,
    ) -> tuple[Sending | Reply, float]:
        """Send an email up to its content; return what finish() needs, or
        the reply when the send ended before the content."""
        contact, send_id, _, prepared = email
        then = (after.sender_address, after.address) if after else None
        started = time.perf_counter()
        try:
            sending = sender.begin(
                prepared.sender_address, prepared.address, prepared.data, then
            )
        except (SmtpRejected, SmtpOutcomeUnknown, SmtpTemporaryError) as error:
            return self._failed(contact, send_id, error), started
        return sending, started

    def _finish(
        self, sender: SmtpSender, contact: int, send_id: int, sending: Sending
    ) -> Reply:
        try:
            code, text = sender.finish(sending)
        except (SmtpRejected, SmtpOutcomeUnknown, SmtpTemporaryError) as error:
            return self._failed(contact, send_id, error)
        return Reply(contact, send_id, "accepted", code, text, Result.SENT)

    def _failed(self, contact: int, send_id: int, error: Exception) -> Reply:
        """Return the reply that a failed send records."""
        plan, tile = self.plan, self.tile
        if isinstance(error, SmtpRejected):
            return Reply(
                contact, send_id, "rejected", error.code, error.reply, Result.BOUNCED
            )
        if isinstance(error, SmtpOutcomeUnknown):
            logger.warning(
                "journey %s tile %s contact %s: %s", plan.name, tile, contact, error
            )
            return Reply(
                contact, send_id, "unconfirmed", None, str(error), Result.UNCONFIRMED
            )
        logger.warning(
            "journey %s tile %s contact %s: %s: %s",
            plan.name,
            tile,
            contact,
            "giving up" if self.final_attempt else "deferred",
            error,
        )
        result = Result.FAILED if self.final_attempt else Result.DEFERRED
        return Reply(contact, send_id, "deferred", None, str(error), result)

    def _commit(
        self, marks: list[tuple[int, int, str | None, PreparedSend]]
    ) -> list[tuple[bool, bool]]:
        """In one transaction, record the waiting replies, take each marked
        contact's lock and write its 'sending' record, and release the locks
        of the contacts that the transaction before recorded. Returns, per
        mark, whether its lock was taken and its record written.

        Each reply and each mark goes to one statement of the transaction,
        built as for a single email. The statements go to the server in one
        pipeline, so the transaction costs one round trip."""
        plan = self.plan
        replies = self.pending
        count = max(len(replies), len(marks), len(self.recorded_keys))
        now = clock.now()
        statements = []
        for index in range(count):
            reply = replies[index] if index < len(replies) else None
            mark = marks[index] if index < len(marks) else None
            key = self.recorded_keys[index] if index < len(self.recorded_keys) else None
            params = {
                "journey": plan.journey_id,
                "version": plan.version,
                "tile": self.tile,
                "now": now,
                "unlock_key": key,
                **(self._reply_params(reply) if reply else _NO_REPLY),
                **(_mark_params(*mark) if mark else _NO_MARK),
            }
            statements.append((_record_and_mark(_parts_for(params)), params))
        rows = self._execute(statements)
        # Only now are the replies recorded. After a failed transaction,
        # flush() records them again.
        self.pending = []
        self.recorded_keys = [reply.contact % _LOCK_SPACE for reply in replies]

        for reply, (_, params), row in zip(replies, statements, rows, strict=False):
            queued = row[2] if row else None
            if queued:
                self.batch.outbox.extend(
                    (
                        outbox_id,
                        plan.journey_id,
                        plan.version,
                        params["next_tile"],
                        reply.contact,
                    )
                    for outbox_id in queued
                )
        results = []
        for mark, row in zip(marks, rows, strict=False):
            held, marked = (row[0], row[1]) if row else (None, None)
            if not held:
                logger.info(
                    "journey %s tile %s contact %s: send in flight elsewhere,"
                    " retrying later",
                    plan.name,
                    self.tile,
                    mark[0],
                )
            results.append((bool(held), marked is not None))
        return results

    def _execute(self, statements: list[tuple[str, dict]]) -> list[tuple | None]:
        """Run the statements in one transaction and one round trip; return
        the row of each."""
        while len(self.cursors) < len(statements):
            self.cursors.append(self.conn.cursor())
        if len(statements) == 1:
            return [self.cursors[0].execute(*statements[0]).fetchone()]
        # In a pipeline the statements before the sync form one transaction.
        with self.conn.pipeline() as pipeline:
            for cursor, (statement, params) in zip(
                self.cursors[: len(statements)], statements, strict=True
            ):
                cursor.execute(statement, params)
            pipeline.sync()
            return [cursor.fetchone() for cursor in self.cursors[: len(statements)]]

    def _reply_params(self, reply: Reply) -> dict[str, object]:
        step = _STEP_FOR_RESULT.get(reply.result)
        end = _step_end(self.plan, self.tile, *step) if step else _NO_END
        return {
            "r_send": reply.send_id,
            "r_contact": reply.contact,
            "r_state": reply.state,
            "r_code": reply.code,
            "r_text": reply.text[:500],
            "r_bounced": reply.result is Result.BOUNCED,
            "step_state": step[0] if step else None,
            "step_outcome": step[1] if step else None,
            "step_reason": step[2] if step else None,
            "next_tile": end.next_tile,
            "entry_state": end.entry_state,
            "exit_reason": end.exit_reason,
        }


# One statement per email of a group's transaction, put together from the
# parts below that the email needs. Without a reply only the mark runs, and
# without a mark only the record. The hand-on, the exit from the journey and
# the bounce run only when the reply calls for them. Each part that a
# statement carries costs time whether it changes rows or not, because it
# opens and locks its table and that table's indexes. The lock released at
# the end belongs to a contact recorded by the transaction before, which has
# committed. left_journey reads finished so that the step row is locked
# before the entry row, the order in which end_journey and stop_contacts
# lock them, because the other order deadlocks with them. The statements of
# a transaction come in contact order, the order in which end_journey locks
# steps. finished does not check the step's state, so a step that the
# journey's end stopped while the email was in flight still records that it
# was sent.
_PARTS = {
    "recorded": """
    UPDATE sends SET state = %(r_state)s::text, smtp_code = %(r_code)s::integer,
        smtp_reply = %(r_text)s::text, finished_at = %(now)s
    WHERE id = %(r_send)s::bigint
    RETURNING id""",
    "bounced": """
    UPDATE contacts SET bounced_at = %(now)s
    WHERE id = %(r_contact)s::bigint AND bounced_at IS NULL
    RETURNING id""",
    "finished": """
    UPDATE steps SET state = %(step_state)s::text, outcome = %(step_outcome)s::text,
        reason = %(step_reason)s::text, done_at = %(now)s
    WHERE journey_id = %(journey)s::integer
      AND tile = %(tile)s::text AND contact = %(r_contact)s::bigint
    RETURNING contact""",
    "left_journey": """
    UPDATE entries SET state = %(entry_state)s::text,
        reason = %(exit_reason)s::text, left_at = %(now)s
    WHERE journey_id = %(journey)s::integer
      AND contact IN (SELECT contact FROM finished) AND state = 'in_progress'
    RETURNING contact""",
    "handed": """
    INSERT INTO steps (journey_id, tile, contact, version, state, entered_at)
    SELECT %(journey)s::integer, %(next_tile)s::text, %(r_contact)s::bigint,
        %(version)s::integer, 'in_progress', %(now)s
    WHERE EXISTS (SELECT 1 FROM journeys WHERE id = %(journey)s::integer
                  AND status = 'live' AND end_at > %(now)s)
    ON CONFLICT DO NOTHING RETURNING contact""",
    "queued": """
    INSERT INTO outbox (journey_id, version, tile, contact)
    SELECT %(journey)s::integer, %(version)s::integer, %(next_tile)s::text, contact
    FROM handed
    RETURNING id""",
    "lock": """
    SELECT pg_try_advisory_lock(%(journey)s::integer, %(m_key)s::integer) AS held""",
    "marked": """
    INSERT INTO sends (id, journey_id, tile, contact, address, state, message_id,
                       links, started_at)
    SELECT %(m_id)s::bigint, %(journey)s::integer, %(tile)s::text,
        %(m_contact)s::bigint, %(address)s::text, 'sending',
        %(message_id)s::text, %(links)s::jsonb, %(now)s
    FROM lock WHERE lock.held
    ON CONFLICT DO NOTHING RETURNING id""",
    "remarked": """
    UPDATE sends SET state = 'sending', attempts = attempts + 1,
        message_id = %(message_id)s::text, links = %(links)s::jsonb,
        started_at = %(now)s
    FROM lock WHERE lock.held AND id = %(m_id)s::bigint AND state = 'deferred'
    RETURNING sends.id""",
    "released": """
    SELECT pg_advisory_unlock(%(journey)s::integer, %(unlock_key)s::integer)""",
}


@functools.lru_cache(maxsize=64)
def _record_and_mark(parts: frozenset[str]) -> str:
    """Return the statement made of these parts. Its one row contains whether
    the mark's lock was taken, the id of the 'sending' record written, and
    the ids of the outbox rows queued for the next tile, each NULL where the
    statement has no such part."""
    ctes = ",\n".join(
        f"{name} AS ({body})" for name, body in _PARTS.items() if name in parts
    )
    lock_column = "NULL::boolean"
    if "lock" in parts:
        lock_column = "(SELECT held FROM lock)"
    # A mark is either a new 'sending' record or a deferred one sent again.
    mark_column = "NULL::bigint"
    for name in ("marked", "remarked"):
        if name in parts:
            mark_column = f"(SELECT id FROM {name} LIMIT 1)"
    queued_column = "NULL::bigint[]"
    if "queued" in parts:
        queued_column = "(SELECT array_agg(id ORDER BY id) FROM queued)"
    statement = f"SELECT {lock_column}, {mark_column}, {queued_column}"
    if ctes:
        statement = f"WITH {ctes}\n{statement}"
    if "released" in parts:
        # released is a plain SELECT, which runs only when the query reads it.
        statement += " FROM (SELECT count(*) FROM released) AS unlocked"
    return statement


def _parts_for(params: dict[str, object]) -> frozenset[str]:
    parts = set()
    if params["r_send"] is not None:
        parts.add("recorded")
        if params["r_bounced"]:
            parts.add("bounced")
        if params["step_state"] is not None:
            parts.add("finished")
            if params["entry_state"] is not None:
                parts.add("left_journey")
            if params["next_tile"] is not None:
                parts.update(("handed", "queued"))
    if params["m_key"] is not None:
        parts.update(("lock", "remarked" if params["retry"] else "marked"))
    if params["unlock_key"] is not None:
        parts.add("released")
    return frozenset(parts)


_NO_REPLY: dict[str, object] = dict.fromkeys(
    (
        "r_send",
        "r_contact",
        "r_state",
        "r_code",
        "r_text",
        "step_state",
        "step_outcome",
        "step_reason",
        "next_tile",
        "entry_state",
        "exit_reason",
    )
) | {"r_bounced": False}

_NO_MARK: dict[str, object] = dict.fromkeys(
    ("m_key", "m_id", "m_contact", "address", "message_id", "links")
) | {"retry": False}


def _mark_params(
    contact: int, send_id: int, previous: str | None, prepared: PreparedSend
) -> dict[str, object]:
    return {
        "m_key": contact % _LOCK_SPACE,
        "m_id": send_id,
        "m_contact": contact,
        "address": prepared.address,
        "message_id": prepared.message_id,
        "links": Jsonb(prepared.links),
        "retry": previous == "deferred",
    }


@dataclass(frozen=True)
class StepEnd:
    """The destination of a contact whose email step is over: the next tile,
    or an entry state and reason for leaving the journey."""

    next_tile: str | None = None
    entry_state: str | None = None
    exit_reason: str | None = None


_NO_END = StepEnd()


def _step_end(
    plan: JourneyPlan, tile: str, state: str, outcome: str | None, reason: str | None
) -> StepEnd:
    if state == "completed" and outcome == "sent":
        following = plan.after(tile)
        if following is None:
            return StepEnd(entry_state="completed")
        return StepEnd(next_tile=following)
    # The entry keeps the kind of exit; the step keeps the detail.
    if outcome == "bounced":
        return StepEnd(entry_state="left", exit_reason="bounced")
    if state == "failed":
        return StepEnd(entry_state="left", exit_reason="failed")
    return StepEnd(entry_state="left", exit_reason=reason or outcome or state)


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


def _finish(
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
    """Set the step's final state. Hand a sent contact on, adding the next
    tile's outbox rows to the batch, and take any other out of the journey."""
    conn.execute(
        "UPDATE steps SET state = %s, outcome = %s, reason = %s, done_at = %s"
        " WHERE journey_id = %s AND tile = %s AND contact = %s",
        (state, outcome, reason, now, plan.journey_id, tile, contact),
    )
    end = _step_end(plan, tile, state, outcome, reason)
    if end.next_tile is not None:
        batch.outbox.extend(
            enqueue_step(
                conn, plan.journey_id, plan.version, end.next_tile, [contact], now
            )
        )
    elif end.entry_state is not None:
        leave_journey(
            conn, plan.journey_id, [contact], end.entry_state, end.exit_reason, now
        )


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
