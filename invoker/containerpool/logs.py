"""Activation log collection with the sentinel protocol (OpenWhisk's ``docs/actions-new.md``,
"Logs"; ``ACTIVATION_LOG_SENTINEL`` in ``Container.scala``).

Backends push the lines their container writes into a ``LogBuffer`` (a reader
thread per stream for processes, the log stream for Docker). After each
activation the proxy calls ``collect``, which takes the lines up to the sentinel
on both streams, formats them as OpenWhisk does and applies the log limit.

Memory is bounded in bytes, whatever the action writes: backends cut a line longer than
``MAX_LINE_BYTES`` into pieces (as Docker's json-file driver does at 16 KiB), and the buffer
keeps at most its action's log limit plus some headroom; what comes beyond is dropped and the
activation's logs end with OpenWhisk's truncation line.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field

SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"
IDLE_TIMEOUT_S = 2.0
COLLECTION_ISSUE = "There was an issue while collecting your logs. Data might be missing."
DEVELOPER_ERROR_NOTE = "The action did not initialize or run as expected. Log data might be missing."
MAX_LINE_BYTES = 16 * 1024  # longest piece of a line a backend hands over (Docker's split size)
LINE_OVERHEAD = 48  # bytes counted per line besides its text: under its raw size's JSON framing
DEFAULT_LIMIT_BYTES = 10 * 1024 * 1024  # OpenWhisk's default log limit, until an action is bound


def truncated_note(limit_bytes: int) -> str:
    """``Messages.truncateLogs``."""
    return f"Logs were truncated because the total bytes size exceeds the limit of {limit_bytes} bytes."


def rfc3339_nano(epoch_ns: int | None = None) -> str:
    """Docker's log timestamp format: ``2024-05-01T10:40:00.412847113Z``."""
    ns = time.time_ns() if epoch_ns is None else epoch_ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


@dataclass(frozen=True)
class LogLine:
    time: str
    stream: str  # "stdout" | "stderr"
    text: str

    @property
    def raw_size(self) -> int:
        """Size of the line as docker's json-file driver stores it, plus the newline;
        the log limit counts these bytes, not the formatted text."""
        record = {"log": self.text + "\n", "stream": self.stream, "time": self.time}
        return len(json.dumps(record, separators=(",", ":")).encode("utf-8")) + 1

    def formatted(self) -> str:
        return f"{self.time:<30} {self.stream}: {self.text}"


@dataclass
class CollectedLogs:
    lines: list[str] = field(default_factory=list)
    truncated: bool = False
    incomplete: bool = False  # sentinel missing, stream ended or timed out


def note_line(text: str) -> str:
    return LogLine(rfc3339_nano(), "stderr", text).formatted()


class LogBuffer:
    """Lines written by one container, consumed activation by activation, at most
    ``limit_bytes`` plus headroom of them held (counted as text plus ``LINE_OVERHEAD``)."""

    def __init__(self, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> None:
        self._lines: deque[LogLine] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._held = 0  # bytes counted for the lines in the buffer
        self._overflowed = False  # lines were dropped since the last collect
        self.set_limit(limit_bytes)

    def set_limit(self, limit_bytes: int) -> None:
        """The action's log limit. The buffer holds a little more, so that dropping can only
        happen once ``collect`` would truncate anyway."""
        with self._cond:
            self._budget = max(0, limit_bytes) + 2 * (MAX_LINE_BYTES + LINE_OVERHEAD)

    def append(self, stream: str, text: str, timestamp: str | None = None) -> None:
        cost = len(text) + LINE_OVERHEAD
        with self._cond:
            if self._held + cost > self._budget and text != SENTINEL:
                self._overflowed = True  # a runaway writer must not grow the invoker's memory
                return
            self._held += cost
            self._lines.append(LogLine(timestamp or rfc3339_nano(), stream, text))
            self._cond.notify_all()

    def close(self) -> None:
        """The container is gone: no more lines will come."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def discard(self) -> None:
        with self._cond:
            self._lines.clear()
            self._held = 0
            self._overflowed = False

    def _next(self, deadline: float, idle_deadline: float, wait: bool) -> LogLine | None:
        with self._cond:
            while not self._lines:
                if not wait or self._closed:
                    return None
                remaining = min(deadline, idle_deadline) - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            line = self._lines.popleft()
            self._held -= len(line.text) + LINE_OVERHEAD
            return line

    def _take_overflow(self) -> bool:
        with self._cond:
            overflowed, self._overflowed = self._overflowed, False
            return overflowed

    def collect(
        self,
        limit_bytes: int,
        wait_for_sentinels: bool,
        total_timeout_s: float,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> CollectedLogs:
        """Take one activation's lines. With ``wait_for_sentinels`` read until the
        sentinel was seen on stdout and stderr (2 s idle, ``total_timeout_s`` overall);
        otherwise take what is there now."""
        out = CollectedLogs()
        size = 0
        seen: set[str] = set()
        deadline = time.monotonic() + total_timeout_s
        while not wait_for_sentinels or len(seen) < 2:
            line = self._next(deadline, time.monotonic() + idle_timeout_s, wait_for_sentinels)
            if line is None:
                out.incomplete = wait_for_sentinels
                break
            if line.text == SENTINEL:
                seen.add(line.stream)
                continue
            if out.truncated:
                continue  # keep draining up to the sentinels so the next activation starts clean
            size += line.raw_size
            if size > limit_bytes:
                out.truncated = True
                out.lines.append(note_line(truncated_note(limit_bytes)))
                continue
            out.lines.append(line.formatted())
        if self._take_overflow() and not out.truncated:  # dropped while buffered
            out.truncated = True
            out.lines.append(note_line(truncated_note(limit_bytes)))
        return out
