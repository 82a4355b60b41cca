"""The module that Dramatiq workers load: every tile actor, on one broker.

Run it with `dramatiq services.tiles.actors -p 2 -t 8`, or `journeys worker`.
"""

from __future__ import annotations

import logging

from shared.broker import configure_broker

broker = configure_broker()

# The actors bind to the broker above when their modules are imported.
from services.events import actors as interaction_events  # noqa: E402
from services.events import contacts as contact_events  # noqa: E402
from services.tiles import (  # noqa: E402
    audience,
    condition,
    email,
    exit,
    split,
    wait,
)

logging.getLogger("pika").setLevel(logging.WARNING)

__all__ = [
    "audience",
    "broker",
    "condition",
    "contact_events",
    "email",
    "exit",
    "interaction_events",
    "split",
    "wait",
]
