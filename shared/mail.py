"""Building marketing messages and sending them over reused SMTP connections."""

from __future__ import annotations

import binascii
import functools
import itertools
import logging
import re
import secrets
import select
import smtplib
import ssl
import threading
import time
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from typing import NoReturn
from urllib.parse import quote

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from shared.config import SmtpTarget
from shared.errors import PermanentError, SmtpTemporaryError
from shared.templates import RenderedEmail, one_line

logger = logging.getLogger(__name__)


class SmtpRejected(PermanentError):
    """Raised when the SMTP server replies 5xx for one recipient."""

    def __init__(self, code: int, reply: str) -> None:
        self.code = code
        self.reply = reply
        super().__init__(f"SMTP server rejected the message: {code} {reply}")


class SmtpOutcomeUnknown(PermanentError):
    """Raised when the connection broke after the message data was sent, so
    the server may or may not have accepted it."""


@dataclass(frozen=True)
class Envelope:
    sender_name: str
    sender_address: str
    recipient_name: str
    recipient_address: str
    unsubscribe_url: str
    unsubscribe_mailto: str


def normalize_address(address: str) -> str | None:
    """Return the address in the ASCII form that SMTP carries without the
    SMTPUTF8 extension, with an internationalised domain in its IDNA form.

    Returns None when the address is invalid, or when its local part is not
    ASCII: the sender does not use SMTPUTF8, so such an address cannot be
    sent to.

    The usual address, a local part of plain atoms, takes a short way. For
    such a local part email-validator 2.4 only checks its length and
    lowercases the role names of RFC 2142 (info, postmaster and others), so
    the short way checks the domain alone, cached because domains repeat,
    and sends role names the full way. The full check took about 20 us per
    address with `timeit` on the two-core development machine, once per
    email sent. A property test compares both ways.
    """
    local, at, domain = address.rpartition("@")
    if (
        at
        and len(local) <= _LOCAL_PART_MAX
        and _PLAIN_LOCAL_PART.match(local)
        and local.lower() not in _ROLE_MAILBOXES
    ):
        checked = _checked_domain(domain)
        if checked is not None and len(local) + 1 + checked[1] <= _ADDRESS_MAX:
            return f"{local}@{checked[0]}"
    return checked_address(address)


def checked_address(address: str) -> str | None:
    """normalize_address by email-validator's full check alone."""
    try:
        checked = validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return None
    return checked.ascii_email


# RFC 5322 atoms joined by single dots, and RFC 5321's length limits in bytes.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_LOCAL_PART = re.compile(rf"{_ATOM}(?:\.{_ATOM})*\Z")
_LOCAL_PART_MAX = 64
_ADDRESS_MAX = 254
_ROLE_MAILBOXES = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


@functools.lru_cache(maxsize=4096)
def _checked_domain(domain: str) -> tuple[str, int] | None:
    """Return the domain's IDNA form and the UTF-8 length of its longest
    form, or None when it is invalid.

    email-validator limits the address to 254 bytes as given, with the domain
    in Unicode and with it in IDNA, so the longest of the three counts.
    """
    try:
        checked = validate_email("postmaster@" + domain, check_deliverability=False)
    except EmailNotValidError:
        return None
    longest = max(
        len(domain.encode()), len(checked.domain.encode()), len(checked.ascii_domain)
    )
    return checked.ascii_domain, longest


def split_sender(sender: str) -> tuple[str, str]:
    """Split 'Name <address>' into its display name and address."""
    name, address = parseaddr(sender)
    return one_line(name), address


def build_message(envelope: Envelope, rendered: RenderedEmail) -> tuple[str, bytes]:
    """Return the Message-ID and the wire bytes of one marketing email.

    The message is multipart/alternative with a text and an HTML part, both
    UTF-8 in quoted-printable. It is written directly rather than through
    email.message.EmailMessage, which costs more CPU than the rest of a send;
    the tests parse the result with the standard library to hold it to the
    same standard.
    """
    domain = envelope.sender_address.rpartition("@")[2] or "localhost"
    message_id = make_msgid(domain=domain)
    text = _quoted_printable(rendered.text)
    html = _quoted_printable(rendered.html)
    boundary = _boundary(text, html)
    headers = [
        ("From", _sender_header(envelope.sender_name, envelope.sender_address)),
        ("To", _format_address(envelope.recipient_name, envelope.recipient_address)),
        ("Subject", _header_text(rendered.subject)),
        ("Date", _date_header(int(time.time()))),
        ("Message-ID", message_id),
        (
            "List-Unsubscribe",
            f"<{envelope.unsubscribe_url}>, <{envelope.unsubscribe_mailto}>",
        ),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
    ]
    # Every value is one line already; one_line makes sure no caller can add a header.
    head = "".join(f"{name}: {one_line(value)}\r\n" for name, value in headers)
    parts = b"".join(
        b"--"
        + boundary.encode()
        + b"\r\n"
        + f'Content-Type: text/{subtype}; charset="utf-8"\r\n'.encode()
        + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + body
        + b"\r\n"
        for subtype, body in (("plain", text), ("html", html))
    )
    data = (
        head.encode("ascii") + b"\r\n" + parts + b"--" + boundary.encode() + b"--\r\n"
    )
    return message_id, data


def _check_addresses(*addresses: str) -> None:
    for value in addresses:
        if "\r" in value or "\n" in value:
            # Go-live checks the sender and normalize_address the recipient,
            # so this only guards them: a line break would add SMTP commands.
            raise ValueError(f"line break in SMTP address {value!r}")


def _has_input(connection: smtplib.SMTP) -> bool:
    """Return whether the server has closed the connection or sent a line
    that nothing asked for, without blocking."""
    sock = connection.sock
    if sock is None:
        return True
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _commands(sender: str, recipient: str) -> str:
    return f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n"


def _accepted(code: int) -> bool:
    return 200 <= code < 300


def _reply_text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def _content(data: bytes) -> bytes:
    """Return message data as DATA carries it: each line that starts with a
    dot gets another, and a line with a single dot ends it."""
    quoted = _LEADING_DOT.sub(b"..", data)
    if not quoted.endswith(b"\r\n"):
        quoted += b"\r\n"
    return quoted + b".\r\n"


def _quoted_printable(body: str) -> bytes:
    lines = body.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    return binascii.b2a_qp(lines, istext=True).replace(b"\n", b"\r\n")


# A MIME boundary needs only to be absent from the parts it separates. The
# parts are quoted-printable, in which '=' always starts an escape of two
# hex digits or a soft line break, so no part contains '=_'. A random prefix
# per process and a counter are cheaper than random bytes per message.
_BOUNDARY_PREFIX = "=_" + secrets.token_hex(8)
_boundary_numbers = itertools.count()


def _boundary(*bodies: bytes) -> str:
    while True:
        boundary = f"{_BOUNDARY_PREFIX}.{next(_boundary_numbers)}"
        if not any(boundary.encode() in body for body in bodies):
            return boundary


@functools.lru_cache(maxsize=4)
def _date_header(second: int) -> str:
    return formatdate(second, usegmt=True)


@functools.lru_cache(maxsize=64)
def _sender_header(name: str, address: str) -> str:
    return _format_address(name, address)


def _header_text(value: str) -> str:
    """Return a header value on one line, RFC 2047-encoded when not ASCII."""
    value = one_line(value)
    if value.isascii() and len(value) < 900:
        return value
    return Header(value, "utf-8").encode(linesep="\r\n")


def unsubscribe_mailto(mailbox: str, token: str) -> str:
    if _URL_SAFE_TOKEN.fullmatch(token):
        # The tokens that sign() makes: base64url, safe in a URL as it is.
        return f"mailto:{mailbox}?subject=unsubscribe%20{token}"
    return f"mailto:{mailbox}?subject={quote('unsubscribe ' + token)}"


_URL_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def _format_address(name: str, address: str) -> str:
    """Return 'Name <address>', quoted or RFC 2047-encoded as the name needs."""
    return formataddr((one_line(name), address), charset="utf-8")


@dataclass(frozen=True)
class Sending:
    """A message that SmtpSender.begin() sent up to its content: the reply to
    read from the connection, or the reply already known."""

    connection: smtplib.SMTP | None = None
    then: tuple[str, str] | None = None
    reply: tuple[int, str] | None = None


class SmtpSender:
    """One SMTP connection per thread, opened on first use and kept open."""

    def __init__(
        self, target: SmtpTarget, timeout: float, pipelining: bool = True
    ) -> None:
        self.target = target
        self.timeout = timeout
        # False for a relay that offers PIPELINING but mishandles it.
        self.pipelining = pipelining
        self._local = threading.local()

    def send(
        self,
        sender: str,
        recipient: str,
        data: bytes,
        then: tuple[str, str] | None = None,
    ) -> tuple[int, str]:
        """Send one message and return the server's reply to its content.

        Raises SmtpRejected on 5xx, and SmtpTemporaryError on 4xx or on a
        connection lost before the content went out. Raises
        SmtpOutcomeUnknown when the connection was lost, or the reply could
        not be read, after the content went out: the server may have
        accepted the message, so it must not be sent again.

        `then` names the sender and recipient of the message that this
        thread sends next. With pipelining, its MAIL, RCPT and DATA go out
        in the same write as this message's content, so that each message
        costs one round trip. Its content waits for its own send(). Call
        abandon() when that send does not follow.
        """
        return self.finish(self.begin(sender, recipient, data, then))

    def begin(
        self,
        sender: str,
        recipient: str,
        data: bytes,
        then: tuple[str, str] | None = None,
    ) -> Sending:
        """Send a message up to its content, without waiting for the reply
        to it, so that one thread can have messages in flight on several
        senders. finish() reads the reply. Raises as send() does for what
        happens before the content goes out."""
        _check_addresses(sender, recipient, *(then or ()))
        self._drop_if_unread()
        opened = self._take_opened(sender, recipient)
        connection = self._connection()
        if not self._pipelines(connection):
            return Sending(reply=self._send_singly(connection, sender, recipient, data))
        if opened is not None and _has_input(connection):
            # The server replied to the envelope a while ago, and has since
            # closed the connection or sent more. The content has not gone
            # out, so the send can be retried.
            self._drop(quit=False)
            raise SmtpTemporaryError(
                "SMTP connection closed before the content was sent"
            )
        replies = opened or self._open_envelope(connection, sender, recipient)
        envelope_accepted = all(_accepted(code) for code, _ in replies[:2])
        ready, ready_text = replies[2]
        if envelope_accepted and ready == 354:
            following = _commands(*then) if then else ""
            self._local.unread = True
            try:
                connection.send(_content(data) + following.encode("ascii"))
            except OSError as error:
                self._drop()
                raise SmtpOutcomeUnknown(
                    f"SMTP connection lost during DATA: {error}"
                ) from error
            return Sending(connection=connection, then=then)
        if ready == 354:
            # A server that takes DATA after rejecting the envelope waits for
            # content, and would read even QUIT as content. Only closing the
            # connection ends that safely.
            self._drop(quit=False)
        else:
            self._reset(connection)
        self._raise_for_envelope(replies[:2])
        self._raise_before_content(ready, ready_text, "DATA")

    def open(self, sender: str, recipient: str) -> None:
        """With pipelining, send a message's MAIL, RCPT and DATA ahead of its
        begin(), so that begin() only writes the content. Does nothing when
        the previous content carried them already. A failure here is met
        again by begin(), which reports it."""
        _check_addresses(sender, recipient)
        opened = getattr(self._local, "opened", None)
        if opened is not None and opened[0] == (sender, recipient):
            return
        self.abandon()
        try:
            connection = self._connection()
        except SmtpTemporaryError:
            return
        if not self._pipelines(connection):
            return
        try:
            replies = self._open_envelope(connection, sender, recipient)
        except (SmtpRejected, SmtpTemporaryError):
            # The connection is closed; begin() opens another and meets the
            # same reply.
            return
        self._local.opened = ((sender, recipient), replies)

    def finish(self, sending: Sending) -> tuple[int, str]:
        """Return the server's reply to the content that begin() sent, or
        raise, as send() does."""
        if sending.reply is not None:
            return sending.reply
        assert sending.connection is not None
        try:
            code, reply = sending.connection.getreply()
        except OSError as error:
            self._drop()
            raise SmtpOutcomeUnknown(
                f"SMTP connection lost during DATA: {error}"
            ) from error
        if sending.then:
            self._read_opened(sending.connection, sending.then)
        else:
            self._local.unread = False
        return self._final(code, reply)

    def close(self) -> None:
        self._drop()

    def pipelines(self) -> bool:
        """Return whether this thread's connection pipelines, opening it if
        needed. False when it cannot be opened: the send reports that."""
        if not self.pipelining:
            return False
        try:
            return self._pipelines(self._connection())
        except SmtpTemporaryError:
            return False

    def _send_singly(
        self, connection: smtplib.SMTP, sender: str, recipient: str, data: bytes
    ) -> tuple[int, str]:
        """Send one command at a time, for a server without PIPELINING."""
        self._local.unread = True
        try:
            reply = self._converse_singly(connection, sender, recipient, data)
        except (SmtpRejected, SmtpTemporaryError, SmtpOutcomeUnknown):
            # Each of these leaves the exchange complete or the connection
            # closed.
            self._local.unread = False
            raise
        self._local.unread = False
        return reply

    def _converse_singly(
        self, connection: smtplib.SMTP, sender: str, recipient: str, data: bytes
    ) -> tuple[int, str]:
        try:
            self._envelope(connection, sender, recipient)
        except OSError as error:
            self._drop()
            raise SmtpTemporaryError(
                f"SMTP connection lost before DATA: {error}"
            ) from error
        try:
            code, reply = connection.data(data)
        except smtplib.SMTPDataError as error:
            # The server refused the DATA command itself, before any content,
            # and the transaction that MAIL opened is still open.
            self._reset(connection)
            self._raise_before_content(error.smtp_code, error.smtp_error, "DATA")
        except (smtplib.SMTPResponseException, OSError) as error:
            # smtplib reads an over-long reply line as an error, and that line
            # may be the reply to the content.
            self._drop()
            raise SmtpOutcomeUnknown(
                f"SMTP connection lost or reply unreadable during DATA: {error}"
            ) from error
        return self._final(code, reply)

    def _open_envelope(
        self, connection: smtplib.SMTP, sender: str, recipient: str
    ) -> list[tuple[int, bytes]]:
        """Send MAIL, RCPT and DATA in one write (RFC 2920) and return the
        three replies."""
        replies: list[tuple[int, bytes]] = []
        self._local.unread = True
        try:
            connection.send(_commands(sender, recipient))
            for _ in range(3):
                replies.append(connection.getreply())
            self._local.unread = False
        except OSError as error:
            self._drop()
            # A server may reject the envelope and close the connection at
            # once. The rejection read before that decides, as it would
            # without pipelining.
            self._raise_for_envelope(replies)
            raise SmtpTemporaryError(
                f"SMTP connection lost before DATA: {error}"
            ) from error
        return replies

    def _read_opened(self, connection: smtplib.SMTP, then: tuple[str, str]) -> None:
        """Read the replies to the next message's MAIL, RCPT and DATA and keep
        them for its send(). A connection that fails here is closed: that
        message's content never went out, and its send() starts afresh."""
        replies = []
        try:
            for _ in range(3):
                replies.append(connection.getreply())
        except OSError:
            self._drop(quit=False)
            return
        self._local.unread = False
        self._local.opened = (then, replies)

    def _take_opened(
        self, sender: str, recipient: str
    ) -> list[tuple[int, bytes]] | None:
        """Return the replies to this message's envelope if the previous
        write carried it. Another message's envelope is abandoned."""
        opened = getattr(self._local, "opened", None)
        if opened is None:
            return None
        if opened[0] == (sender, recipient):
            self._local.opened = None
            return opened[1]
        self.abandon()
        return None

    def abandon(self) -> None:
        """End the envelope that the last send() opened for a message that
        will not be sent now. A server in DATA mode would take anything as
        content, so that connection is closed; otherwise RSET ends the
        transaction. A connection that may still owe replies, because an
        exchange was cut short, is closed too."""
        if self._drop_if_unread():
            return
        opened = getattr(self._local, "opened", None)
        if opened is None:
            return
        self._local.opened = None
        if opened[1][2][0] == 354:
            self._drop(quit=False)
        else:
            self._reset(self._local.connection)

    def _raise_for_envelope(self, replies: list[tuple[int, bytes]]) -> None:
        """Raise for the first rejected reply among those to MAIL and RCPT."""
        for (code, reply), command in zip(replies, ("MAIL", "RCPT"), strict=False):
            if not _accepted(code):
                self._raise_before_content(code, reply, command)

    def _pipelines(self, connection: smtplib.SMTP) -> bool:
        return self.pipelining and connection.has_extn("pipelining")

    def _drop_if_unread(self) -> bool:
        """Close the connection if an exchange on it was cut short (by an
        exception or an interrupt between a write and its replies): a reply
        still unread would be taken for the reply to the next command."""
        if not getattr(self._local, "unread", False):
            return False
        self._drop(quit=False)
        return True

    def _reset(self, connection: smtplib.SMTP) -> None:
        """End the open transaction. A connection that fails at it is closed,
        and the next send opens another."""
        self._local.unread = True
        try:
            connection.rset()
            self._local.unread = False
        except OSError:
            self._drop()

    def _envelope(self, connection: smtplib.SMTP, sender: str, recipient: str) -> None:
        # The recipient passed normalize_address and the sender's definition
        # was checked when it loaded, so both go out as they are. smtplib's
        # mail() and rcpt() would parse them again.
        code, reply = connection.docmd("mail", f"FROM:<{sender}>")
        if not _accepted(code):
            self._reset(connection)
            self._raise_before_content(code, reply, "MAIL")
        code, reply = connection.docmd("rcpt", f"TO:<{recipient}>")
        if not _accepted(code):
            self._reset(connection)
            self._raise_before_content(code, reply, "RCPT")

    def _raise_before_content(
        self, code: int, reply: bytes | str, command: str
    ) -> NoReturn:
        """Raise for a reply that stops a send before its content went out:
        SmtpRejected on 5xx, and SmtpTemporaryError on anything else, which
        is safe to retry because the server has no message."""
        text = _reply_text(reply)
        if 500 <= code < 600:
            raise SmtpRejected(code, text)
        if code == 421:
            self._drop()
        raise SmtpTemporaryError(f"SMTP server replied {code} {text} to {command}")

    def _final(self, code: int, reply: bytes | str) -> tuple[int, str]:
        """Judge the reply to a message's content: 2xx accepted, 5xx
        rejected, 4xx deferred. Any other reply leaves the outcome unknown."""
        text = _reply_text(reply)
        if _accepted(code):
            return code, text
        if 500 <= code < 600:
            raise SmtpRejected(code, text)
        if 400 <= code < 500:
            if code == 421:
                self._drop()
            raise SmtpTemporaryError(f"SMTP server replied {code} {text}")
        self._drop()
        raise SmtpOutcomeUnknown(f"SMTP server's reply to the message: {code} {text}")

    def _connection(self) -> smtplib.SMTP:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        try:
            connection = self._open()
        except (smtplib.SMTPException, OSError) as error:
            raise SmtpTemporaryError(
                f"cannot connect to SMTP server {self.target.host}:{self.target.port}: "
                f"{error}"
            ) from error
        self._local.connection = connection
        return connection

    def _open(self) -> smtplib.SMTP:
        target = self.target
        if target.ssl:
            connection: smtplib.SMTP = smtplib.SMTP_SSL(
                target.host,
                target.port,
                timeout=self.timeout,
                context=ssl.create_default_context(),
            )
        else:
            connection = smtplib.SMTP(target.host, target.port, timeout=self.timeout)
        connection.ehlo()
        if target.starttls:
            connection.starttls(context=ssl.create_default_context())
            connection.ehlo()
        if target.username:
            connection.login(target.username, target.password or "")
        logger.info(
            "opened SMTP connection to %s:%s%s",
            target.host,
            target.port,
            ", pipelining" if self._pipelines(connection) else "",
        )
        return connection

    def _drop(self, quit: bool = True) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if getattr(self._local, "unread", False):
            # QUIT's reply could not be distinguished from the ones still owed.
            self._local.unread = False
            quit = False
        if getattr(self._local, "opened", None) is not None:
            # A transaction is open in DATA mode: QUIT would be content.
            self._local.opened = None
            quit = False
        if connection is None:
            return
        if quit:
            try:
                connection.quit()
                return
            except (smtplib.SMTPException, OSError):
                pass
        connection.close()
