"""Nothing fails silently: submitted work whose failure is logged, and threads the invoker
cannot live without, restarted when they die or reported as fatal.

Generic on purpose: the feed, the activation-record writers and the container pool (its
janitor, and every task it submits) use the same two helpers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass

log = logging.getLogger(__name__)


def log_failure(future: Future, what: str) -> Future:
    """Log ``future``'s exception, if it ends with one: nobody else may read it."""

    def report(done: Future) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            log.error("%s failed", what, exc_info=error)

    future.add_done_callback(report)
    return future


def submit_logged(executor: Executor, what: str, fn: Callable[..., object], *args: object) -> Future:
    """``executor.submit`` whose failure is always logged."""
    return log_failure(executor.submit(fn, *args), what)


@dataclass(frozen=True)
class RestartPolicy:
    """Restart a dead thread at most ``max_restarts`` times within ``window_s``; beyond
    that it is fatal: the process cannot do its job and should not pretend to."""

    max_restarts: int = 5
    window_s: float = 60.0
    backoff_s: float = 1.0


class SupervisedThread:
    """Runs ``body`` on a daemon thread. ``body`` returning means a clean stop; raising
    means it died: logged, restarted after a backoff, or ``on_fatal(error)`` once the
    policy's budget is spent (the invoker then stops pinging and exits non-zero)."""

    def __init__(self, name: str, body: Callable[[], None], on_fatal: Callable[[BaseException], None],
                 policy: RestartPolicy = RestartPolicy(), stop: threading.Event | None = None) -> None:
        self.name = name
        self.body = body
        self.on_fatal = on_fatal
        self.policy = policy
        self._stop = stop or threading.Event()
        self._restarts: list[float] = []
        self.failed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self.failed

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.body()
                return
            except BaseException as error:  # a dying thread is never silent
                now = time.monotonic()
                self._restarts = [t for t in self._restarts if now - t < self.policy.window_s]
                if len(self._restarts) >= self.policy.max_restarts:
                    self.failed = True
                    log.critical("%s died %d times within %.0f s; giving up: %r", self.name,
                                 len(self._restarts) + 1, self.policy.window_s, error, exc_info=error)
                    self.on_fatal(error)
                    return
                self._restarts.append(now)
                log.error("%s died; restarting it in %.1f s", self.name, self.policy.backoff_s, exc_info=error)
                self._stop.wait(self.policy.backoff_s)
