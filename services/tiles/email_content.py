"""What the email tile sends one contact: the published email rendered for
them, with signed unsubscribe, open and click links of this send."""

from __future__ import annotations

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
from shared.templates import CompiledEmail, RenderError
from shared.tokens import sign

_ANCHOR_HREF = re.compile(r'(<a\b[^>]*?\bhref\s*=\s*")(https?://[^"]+)(")', re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


@dataclass(frozen=True)
class PreparedSend:
    address: str
    message_id: str
    data: bytes
    sender_address: str
    links: list[str]


class _CompiledCache:
    """Compiled templates by (email name, revision); a new revision compiles anew."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, int], CompiledEmail] = {}
        self._lock = threading.Lock()

    def get(self, email: Email, revision: int) -> CompiledEmail:
        key = (email.name, revision)
        with self._lock:
            if key not in self._items:
                self._items[key] = CompiledEmail(email)
            return self._items[key]


_compiled = _CompiledCache()


def prepare_send(
    conn: psycopg.Connection, plan: JourneyPlan, tile: str, contact: int, send_id: int
) -> tuple[PreparedSend | None, str]:
    """Render the contact's email; return it, or None and why it is not sent.

    A reason starting with 'failed:' means the email itself cannot go out;
    any other reason blocks this contact only.
    """
    email_name = plan.tiles[tile].email
    email = _load_definition(conn, "email", email_name)
    if email is None:
        return None, f"failed:email {email_name!r} is not published"
    settings_name = plan.definition.content_settings
    content_settings = _load_definition(conn, "content-settings", settings_name)
    if content_settings is None:
        return None, f"failed:content settings {settings_name!r} are not published"

    person = _load_contact(conn, contact)
    if person is None:
        return None, "failed:contact no longer exists"
    consent = consent_reasons(conn, plan, [contact])
    if contact in consent:
        return None, consent[contact]
    address = normalize_address(person["email"])
    if address is None:
        return None, "invalid_address"

    try:
        compiled = _compiled.get(email[0], email[1])
        prepared = _render(compiled, email[0], content_settings[0], person, address, send_id)
    except RenderError as error:
        return None, f"failed:{error}"
    return prepared, ""


def _render(
    compiled: CompiledEmail,
    email: Email,
    settings: ContentSettings,
    person: Mapping[str, Any],
    address: str,
    send_id: int,
) -> PreparedSend:
    secret = get_settings().secret_key.get_secret_value().encode()
    sender_name, sender_address = split_sender(email.from_ or settings.sender)
    token = sign(secret, "unsubscribe", send_id)
    separator = "&" if "?" in settings.subscription_center_url else "?"
    unsubscribe_url = f"{settings.subscription_center_url}{separator}token={token}"
    mailbox = settings.unsubscribe_mailto or "unsubscribe@" + sender_address.rpartition("@")[2]
    content = {
        "sender_name": sender_name,
        "sender_address": sender_address,
        "postal_address": settings.postal_address,
        "subscription_center_url": unsubscribe_url,
    }
    rendered = compiled.render(person, content)
    tracked_html, links = track_links(rendered.html, send_id, secret, keep=unsubscribe_url)
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


def track_links(body: str, send_id: int, secret: bytes, keep: str) -> tuple[str, list[str]]:
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


def _load_definition(conn: psycopg.Connection, kind: str, name: str) -> tuple[Any, int] | None:
    """Return a published definition and its revision, or None when it is not live."""
    row = conn.execute(
        "SELECT body, revision FROM definitions"
        " WHERE kind = %s AND name = %s AND status = 'live'",
        (kind, name),
    ).fetchone()
    if row is None:
        return None
    model = Email if kind == "email" else ContentSettings
    return model.model_validate(row[0]), row[1]


def _load_contact(conn: psycopg.Connection, contact: int) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT contact_id, email, firstname, lastname, unsubscribed, fields"
        " FROM contacts WHERE id = %s",
        (contact,),
    ).fetchone()
    if row is None:
        return None
    contact_id, email, firstname, lastname, unsubscribed, fields = row
    person = dict(fields)
    person.update(
        contact_id=contact_id or "",
        email=email,
        firstname=firstname,
        lastname=lastname,
        unsubscribed=unsubscribed,
    )
    return person
