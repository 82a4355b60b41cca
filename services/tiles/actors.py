"""The module that Dramatiq workers load: every tile actor, on one broker.

Run it with `dramatiq services.tiles.actors -p 2 -t 8`, or `journeys worker`.
"""

from __future__ import annotations

import logging

from shared.broker import configure_broker

broker = configure_broker()

from services.tiles import audience, email, exit  # noqa: E402  (actors bind to the broker above)

logging.getLogger("pika").setLevel(logging.WARNING)

__all__ = ["audience", "broker", "email", "exit"]
