"""Content of one contact's email: the published email rendered for them,
with signed unsubscribe, open and click links of this send."""

from __future__ import annotations

import functools
import html
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from services.tiles.consent import consent_reasons
from services.tiles.plan import JourneyPlan
from shared.config import get_settings
from shared.definitions import ContentSettings, Email
from shared.mail import (
    Envelope,
    build_message,
    normalize_address,
    split_sender,
    unsubscribe_mailto,
)
from shared.store import live_definition
from shared.templates import CompiledEmail
from shared.tokens import sign

_ANCHOR_HREF = re.compile(
    r'(<a\b[^>]*?\bhref\s*=\s*")(https?://[^"]+)(")', re.IGNORECASE
)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


@dataclass(frozen=True)
class PreparedSend:
    address: str
    message_id: str
    data: bytes
    sender_address: str
    links: list[str]


class _CompiledCache:
    """The compiled template of each email's live revision.

    One entry per email name, compiled anew when the revision or the content
    differs from the one cached, so it cannot grow with revisions nor serve
    a template that a database reset gave an old revision number.
    """

    def __init__(self) -> None:
        self._items: dict[str, tuple[int, Email, CompiledEmail]] = {}
        self._lock = threading.Lock()

    def get(self, email: Email, revision: int) -> CompiledEmail:
        with self._lock:
            cached = self._items.get(email.name)
            if cached is None or cached[0] != revision or cached[1] != email:
                cached = (revision, email, CompiledEmail(email))
                self._items[email.name] = cached
            return cached[2]


_compiled = _CompiledCache()


@dataclass(frozen=True)
class EmailContext:
    """Content shared by every contact of one email tile: the compiled email
    and the content settings, or the reason the tile cannot send at all."""

    compiled: CompiledEmail | None
    email: Email | None
    settings: ContentSettings | None
    failure: str | None


def load_context(
    conn: psycopg.Connection, plan: JourneyPlan, tile: str
) -> EmailContext:
    email_name = plan.tiles[tile].email
    email = live_definition(conn, "email", email_name)
    if email is None:
        return EmailContext(None, None, None, f"email {email_name!r} is not published")
    settings_name = plan.definition.content_settings
    settings = live_definition(conn, "content-settings", settings_name)
    if settings is None:
        return EmailContext(
            None, None, None, f"content settings {settings_name!r} are not published"
        )
    return EmailContext(_compiled.get(email[0], email[1]), email[0], settings[0], None)


def load_recipients(
    conn: psycopg.Connection, plan: JourneyPlan, contacts: list[int]
) -> tuple[dict[int, tuple[dict[str, Any], str]], dict[int, str]]:
    """Return the contacts who may be emailed, with their data and address,
    and the others with why not: a consent reason, an invalid address, or
    'failed:' when the contact no longer exists."""
    people = _load_contacts(conn, contacts)
    refused = consent_reasons(conn, plan, list(people))
    allowed: dict[int, tuple[dict[str, Any], str]] = {}
    for contact in contacts:
        person = people.get(contact)
        if person is None:
            refused[contact] = "failed:contact no longer exists"
        elif contact not in refused:
            address = normalize_address(person["email"])
            if address is None:
                refused[contact] = "invalid_address"
            else:
                allowed[contact] = (person, address)
    return allowed, refused


def render_send(
    context: EmailContext, person: Mapping[str, Any], address: str, send_id: int
) -> PreparedSend:
    """Render one contact's email; raises RenderError when the template fails."""
    assert context.compiled and context.email and context.settings
    return _render(
        context.compiled, context.email, context.settings, person, address, send_id
    )


def _render(
    compiled: CompiledEmail,
    email: Email,
    settings: ContentSettings,
    person: Mapping[str, Any],
    address: str,
    send_id: int,
) -> PreparedSend:
    secret = get_settings().secret_key.get_secret_value().encode()
    sender_name, sender_address = _sender(email.from_ or settings.sender)
    token = sign(secret, "unsubscribe", send_id)
    separator = "&" if "?" in settings.subscription_center_url else "?"
    unsubscribe_url = f"{settings.subscription_center_url}{separator}token={token}"
    mailbox = (
        settings.unsubscribe_mailto
        or "unsubscribe@" + sender_address.rpartition("@")[2]
    )
    content = {
        "sender_name": sender_name,
        "sender_address": sender_address,
        "postal_address": settings.postal_address,
        "subscription_center_url": unsubscribe_url,
    }
    rendered = compiled.render(person, content)
    tracked_html, links = track_links(
        rendered.html, send_id, secret, keep=unsubscribe_url
    )
    envelope = Envelope(
        sender_name=sender_name,
        sender_address=sender_address,
        recipient_name=f"{person['firstname']} {person['lastname']}".strip(),
        recipient_address=address,
        unsubscribe_url=unsubscribe_url,
        unsubscribe_mailto=unsubscribe_mailto(mailbox, token),
    )
    message_id, data = build_message(envelope, rendered.with_html(tracked_html))
    return PreparedSend(address, message_id, data, sender_address, links)


@functools.lru_cache(maxsize=64)
def _sender(sender: str) -> tuple[str, str]:
    """Return the display name and the ASCII address of a 'Name <address>'
    sender, whose check at go-live made sure the address is valid."""
    name, address = split_sender(sender)
    return name, normalize_address(address) or address


def track_links(
    body: str, send_id: int, secret: bytes, keep: str
) -> tuple[str, list[str]]:
    """Point each link of the HTML at the click redirect, and add the open pixel.

    Returns the new HTML and the original addresses, in link-number order; the
    tracking service redirects only to these. The unsubscribe link stays as it
    is, so that it works without the tracking service.
    """
    base = get_settings().tracking_url.rstrip("/")
    links: list[str] = []

    def rewrite(match: re.Match[str]) -> str:
        target = html.unescape(match.group(2))
        if target == keep:
            return match.group(0)
        links.append(target)
        token = sign(secret, "click", send_id, len(links) - 1)
        return f"{match.group(1)}{base}/c/{token}{match.group(3)}"

    tracked = _ANCHOR_HREF.sub(rewrite, body)
    pixel = (
        f'<img src="{base}/o/{sign(secret, "open", send_id)}" width="1" height="1" '
        'alt="" style="display:none">'
    )
    if _BODY_END.search(tracked):
        tracked = _BODY_END.sub(lambda end: pixel + end.group(0), tracked, count=1)
    else:
        tracked += pixel
    return tracked, links


def _load_contacts(
    conn: psycopg.Connection, contacts: list[int]
) -> dict[int, dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, contact_id, email, firstname, lastname, unsubscribed, fields"
        " FROM contacts WHERE id = ANY(%s)",
        (contacts,),
    ).fetchall()
    people = {}
    for contact, contact_id, email, firstname, lastname, unsubscribed, fields in rows:
        person = dict(fields)
        person.update(
            contact_id=contact_id or "",
            email=email,
            firstname=firstname,
            lastname=lastname,
            unsubscribed=unsubscribed,
        )
        people[contact] = person
    return people
