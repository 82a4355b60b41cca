"""The SMTP sender against servers on loopback, with and without PIPELINING:
each reply maps to the right outcome, and the connection stays usable for
the next email after every rejection."""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from services.embedded.sink import SmtpSink
from services.tiles import email as email_tile
from shared.config import SmtpTarget, get_settings
from shared.errors import SmtpTemporaryError
from shared.mail import SmtpOutcomeUnknown, SmtpRejected, SmtpSender

pytestmark = pytest.mark.integration

SENDER = "news@sender.example.com"
# A line that starts with a dot must arrive as it was sent.
DATA = b"Subject: hello\r\n\r\nfirst line\r\n.second line starts with a dot\r\n"


class Rejections:
    """Replies that the sink gives to chosen recipients, at each stage."""

    def __init__(self, sink: SmtpSink) -> None:
        # Keyed on the sender address for MAIL, the recipient for the rest.
        self.at_mail: dict[str, str] = {}
        self.at_rcpt: dict[str, str] = {}
        self.at_end: dict[str, str] = {}
        self.drop_at_rcpt: set[str] = set()
        self.drop_after_end: set[str] = set()
        handler = sink.handler
        store = handler.handle_DATA
        handler.handle_MAIL = self._mail  # type: ignore[attr-defined]
        handler.handle_RCPT = self._rcpt  # type: ignore[attr-defined]
        handler.choose_reply = self.at_end.get

        async def handle_data(server: Any, session: Any, envelope: Any) -> str:
            reply = await store(server, session, envelope)
            if envelope.rcpt_tos[0] in self.drop_after_end:
                server.transport.abort()
            return reply

        handler.handle_DATA = handle_data  # type: ignore[method-assign]

    async def _mail(
        self, server: Any, session: Any, envelope: Any, address: str, options: list
    ) -> str:
        if address in self.at_mail:
            return self.at_mail[address]
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def _rcpt(
        self, server: Any, session: Any, envelope: Any, address: str, options: list
    ) -> str:
        if address in self.drop_at_rcpt:
            server.transport.abort()
            return "421 closing"  # never reaches the client
        if address in self.at_rcpt:
            return self.at_rcpt[address]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"


@pytest.fixture(params=[True, False], ids=["pipelining", "one-command-a-trip"])
def sink(request: pytest.FixtureRequest) -> Iterator[SmtpSink]:
    server = SmtpSink(pipelining=request.param).start()
    yield server
    server.stop()


def _sender(port: int, pipelining: bool = True) -> SmtpSender:
    return SmtpSender(
        SmtpTarget(host="127.0.0.1", port=port), timeout=5, pipelining=pipelining
    )


def _stored(sink: SmtpSink) -> list[bytes]:
    return list(sink.handler.messages)


def test_message_arrives_as_sent(sink: SmtpSink) -> None:
    sender = _sender(sink.port)
    try:
        code, _ = sender.send(SENDER, "anna@example.com", DATA)
        connection = sender._connection()
        assert connection.has_extn("pipelining") is sink.handler.pipelining
    finally:
        sender.close()
    assert code == 250
    assert _stored(sink) == [DATA]


def test_rejections_map_to_outcomes(sink: SmtpSink) -> None:
    rejections = Rejections(sink)
    rejections.at_mail["bad-sender@sender.example.com"] = "553 5.7.1 sender refused"
    rejections.at_rcpt["gone@example.com"] = "550 5.1.1 no such user"
    rejections.at_rcpt["grey@example.com"] = "451 4.7.1 greylisted"
    rejections.at_end["spam@example.com"] = "554 5.7.1 looks like spam"
    rejections.at_end["busy@example.com"] = "452 4.3.1 mailbox busy"
    rejections.drop_at_rcpt.add("reset@example.com")
    rejections.drop_after_end.add("lost@example.com")

    sender = _sender(sink.port)
    outcomes = []
    cases = [
        ("bad-sender@sender.example.com", "anna@example.com"),
        ("gone@example.com",),
        ("grey@example.com",),
        ("spam@example.com",),
        ("busy@example.com",),
        ("reset@example.com",),
        ("lost@example.com",),
    ]
    try:
        for case in cases:
            from_address, to = case if len(case) == 2 else (SENDER, case[0])
            try:
                sender.send(from_address, to, DATA)
                outcomes.append("sent")
            except SmtpRejected as error:
                outcomes.append(f"rejected {error.code}")
            except SmtpOutcomeUnknown:
                outcomes.append("unknown")
            except SmtpTemporaryError as error:
                outcomes.append(f"temporary: {error}")
            # After each case the same sender delivers the next email.
            code, _ = sender.send(SENDER, "next@example.com", DATA)
            assert code == 250, case
    finally:
        sender.close()

    # The text after a lost connection's colon comes from the socket layer.
    outcomes = [outcome.partition(": Connection")[0] for outcome in outcomes]
    assert outcomes == [
        "rejected 553",
        "rejected 550",
        "temporary: SMTP server replied 451 4.7.1 greylisted to RCPT",
        "rejected 554",
        "temporary: SMTP server replied 452 4.3.1 mailbox busy",
        "temporary: SMTP connection lost before DATA",
        "unknown",
    ]
    # Stored: the seven emails to next@ and the one whose reply was lost.
    assert len(_stored(sink)) == len(cases) + 1


class ScriptedServer:
    """An SMTP server for one connection that offers PIPELINING and replies
    to each command line from a script. It records the lines it received."""

    def __init__(
        self, replies: dict[str, list[str]], close_after: str | None = None
    ) -> None:
        self.replies = {verb: list(answers) for verb, answers in replies.items()}
        # The command after whose reply the server closes the connection.
        self.close_after = close_after
        self.received: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(10)
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"220 scripted\r\n")
            in_data = False
            for raw in lines:
                line = raw.decode().rstrip("\r\n")
                self.received.append(line)
                if in_data:
                    if line == ".":
                        in_data = False
                        connection.sendall(self._answer("END"))
                    continue
                verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
                answer = self._answer(verb)
                connection.sendall(answer)
                in_data = verb == "DATA" and answer.startswith(b"354")
                if verb in ("QUIT", self.close_after):
                    return

    def _answer(self, verb: str) -> bytes:
        if verb == "EHLO":
            return b"250-scripted\r\n250 PIPELINING\r\n"
        queue = self.replies.get(verb)
        reply = (
            queue.pop(0)
            if queue
            else {"QUIT": "221 bye", "DATA": "354 go"}.get(verb, "250 OK")
        )
        return f"{reply}\r\n".encode()

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)


def test_refused_data_command_resets_the_transaction() -> None:
    """A 451 to DATA after an accepted envelope is a temporary failure; the
    sender resets the open transaction, so the next MAIL is accepted."""
    server = ScriptedServer({"DATA": ["451 4.3.0 try later"]})
    sender = _sender(server.port)
    try:
        with pytest.raises(SmtpTemporaryError, match="451"):
            sender.send(SENDER, "anna@example.com", DATA)
        code, _ = sender.send(SENDER, "bob@example.com", DATA)
    finally:
        sender.close()
        server.close()
    assert code == 250
    # smtplib writes EHLO and RSET in lower case; servers take either.
    assert [line.lower() for line in server.received[1:6]] == [
        f"mail from:<{SENDER}>",
        "rcpt to:<anna@example.com>",
        "data",
        "rset",
        f"mail from:<{SENDER}>",
    ]


def _send_once(
    server: ScriptedServer, recipient: str = "anna@example.com"
) -> tuple[int, str] | Exception:
    """Send one email through a new sender and return the reply, or the
    exception the send raised; then close the sender and the server."""
    sender = _sender(server.port)
    try:
        return sender.send(SENDER, recipient, DATA)
    except (SmtpRejected, SmtpTemporaryError, SmtpOutcomeUnknown) as error:
        return error
    finally:
        sender.close()
        server.close()


def test_data_accepted_after_refused_recipient_sends_no_content() -> None:
    """A server that replies 354 although it rejected the only recipient gets
    no message content: the sender closes the connection and reports the
    recipient's refusal."""
    server = ScriptedServer({"RCPT": ["550 5.1.1 no such user"]})
    outcome = _send_once(server, "gone@example.com")
    assert isinstance(outcome, SmtpRejected)
    assert outcome.code == 550
    assert "first line" not in server.received
    assert server.received[-1] == "DATA"


def test_accepted_envelope_reply_other_than_250_still_sends() -> None:
    """Any 2xx to MAIL or RCPT accepts it (RFC 5321), such as 252 for a
    recipient the server cannot verify."""
    server = ScriptedServer({"RCPT": ["252 2.1.5 cannot verify, will try"]})
    assert _send_once(server) == (250, "OK")
    assert "first line" in server.received


def test_refusal_then_closed_connection_is_a_bounce() -> None:
    """A server that refuses the sender and hangs up gives the refusal, as it
    would without pipelining, not a lost connection to retry."""
    server = ScriptedServer({"MAIL": ["554 5.7.1 go away"]}, close_after="MAIL")
    outcome = _send_once(server)
    assert isinstance(outcome, SmtpRejected)
    assert outcome.code == 554


def test_data_answered_without_354_sends_nothing_and_defers() -> None:
    """A 2xx to the DATA command, where 354 belongs, leaves the server with
    no message: the send is deferred, not counted as sent."""
    server = ScriptedServer({"DATA": ["250 OK"]})
    outcome = _send_once(server)
    assert isinstance(outcome, SmtpTemporaryError)
    assert "250 OK to DATA" in str(outcome)
    assert "first line" not in server.received


def test_unreadable_reply_to_content_is_unknown() -> None:
    """A reply to the content without a valid code may hide an accepted
    message, so the send is unknown and never retried."""
    server = ScriptedServer({"END": ["accepted, more or less"]})
    assert isinstance(_send_once(server), SmtpOutcomeUnknown)
    assert "first line" in server.received


def test_pipelining_off_sends_commands_singly() -> None:
    """With pipelining off, a rejected MAIL ends the send before RCPT, so the
    server receives MAIL and then RSET. With it on, RCPT and DATA went out
    in the same write."""
    received = {}
    for pipelining in (True, False):
        server = ScriptedServer({"MAIL": ["451 4.3.0 try later"]})
        sender = _sender(server.port, pipelining)
        try:
            with pytest.raises(SmtpTemporaryError, match="451"):
                sender.send(SENDER, "anna@example.com", DATA)
        finally:
            sender.close()
            server.close()
        received[pipelining] = [line.lower() for line in server.received[1:4]]
    assert received[True] == [
        f"mail from:<{SENDER}>",
        "rcpt to:<anna@example.com>",
        "data",
    ]
    assert received[False] == [f"mail from:<{SENDER}>", "rset", "quit"]


def test_pipelining_setting_reaches_the_email_tile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOURNEYS_SMTP_PIPELINING", "false")
    get_settings.cache_clear()
    monkeypatch.setattr(email_tile, "_senders", None)
    try:
        senders = email_tile.smtp_senders()
        assert len(senders) == get_settings().smtp_connections_per_thread
        assert not any(sender.pipelining for sender in senders)
    finally:
        get_settings.cache_clear()


def test_line_break_in_address_sends_nothing(sink: SmtpSink) -> None:
    sender = _sender(sink.port)
    try:
        with pytest.raises(ValueError, match="line break"):
            sender.send(SENDER, "x>\r\nRSET\r\nMAIL FROM:<y@example.com", DATA)
    finally:
        sender.close()
    assert _stored(sink) == []


def _message(recipient: str) -> bytes:
    return f"Subject: for {recipient}\r\n\r\nbody\r\n".encode()


def _subjects(sink: SmtpSink) -> list[str]:
    return [str(message["Subject"]) for message in sink.handler.parsed()]


def _lines_around_send(
    prepare: Callable[[SmtpSender], object], recipient: str
) -> tuple[int, list[str], list[str]]:
    """Run `prepare` on a sender to a scripted server, then send one email
    to `recipient`. Return the send's code, and the lines the server had
    received before the send and those it received from it on."""
    server = ScriptedServer({})
    sender = _sender(server.port)
    try:
        prepare(sender)
        before = list(server.received)
        code, _ = sender.send(SENDER, recipient, DATA)
    finally:
        sender.close()
        server.close()
    return code, before, server.received[len(before) :]


def test_next_envelope_goes_with_the_content() -> None:
    """With the next email named, its MAIL, RCPT and DATA follow this
    email's content, and its own send then writes only its content."""
    code, before, after = _lines_around_send(
        lambda sender: sender.send(
            SENDER, "anna@example.com", DATA, (SENDER, "bob@example.com")
        ),
        "bob@example.com",
    )
    assert code == 250
    assert before[-4:] == [
        ".",
        f"MAIL FROM:<{SENDER}>",
        "RCPT TO:<bob@example.com>",
        "DATA",
    ]
    assert after[:3] == ["Subject: hello", "", "first line"]
    assert after[-2:] == [".", "quit"]
    assert not any(line.startswith("MAIL") for line in after)


def test_abandoned_envelope_delivers_nothing(sink: SmtpSink) -> None:
    """An envelope opened for an email that is not sent after all delivers
    nothing, whether the sender abandons it or sends another email first."""
    sender = _sender(sink.port)
    try:
        sender.send(
            SENDER, "anna@example.com", _message("anna"), (SENDER, "bob@example.com")
        )
        sender.abandon()
        sender.send(
            SENDER, "carla@example.com", _message("carla"), (SENDER, "dora@example.com")
        )
        code, _ = sender.send(SENDER, "emil@example.com", _message("emil"))
    finally:
        sender.close()
    assert code == 250
    assert _subjects(sink) == ["for anna", "for carla", "for emil"]


def test_reply_to_next_envelope_decides_its_send(sink: SmtpSink) -> None:
    """A rejection of the next email's recipient, read with this email's
    reply, comes out of the next email's own send."""
    rejections = Rejections(sink)
    rejections.at_rcpt["gone@example.com"] = "550 5.1.1 no such user"
    sender = _sender(sink.port)
    try:
        first, _ = sender.send(
            SENDER, "anna@example.com", _message("anna"), (SENDER, "gone@example.com")
        )
        with pytest.raises(SmtpRejected) as rejected:
            sender.send(
                SENDER,
                "gone@example.com",
                _message("gone"),
                (SENDER, "bob@example.com"),
            )
        last, _ = sender.send(SENDER, "bob@example.com", _message("bob"))
    finally:
        sender.close()
    assert (first, rejected.value.code, last) == (250, 550, 250)
    assert _subjects(sink) == ["for anna", "for bob"]


def test_lost_after_content_next_email_unsent(
    sink: SmtpSink,
) -> None:
    """The connection drops after the server took Anna's email. Her outcome
    is unknown; Bob's envelope went nowhere, and his send opens a new
    connection."""
    rejections = Rejections(sink)
    rejections.drop_after_end.add("anna@example.com")
    sender = _sender(sink.port)
    try:
        with pytest.raises(SmtpOutcomeUnknown):
            sender.send(
                SENDER,
                "anna@example.com",
                _message("anna"),
                (SENDER, "bob@example.com"),
            )
        code, _ = sender.send(SENDER, "bob@example.com", _message("bob"))
    finally:
        sender.close()
    assert code == 250
    assert _subjects(sink) == ["for anna", "for bob"]


def test_one_message_in_flight_per_sender(sink: SmtpSink) -> None:
    """Both contents go out before either reply is read."""
    first, second = _sender(sink.port), _sender(sink.port)
    try:
        to_anna = first.begin(SENDER, "anna@example.com", _message("anna"))
        to_bob = second.begin(SENDER, "bob@example.com", _message("bob"))
        replies = [second.finish(to_bob)[0], first.finish(to_anna)[0]]
    finally:
        first.close()
        second.close()
    assert replies == [250, 250]
    assert sorted(_subjects(sink)) == ["for anna", "for bob"]


def test_unread_reply_never_answers_the_next_message(sink: SmtpSink) -> None:
    """A message begun but never finished leaves its reply, and the next
    envelope's replies, unread on the connection. Abandoning the sender, or
    beginning another message, closes that connection first, so no stale
    reply is taken for a new command and nothing else is delivered."""
    sender = _sender(sink.port)
    try:
        sender.begin(
            SENDER, "anna@example.com", _message("anna"), (SENDER, "bob@example.com")
        )
        sender.abandon()
        sender.begin(
            SENDER,
            "carla@example.com",
            _message("carla"),
            (SENDER, "dora@example.com"),
        )
        code, _ = sender.send(SENDER, "emil@example.com", _message("emil"))
    finally:
        sender.close()
    assert code == 250
    assert _subjects(sink) == ["for anna", "for carla", "for emil"]


def test_opened_envelope_leaves_only_the_content_to_send() -> None:
    """open() sends MAIL, RCPT and DATA ahead, so that the send writes the
    content alone, with no round trip between the record and the content."""
    code, before, after = _lines_around_send(
        lambda sender: sender.open(SENDER, "anna@example.com"), "anna@example.com"
    )
    assert code == 250
    assert before[-3:] == [
        f"MAIL FROM:<{SENDER}>",
        "RCPT TO:<anna@example.com>",
        "DATA",
    ]
    assert not any(line.startswith("MAIL") for line in after)


def test_open_then_send_delivers_once(sink: SmtpSink) -> None:
    sender = _sender(sink.port)
    try:
        sender.open(SENDER, "anna@example.com")
        sender.open(SENDER, "anna@example.com")  # open already: nothing more
        code, _ = sender.send(SENDER, "anna@example.com", _message("anna"))
    finally:
        sender.close()
    assert code == 250
    assert _subjects(sink) == ["for anna"]


def test_closed_connection_before_content_defers() -> None:
    """The server replied to the envelope sent ahead and then closed the
    connection. The content never went out, so the send is a temporary
    failure to retry, not an unknown outcome."""
    server = ScriptedServer({}, close_after="DATA")
    sender = _sender(server.port)
    try:
        sender.open(SENDER, "anna@example.com")
        time.sleep(0.2)  # the 'sending' record commits meanwhile
        with pytest.raises(SmtpTemporaryError, match="closed before the content"):
            sender.send(SENDER, "anna@example.com", DATA)
    finally:
        sender.close()
        server.close()
    assert "first line" not in server.received


class Interrupt(BaseException):
    """Stands for Dramatiq's time limit, raised in a thread at any point."""


def test_interrupted_exchange_never_misdelivers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An interrupt between open()'s write and its replies leaves replies
    unread, with the server waiting for content. The connection is closed
    before its next use, so Bob's content cannot become the body of the
    message that the server was waiting for."""
    sink = SmtpSink(pipelining=True).start()
    sender = _sender(sink.port)
    read_reply = smtplib.SMTP.getreply
    interrupt = [True]

    def getreply(connection: smtplib.SMTP) -> tuple[int, bytes]:
        if interrupt and interrupt.pop():
            raise Interrupt()
        return read_reply(connection)

    try:
        sender.send(SENDER, "anna@example.com", _message("anna"))
        monkeypatch.setattr(smtplib.SMTP, "getreply", getreply)
        with pytest.raises(Interrupt):
            sender.open(SENDER, "xavier@example.com")
        sender.abandon()
        code, _ = sender.send(SENDER, "bob@example.com", _message("bob"))
    finally:
        sender.close()
        sink.stop()
    assert code == 250
    assert _subjects(sink) == ["for anna", "for bob"]
