"""Building marketing messages and sending them over reused SMTP connections."""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from urllib.parse import quote

from email_validator import EmailNotValidError, validate_email

from shared.config import SmtpTarget
from shared.errors import PermanentError, SmtpTemporaryError
from shared.templates import RenderedEmail, one_line

logger = logging.getLogger(__name__)

# RFC 5322 allows 998 characters a line. Without folding, List-Unsubscribe stays
# one plain line, which mail providers parse and DKIM signs reliably.
_POLICY = SMTP.clone(max_line_length=998)


class SmtpRejected(PermanentError):
    """Raised when the SMTP server answers 5xx for one recipient."""

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
    """Return the address in its normal form, or None when it is not valid."""
    try:
        checked = validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return None
    return checked.normalized


def split_sender(sender: str) -> tuple[str, str]:
    """Split 'Name <address>' into its display name and address."""
    name, address = parseaddr(sender)
    return one_line(name), address


def build_message(envelope: Envelope, rendered: RenderedEmail) -> tuple[str, bytes]:
    """Return the Message-ID and the wire bytes of one marketing email."""
    domain = envelope.sender_address.rpartition("@")[2] or "localhost"
    message_id = make_msgid(domain=domain)
    message = EmailMessage(policy=_POLICY)
    message["From"] = _format_address(envelope.sender_name, envelope.sender_address)
    message["To"] = _format_address(envelope.recipient_name, envelope.recipient_address)
    message["Subject"] = one_line(rendered.subject)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = message_id
    message["List-Unsubscribe"] = (
        f"<{envelope.unsubscribe_url}>, <{envelope.unsubscribe_mailto}>"
    )
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message_id, message.as_bytes()


def unsubscribe_mailto(mailbox: str, token: str) -> str:
    return f"mailto:{mailbox}?subject={quote('unsubscribe ' + token)}"


def _format_address(name: str, address: str) -> str:
    local, _, domain = address.rpartition("@")
    try:
        return str(Address(display_name=one_line(name), username=local, domain=domain))
    except (ValueError, IndexError):
        return formataddr((one_line(name), address))


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
            # The server refused the DATA command itself, before any content.
            return self._judge(connection, error.smtp_code, error.smtp_error)
        except OSError as error:
            self._drop()
            raise SmtpOutcomeUnknown(
                f"SMTP connection lost during DATA: {error}"
            ) from error
        return self._judge(connection, code, reply)

    def close(self) -> None:
        self._drop()

    def _envelope(self, connection: smtplib.SMTP, sender: str, recipient: str) -> None:
        code, reply = connection.mail(sender)
        if code != 250:
            connection.rset()
            self._judge(connection, code, reply)
        code, reply = connection.rcpt(recipient)
        if code not in (250, 251):
            connection.rset()
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
        raise SmtpTemporaryError(f"SMTP server answered {code} {text}")

    def _connection(self) -> smtplib.SMTP:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        try:
            connection = self._open()
        except (smtplib.SMTPException, OSError) as error:
            raise SmtpTemporaryError(
                f"cannot connect to SMTP server {self.target.host}:{self.target.port}: {error}"
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
        logger.info("opened SMTP connection to %s:%s", target.host, target.port)
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is None:
            return
        try:
            connection.quit()
        except (smtplib.SMTPException, OSError):
            connection.close()
