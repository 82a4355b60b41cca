"""Validation of messages that other systems publish: a broken one is
dead-lettered at once with its reason logged and counted, and never stops
the worker or the valid messages around it."""

from __future__ import annotations

import logging
from functools import cache
from typing import Any, TypeVar

from dramatiq.middleware import CurrentMessage
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError

from shared.errors import BrokenMessage

logger = logging.getLogger(__name__)

Model = TypeVar("Model", bound=BaseModel)


@cache
def _rejected() -> Counter:
    return Counter(
        "journeys_queue_messages_rejected_total",
        "Messages from other systems that did not validate and were dead-lettered.",
        ["queue"],
    )


def accept(
    model: type[Model], queue: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Model:
    """Return the message's one argument as `model`, or dead-letter it.

    Raises BrokenMessage, which the actors list in `throws`, so Dramatiq moves
    the message to QUEUE.XQ without retrying it.
    """
    try:
        if len(args) != 1 or kwargs:
            raise BrokenMessage(
                f"invalid {queue} message: expected args to be a list of one "
                f"object and kwargs to be empty, got {len(args)} args and "
                f"kwargs {sorted(kwargs)}"
            )
        try:
            return model.model_validate(args[0])
        except ValidationError as error:
            problems = "; ".join(
                describe(item) for item in error.errors(include_url=False)
            )
            raise BrokenMessage(f"invalid {queue} message: {problems}") from error
    except BrokenMessage as error:
        message = CurrentMessage.get_current_message()
        # Dramatiq logs only the exception's type, so the reason is logged here.
        logger.warning(
            "message %s dead-lettered: %s",
            message.message_id if message else "(unknown)",
            error,
        )
        _rejected().labels(queue).inc()
        raise


def describe(item: Any) -> str:
    """Describe one pydantic error as 'field: message (got value)'."""
    field = ".".join(map(str, item["loc"])) or "message"
    text = f"{field}: {item['msg']}"
    value = item.get("input")
    if item["loc"] and isinstance(value, str | int | float | bool):
        value_text = repr(value)
        if len(value_text) > 100:
            value_text = value_text[:100] + "..."
        text += f" (got {value_text})"
    return text
