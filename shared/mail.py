"""Building marketing messages and sending them over reused SMTP connections."""

from __future__ import annotations

import binascii
import functools
import logging
import re
import secrets
import smtplib
import ssl
import threading
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from urllib.parse import quote

from email_validator import EmailNotValidError, validate_email

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

    The usual address, a local part of plain atoms, takes a short way:
    email-validator keeps such a local part as it is, so only the domain
    needs its check, and domains repeat. That saves most of the 20 us that
    the full check costs, once per email sent. Anything else gets the full
    check; a property test holds both ways to the same answers.
    """
    local, at, domain = address.rpartition("@")
    if at and len(local) <= _LOCAL_PART_MAX and _PLAIN_LOCAL_PART.match(local):
        ascii_domain = _ascii_domain(domain)
        if ascii_domain is not None and len(local) + len(ascii_domain) < _ADDRESS_MAX:
            return f"{local}@{ascii_domain}"
    return checked_address(address)


def checked_address(address: str) -> str | None:
    """normalize_address by email-validator's full check alone."""
    try:
        checked = validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return None
    return checked.ascii_email


# RFC 5322 atoms joined by single dots, and RFC 5321's length limits.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_LOCAL_PART = re.compile(rf"{_ATOM}(?:\.{_ATOM})*\Z")
_LOCAL_PART_MAX = 64
_ADDRESS_MAX = 254


@functools.lru_cache(maxsize=4096)
def _ascii_domain(domain: str) -> str | None:
    try:
        checked = validate_email("postmaster@" + domain, check_deliverability=False)
    except EmailNotValidError:
        return None
    return checked.ascii_domain


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
        ("From", _format_address(envelope.sender_name, envelope.sender_address)),
        ("To", _format_address(envelope.recipient_name, envelope.recipient_address)),
        ("Subject", _header_text(rendered.subject)),
        ("Date", formatdate(localtime=False, usegmt=True)),
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


def _boundary(*bodies: bytes) -> str:
    while True:
        boundary = "=_" + secrets.token_hex(16)
        if not any(boundary.encode() in body for body in bodies):
            return boundary


def _header_text(value: str) -> str:
    """Return a header value on one line, RFC 2047-encoded when not ASCII."""
    value = one_line(value)
    if value.isascii() and len(value) < 900:
        return value
    return Header(value, "utf-8").encode(linesep="\r\n")


def unsubscribe_mailto(mailbox: str, token: str) -> str:
    return f"mailto:{mailbox}?subject={quote('unsubscribe ' + token)}"


def _format_address(name: str, address: str) -> str:
    """Return 'Name <address>', quoted or RFC 2047-encoded as the name needs."""
    return formataddr((one_line(name), address), charset="utf-8")


class SmtpSender:
    """One SMTP connection per thread, opened on first use and kept open."""

    def __init__(self, target: SmtpTarget, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self._local = threading.local()

    def send(self, sender: str, recipient: str, data: bytes) -> tuple[int, str]:
        """Send one message and return the server's reply to DATA.

        Raises SmtpRejected on 5xx, SmtpTemporaryError on 4xx or a connection
        lost before DATA, and SmtpOutcomeUnknown when it was lost during DATA.
        """
        connection = self._connection()
        if connection.has_extn("pipelining"):
            return self._send_pipelined(connection, sender, recipient, data)
        try:
            self._envelope(connection, sender, recipient)
        except OSError as error:
            self._drop()
            raise SmtpTemporaryError(
                f"SMTP connection lost before DATA: {error}"
            ) from error
        try:
            code, reply = connection.data(data)
        except smtplib.SMTPResponseException as error:
            # The server refused the DATA command itself, before any content,
            # and the transaction that MAIL opened is still open.
            self._reset(connection)
            return self._judge(connection, error.smtp_code, error.smtp_error)
        except OSError as error:
            self._drop()
            raise SmtpOutcomeUnknown(
                f"SMTP connection lost during DATA: {error}"
            ) from error
        return self._judge(connection, code, reply)

    def close(self) -> None:
        self._drop()

    def _send_pipelined(
        self, connection: smtplib.SMTP, sender: str, recipient: str, data: bytes
    ) -> tuple[int, str]:
        """Send MAIL, RCPT and DATA in one write (RFC 2920) and the content
        after the 354 reply: two round trips instead of four."""
        try:
            connection.send(
                f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n"
            )
            replies = [connection.getreply() for _ in range(3)]
        except OSError as error:
            self._drop()
            raise SmtpTemporaryError(
                f"SMTP connection lost before DATA: {error}"
            ) from error
        (mail, mail_text), (rcpt, rcpt_text), (ready, ready_text) = replies
        refusal = None
        if mail != 250:
            refusal = (mail, mail_text)
        elif rcpt not in (250, 251):
            refusal = (rcpt, rcpt_text)
        if refusal is not None or ready != 354:
            if ready == 354:
                # A server that takes DATA after refusing the envelope waits
                # for content, and would read even QUIT as content. Only
                # closing the connection ends that safely.
                self._drop(quit=False)
            else:
                self._reset(connection)
            return self._judge(connection, *(refusal or (ready, ready_text)))
        try:
            connection.send(_content(data))
            code, reply = connection.getreply()
        except OSError as error:
            self._drop()
            raise SmtpOutcomeUnknown(
                f"SMTP connection lost during DATA: {error}"
            ) from error
        return self._judge(connection, code, reply)

    def _reset(self, connection: smtplib.SMTP) -> None:
        """End the open transaction; a connection that fails at it is closed
        and the next send opens another."""
        try:
            connection.rset()
        except OSError:
            self._drop()

    def _envelope(self, connection: smtplib.SMTP, sender: str, recipient: str) -> None:
        # The recipient passed normalize_address and the sender's definition
        # was checked when it loaded, so both go out as they are. smtplib's
        # mail() and rcpt() would parse them again, and its putcmd still
        # rejects a line break.
        code, reply = connection.docmd("mail", f"FROM:<{sender}>")
        if code != 250:
            self._reset(connection)
            self._judge(connection, code, reply)
        code, reply = connection.docmd("rcpt", f"TO:<{recipient}>")
        if code not in (250, 251):
            self._reset(connection)
            self._judge(connection, code, reply)

    def _judge(
        self, connection: smtplib.SMTP, code: int, reply: bytes | str
    ) -> tuple[int, str]:
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
        if 200 <= code < 300:
            return code, text
        if 500 <= code < 600:
            raise SmtpRejected(code, text)
        if code == 421:
            self._drop()
        raise SmtpTemporaryError(f"SMTP server replied {code} {text}")

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
            ", pipelining" if connection.has_extn("pipelining") else "",
        )
        return connection

    def _drop(self, quit: bool = True) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is None:
            return
        if quit:
            try:
                connection.quit()
                return
            except (smtplib.SMTPException, OSError):
                pass
        connection.close()
