"""The database work of the tracking routes. Each function runs one
transaction on the process's pool and returns the result label that the
route counts: 'recorded', 'ignored' or 'invalid'."""

from __future__ import annotations

import logging

import psycopg

from shared import clock
from shared.db import get_pool
from shared.interactions import SendRef, find_send, record_interaction
from shared.tokens import TokenClaims

logger = logging.getLogger(__name__)


def record_open(claims: TokenClaims, *, record: bool) -> str:
    """Record an 'opened' interaction for the send of a verified open token."""
    with get_pool().connection() as conn, conn.transaction():
        send = _accepted_send(conn, claims)
        if send is None:
            return "invalid"
        if not record:
            return "ignored"
        record_interaction(conn, send, "opened", clock.now())
    return "recorded"


def resolve_click(claims: TokenClaims, *, record: bool) -> tuple[str, str | None]:
    """Find the address that a verified click token leads to, and record the
    click. Returns the result and the address, which is None when invalid."""
    with get_pool().connection() as conn, conn.transaction():
        send = _accepted_send(conn, claims)
        if send is None:
            return "invalid", None
        if claims.link >= len(send.links):
            logger.info(
                "click token of send %s rejected: link %s of %s links",
                claims.send_id,
                claims.link,
                len(send.links),
            )
            return "invalid", None
        link = send.links[claims.link]
        if not isinstance(link, str) or not link.lower().startswith(
            ("http://", "https://")
        ):
            # The email tile stores only http and https addresses, so another
            # value means that someone changed the row by hand. It is not followed.
            logger.warning(
                "click of send %s link %s rejected: the stored link is not an "
                "http or https address",
                claims.send_id,
                claims.link,
            )
            return "invalid", None
        if not record:
            return "ignored", link
        record_interaction(conn, send, "clicked", clock.now(), link=link)
    return "recorded", link


def send_exists(send_id: int) -> bool:
    with get_pool().connection() as conn:
        row = conn.execute("SELECT 1 FROM sends WHERE id = %s", (send_id,)).fetchone()
    if row is None:
        logger.info("unsubscribe token rejected: send %s does not exist", send_id)
    return row is not None


def unsubscribe(send_id: int) -> str:
    """Unsubscribe the contact of a send, recording one 'unsubscribed'
    interaction per send however often the request repeats."""
    with get_pool().connection() as conn, conn.transaction():
        # The row lock makes simultaneous requests for one send wait for each
        # other, so only the first one finds no interaction and records it.
        locked = conn.execute(
            "SELECT 1 FROM sends WHERE id = %s FOR UPDATE", (send_id,)
        ).fetchone()
        send = find_send(conn, send_id) if locked else None
        if send is None:
            logger.info("unsubscribe token rejected: send %s does not exist", send_id)
            return "invalid"
        # Unlike opens and clicks, an unsubscribe counts for a send in any state,
        # because a send left 'unconfirmed' or 'deferred' may have reached the contact.
        if _already_unsubscribed(conn, send):
            return "ignored"
        record_interaction(conn, send, "unsubscribed", clock.now())
    logger.info("contact %s unsubscribed through send %s", send.contact, send_id)
    return "recorded"


def _already_unsubscribed(conn: psycopg.Connection, send: SendRef) -> bool:
    """Return True when this send already has an 'unsubscribed' interaction and
    the contact is still unsubscribed.

    A contact that was subscribed again since, for example by a contacts
    import, is unsubscribed again by a new request.
    """
    row = conn.execute(
        "SELECT c.unsubscribed AND EXISTS ("
        "  SELECT 1 FROM interactions i"
        "  WHERE i.send_id = %s AND i.kind = 'unsubscribed')"
        " FROM contacts c WHERE c.id = %s",
        (send.send_id, send.contact),
    ).fetchone()
    return bool(row and row[0])


def _accepted_send(conn: psycopg.Connection, claims: TokenClaims) -> SendRef | None:
    """Return the token's send when it exists and the SMTP server accepted it."""
    send = find_send(conn, claims.send_id)
    if send is None:
        logger.info(
            "%s token rejected: send %s does not exist", claims.purpose, claims.send_id
        )
        return None
    if send.state != "accepted":
        logger.info(
            "%s token of send %s rejected: the send is %r, not 'accepted'",
            claims.purpose,
            claims.send_id,
            send.state,
        )
        return None
    return send
