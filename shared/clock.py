"""The one source of the current time, replaceable in tests and simulations."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class OffsetClock:
    """The system time plus a number of seconds read from a file.

    Separate processes pointed at one file share one moved clock, which lets
    tests pass hours of journey time in seconds. The file is read again only
    when it changes.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: float | None = None
        self._offset = timedelta(0)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return datetime.now(UTC) + self._current_offset()

    def _current_offset(self) -> timedelta:
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return timedelta(0)
        with self._lock:
            if stamp != self._stamp:
                with open(self.path, encoding="ascii") as handle:
                    text = handle.read().strip()
                self._offset = timedelta(seconds=float(text or 0))
                self._stamp = stamp
            return self._offset


class ManualClock:
    """A clock that moves only when a test sets or advances it."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError(f"ManualClock needs an aware datetime, got {start!r}")
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._now += delta


Clock = SystemClock | ManualClock | OffsetClock
_offset_file = os.environ.get("JOURNEYS_CLOCK_OFFSET_FILE")
_clock: Clock = OffsetClock(_offset_file) if _offset_file else SystemClock()


def now() -> datetime:
    return _clock.now()


def use_clock(clock: Clock) -> None:
    global _clock
    _clock = clock
