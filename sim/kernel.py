"""The event loop: simulated time, and the pool's jobs as green threads on it.

One OS thread. Events sit on a heap ordered by (time, sequence); the loop pops the earliest,
sets the clock to its time (trio's autojump: nothing waits in real time) and runs it. A job the
pool hands to its executor runs in a greenlet; when it sleeps on the simulated clock it parks a
wake-up on the heap and switches back to the loop. The pool's ``threading.Lock``s must never be
held across such a switch (one OS thread: the next taker would block for good); the pool holds
its own lock only around bookkeeping, and the simulated containers never sleep in ``suspend`` or
``resume`` (``pause_lock``) and run with action concurrency 1 (``init_lock``).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

import greenlet

EPOCH_MS = 1_700_000_000_000  # wall clock at simulated time 0 (only activation records show it)


class SimulationError(RuntimeError):
    """The simulation cannot go on (a job slept outside a green thread, a job failed)."""


class Kernel:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., Any], tuple]] = []
        self._seq = itertools.count()
        self.hub = greenlet.getcurrent()
        self.events = 0
        self.errors: list[BaseException] = []  # jobs that raised: a run with any is not a result

    def at(self, when: float, fn: Callable[..., Any], *args: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), fn, args))

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        self.at(self.now + delay, fn, *args)

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Run events in time order until none is left or ``stop()`` says so (checked after each)."""
        if greenlet.getcurrent() is not self.hub:
            raise SimulationError("the kernel runs in the greenlet that created it")
        heap, pop = self._heap, heapq.heappop
        while heap:
            when, _, fn, args = pop(heap)
            self.now = when
            fn(*args)
            self.events += 1
            if stop():
                return

    @property
    def pending(self) -> int:
        return len(self._heap)


class SimClock:
    """``invoker.clock.Clock`` on the kernel's time. ``sleep`` parks the calling green thread."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def monotonic(self) -> float:
        return self.kernel.now

    def wall_ms(self) -> int:
        return EPOCH_MS + int(self.kernel.now * 1000)

    def sleep(self, seconds: float) -> None:
        current = greenlet.getcurrent()
        kernel = self.kernel
        if current is kernel.hub:
            raise SimulationError("sleep outside a green thread would stop the simulation")
        kernel.after(max(0.0, seconds), current.switch)
        kernel.hub.switch()

    def call_later(self, seconds: float, fn: Callable[..., Any], *args: Any) -> None:
        self.kernel.after(max(0.0, seconds), fn, *args)


class SimFuture:
    """What ``submit`` returns: enough of ``concurrent.futures.Future`` for the pool
    (``add_done_callback``, ``exception``, ``cancelled``), without its condition variable."""

    __slots__ = ("_callbacks", "_done", "_error", "_result")

    def __init__(self) -> None:
        self._callbacks: list[Callable[[SimFuture], Any]] = []
        self._done = False
        self._error: BaseException | None = None
        self._result: Any = None

    def add_done_callback(self, fn: Callable[[SimFuture], Any]) -> None:
        if self._done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return self._error

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._result

    def _finish(self, result: Any, error: BaseException | None) -> None:
        self._done, self._result, self._error = True, result, error
        for fn in self._callbacks:
            fn(self)
        self._callbacks.clear()


class SimExecutor:
    """``Executor.submit`` for the pool: each function runs in its own green thread, started
    at the current simulated time after what is already due (as a thread pool would start it
    soon, not inside the caller)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.started = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> SimFuture:
        future = SimFuture()
        thread = greenlet.greenlet(self._body, parent=self.kernel.hub)
        self.kernel.after(0.0, thread.switch, fn, args, future)
        self.started += 1
        return future

    def _body(self, fn: Callable[..., Any], args: tuple, future: SimFuture) -> None:
        try:
            result = fn(*args)
        except BaseException as error:  # recorded: a run with a failed job is reported as such
            self.kernel.errors.append(error)
            future._finish(None, error)
            return
        future._finish(result, None)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:  # noqa: D102
        pass
