"""The clock the container pool reads time from and sleeps on.

The pool, the ack path and the runtime client never call ``time`` directly: they ask a ``Clock`` (``SystemClock`` by default), as
trio's run loop asks its ``Clock`` and asyncio's loop its ``time()``. The cluster simulator
(``sim/``) passes a clock whose time is simulated, so the real pool runs on simulated time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (only differences mean anything)."""

    def wall_ms(self) -> int:
        """Milliseconds since the epoch, for records."""

    def sleep(self, seconds: float) -> None:
        """Block the caller for ``seconds``."""

    def call_later(self, seconds: float, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` once ``seconds`` have passed, on another thread (never the caller's)."""


class SystemClock:
    """The machine's clocks: ``time.monotonic``, ``time.time_ns``, ``time.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def call_later(self, seconds: float, fn: Callable[..., Any], *args: Any) -> None:
        timer = threading.Timer(seconds, fn, args=args)
        timer.daemon = True  # a retry still waiting must not keep the process alive
        timer.start()


SYSTEM_CLOCK = SystemClock()


def now_ms() -> int:
    """Milliseconds since the epoch on the machine's clock: for records made outside the pool."""
    return SYSTEM_CLOCK.wall_ms()
