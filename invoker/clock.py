"""The clock the container pool reads time from and sleeps on.

The pool never calls ``time`` directly: it asks a ``Clock`` (``SystemClock`` by default), as
trio's run loop asks its ``Clock`` and asyncio's loop its ``time()``. The cluster simulator
(``sim/``) passes a clock whose time is simulated, so the real pool runs on simulated time.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (only differences mean anything)."""

    def wall_ms(self) -> int:
        """Milliseconds since the epoch, for records."""

    def sleep(self, seconds: float) -> None:
        """Block the caller for ``seconds``."""


class SystemClock:
    """The machine's clocks: ``time.monotonic``, ``time.time_ns``, ``time.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
