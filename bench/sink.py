"""An SMTP sink in its own process for the benchmark: it accepts every
message and appends the recipient of each to a file, one line a message.
Like most relays it offers PIPELINING, which smtplib does not use.

Run: python bench/sink.py --port PORT --out FILE [--keep FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.embedded.sink import PipeliningEhlo


class RecordingHandler(PipeliningEhlo):
    def __init__(self, path: str, keep: str | None) -> None:
        # Line-buffered, so that the benchmark can count as the sink goes.
        self.out = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self.messages_file = open(keep, "ab") if keep else None  # noqa: SIM115

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for recipient in envelope.rcpt_tos:
            self.out.write(recipient.lower() + "\n")
        if self.messages_file is not None:
            data = envelope.original_content
            self.messages_file.write(
                f"{envelope.rcpt_tos[0]} {len(data)}\n".encode() + data
            )
        return "250 Message accepted for delivery"

    def close(self) -> None:
        self.out.close()
        if self.messages_file is not None:
            self.messages_file.close()


def read_messages(path: Path) -> list[tuple[str, bytes]]:
    """Return the (recipient, message) pairs that a sink run with --keep wrote."""
    messages = []
    with path.open("rb") as messages_file:
        while head := messages_file.readline():
            recipient, size = head.decode().split()
            messages.append((recipient, messages_file.read(int(size))))
    return messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--keep", help="file to append each accepted message to")
    args = parser.parse_args()
    handler = RecordingHandler(args.out, args.keep)
    controller = Controller(handler, hostname="127.0.0.1", port=args.port)
    controller.start()
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()
    handler.close()


if __name__ == "__main__":
    main()
