"""An SMTP server on loopback that keeps every accepted message, for the
embedded mode and for tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

# A reply chooser gets the recipient at DATA and returns an SMTP reply such as
# "550 5.1.1 no such user", or None to accept the message.
ReplyChooser = Callable[[str], str | None]


class PipeliningEhlo:
    """An aiosmtpd handler part that adds PIPELINING to the EHLO reply, as
    Postfix, Exim and most relays do. aiosmtpd reads the commands of a
    connection in order from one buffered stream, so it serves pipelined
    commands as they are. It only lacks the EHLO line that offers them."""

    pipelining: bool = True

    async def handle_EHLO(
        self,
        server: Any,
        session: Any,
        envelope: Any,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # With this hook in place, aiosmtpd leaves the client's name to it.
        session.host_name = hostname
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses


@dataclass
class SinkHandler(PipeliningEhlo):
    folder: Path | None = None
    choose_reply: ReplyChooser | None = None
    # Called with the recipient after a message is stored, before the reply is
    # sent; tests use it to hold the reply back.
    on_accepted: Callable[[str], None] | None = None
    pipelining: bool = True
    messages: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _count: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        recipient = envelope.rcpt_tos[0] if envelope.rcpt_tos else ""
        reply = self.choose_reply(recipient) if self.choose_reply else None
        if reply is not None:
            return reply
        data = envelope.original_content or envelope.content
        with self.lock:
            self._count += 1
            number = self._count
            self.messages.append(data)
        if self.folder is not None:
            (self.folder / f"{number:07d}.eml").write_bytes(data)
        if self.on_accepted is not None:
            self.on_accepted(recipient)
        return "250 Message accepted for delivery"

    def parsed(self) -> list[EmailMessage]:
        with self.lock:
            raw = list(self.messages)
        return [message_from_bytes(data, policy=policy.default) for data in raw]  # type: ignore[misc]


class SmtpSink:
    """Start with `start()`; `port` then holds the port the server listens on."""

    def __init__(
        self,
        folder: Path | None = None,
        choose_reply: ReplyChooser | None = None,
        port: int = 0,
        pipelining: bool = True,
    ) -> None:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        self.handler = SinkHandler(
            folder=folder, choose_reply=choose_reply, pipelining=pipelining
        )
        self._controller = Controller(
            self.handler, hostname="127.0.0.1", port=port or _free_port()
        )
        self.port = self._controller.port

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
