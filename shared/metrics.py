"""Prometheus metrics that the tile actors update as they work.

The metric objects are made on first use, after Dramatiq's Prometheus
middleware has pointed prometheus-client at the worker processes' shared
folder, so that every process's counts reach one exposition.
"""

from __future__ import annotations

import threading
from functools import cache

from prometheus_client import Counter, Histogram

_lock = threading.Lock()


@cache
def _tile_contacts() -> Counter:
    return Counter(
        "journeys_tile_contacts_processed_total",
        "Contacts a tile finished with, by outcome, as counted by the workers.",
        ["journey", "tile", "outcome"],
    )


@cache
def _smtp_seconds() -> Histogram:
    return Histogram(
        "journeys_smtp_send_duration_seconds",
        "Time from MAIL FROM to the server's reply to DATA.",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )


def count_outcome(journey: str, tile: str, outcome: str, amount: int = 1) -> None:
    if amount:
        with _lock:
            counter = _tile_contacts()
        counter.labels(journey, tile, outcome).inc(amount)


def observe_smtp(seconds: float) -> None:
    with _lock:
        histogram = _smtp_seconds()
    histogram.observe(seconds)
