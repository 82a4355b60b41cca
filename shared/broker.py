"""The Dramatiq broker: RabbitMQ in deployments, the in-process stub broker in
the embedded mode and fast tests."""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage

from shared.config import Settings, get_settings

logger = logging.getLogger(__name__)

_broker: dramatiq.Broker | None = None


def configure_broker(settings: Settings | None = None) -> dramatiq.Broker:
    """Create the process-wide broker once; tile actors bind to it on import."""
    global _broker
    if _broker is not None:
        return _broker
    settings = settings or get_settings()
    broker: dramatiq.Broker
    if settings.uses_stub_broker:
        broker = StubBroker()
        broker.emit_after("process_boot")
    else:
        broker = RabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
        broker.add_middleware(_prometheus_middleware())
    broker.add_middleware(CurrentMessage())
    dramatiq.set_broker(broker)
    _broker = broker
    return broker


def _prometheus_middleware() -> dramatiq.Middleware:
    # Imported here because the module reads its settings from the environment
    # at import time, which `journeys worker` prepares first.
    from dramatiq.middleware.prometheus import Prometheus

    return Prometheus()


def current_retries() -> int:
    message = CurrentMessage.get_current_message()
    return int(message.options.get("retries", 0)) if message else 0
