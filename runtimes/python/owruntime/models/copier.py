"""Copy engines: weights move host→device group by group; the forward waits per group.

``StreamCopier`` issues every copy at once on a side CUDA stream (from pinned memory, so the
copies are asynchronous DMA) and records one event per group; a wait is a device-side
``wait_event`` on the compute stream, so the host never blocks. ``ThreadCopier`` is the same
contract for devices without streams (the CPU): one background thread copies the groups in
order and sets a ``threading.Event`` per group. Its optional ``bandwidth`` throttles it to a
simulated link — a stand-in used by the CPU tests, where no real host-device link exists.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Protocol

import torch

Pairs = list[tuple[torch.Tensor, torch.Tensor]]  # (destination, source)


class Copier(Protocol):
    def submit(self, pairs: Pairs) -> Any: ...

    def wait(self, handle: Any) -> None:
        """Make the caller's subsequent compute wait for the group (device- or host-side)."""

    def wait_host(self, handle: Any) -> None:
        """Block the calling thread until the group has arrived."""


class StreamCopier:
    def __init__(self, device: torch.device, timing: bool = False) -> None:
        self.device = device
        self.timing = timing  # timed events, for copy_seconds() (benchmarks)
        self.stream = torch.cuda.Stream(device)
        self._start: torch.cuda.Event | None = None  # recorded at the first submit
        self._last: torch.cuda.Event | None = None

    def submit(self, pairs: Pairs) -> torch.cuda.Event:
        # The destinations were allocated on the compute stream, possibly in blocks its queued
        # kernels still read: the copies wait for the compute stream as it is now, after the
        # allocation (a wait taken when the copier was built would come before it).
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if self._start is None:  # the copy clock starts at the first copy, not at allocation
            self._start = torch.cuda.Event(enable_timing=self.timing)
            self._start.record(self.stream)
        with torch.cuda.stream(self.stream):
            for dst, src in pairs:
                dst.copy_(src, non_blocking=True)
            event = torch.cuda.Event(enable_timing=self.timing)
            event.record(self.stream)
        self._last = event
        return event

    def copy_seconds(self) -> float:
        """Side-stream time from the first copy to the last (needs ``timing=True``; syncs)."""
        assert self.timing and self._start is not None and self._last is not None
        self._last.synchronize()
        return self._start.elapsed_time(self._last) / 1e3

    def wait(self, handle: torch.cuda.Event) -> None:
        torch.cuda.current_stream(self.device).wait_event(handle)

    def wait_host(self, handle: torch.cuda.Event) -> None:
        handle.synchronize()


class ThreadCopier:
    def __init__(self, bandwidth: float | None = None) -> None:
        self.bandwidth = bandwidth  # bytes/s of a simulated link; None copies at memory speed
        self._jobs: queue.SimpleQueue[tuple[Pairs, threading.Event] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="owruntime-copier", daemon=True)
        self._thread.start()

    def submit(self, pairs: Pairs) -> threading.Event:
        done = threading.Event()
        self._jobs.put((pairs, done))
        return done

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            pairs, done = job
            try:
                t0 = time.perf_counter()
                for dst, src in pairs:
                    dst.copy_(src)
                if self.bandwidth:
                    nbytes = sum(src.numel() * src.element_size() for _, src in pairs)
                    time.sleep(max(0.0, nbytes / self.bandwidth - (time.perf_counter() - t0)))
            except BaseException as e:  # surfaced to the waiter, never lost in the thread
                self._error = e
            done.set()

    def wait(self, handle: threading.Event) -> None:
        self.wait_host(handle)

    def wait_host(self, handle: threading.Event) -> None:
        handle.wait()
        if self._error is not None:
            raise RuntimeError("copying weights failed") from self._error

    def close(self) -> None:
        self._jobs.put(None)
