"""The action's stdout/stderr and the end-of-activation sentinel.

The action writes to the process's own stdout and stderr (the container's log streams). After every
activation the runtime writes the line ``XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX`` once to stdout and
once to stderr, after everything the action wrote, so that the invoker can cut the streams into
per-activation logs (OpenWhisk's ``docs/actions-new.md``, "Logs"). The invoker's Kubernetes/line-based readers compare
whole lines, so the sentinel must start a line: :func:`install` replaces ``sys.stdout`` and
``sys.stderr`` with text wrappers that remember whether the last character written was a newline,
and :func:`end_activation` adds one when it was not (``print("x", end="")`` in an action).
"""

from __future__ import annotations

import io
import os
import sys

SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"
_LINE = (SENTINEL + "\n").encode()
_NEWLINE_LINE = b"\n" + _LINE


class LineTrackingWriter(io.TextIOWrapper):
    """A ``TextIOWrapper`` (so ``isinstance`` checks, ``fileno()``, ``buffer``, ``reconfigure`` and
    ``encoding`` keep working) that records whether the last text written ended a line.

    Writes that bypass it (``sys.stdout.buffer.write``, ``os.write(1, ...)``, C code) are not seen;
    the tracking is a best effort for the common ``print`` path.
    """

    at_line_start = True

    def write(self, s):  # noqa: D102 - same contract as TextIOWrapper.write
        n = super().write(s)
        if s:
            self.at_line_start = s[-1] == "\n"
        return n


_tracked: dict[int, LineTrackingWriter] = {}  # fd -> the wrapper installed for it
_libc_fflush = None


def install(encoding: str = "utf-8") -> None:
    """Replace ``sys.stdout``/``sys.stderr`` with line-tracking UTF-8 writers on the same fds.

    Line buffered, so that what an action prints reaches the log even if the process dies later;
    ``PYTHONUNBUFFERED`` (write-through) is kept. ``errors="backslashreplace"`` on both streams: an
    unencodable string printed by an action never fails the activation.
    Also prepares ``fflush(NULL)`` so that output buffered by C libraries (``printf`` in native
    extensions) is flushed before the sentinel.
    """
    global _libc_fflush
    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        if old is None or not hasattr(old, "buffer"):
            continue
        try:
            if old.fileno() != fd:
                continue
        except (OSError, ValueError):
            continue
        old.flush()
        new = LineTrackingWriter(
            old.buffer,
            encoding=encoding,
            errors="backslashreplace",
            line_buffering=True,
            write_through=getattr(old, "write_through", False),
        )
        # The original wrapper stays referenced by sys.__stdout__/__stderr__, so it is not
        # garbage-collected (which would close the shared buffer).
        setattr(sys, name, new)
        _tracked[fd] = new
    try:
        import ctypes

        _libc_fflush = ctypes.CDLL(None).fflush
        _libc_fflush.argtypes = [ctypes.c_void_p]
    except Exception:  # no ctypes/libffi in a very slim image: Python-level flushing only
        _libc_fflush = None


def flush() -> None:
    """Flush everything the action may have written: the current ``sys.stdout``/``sys.stderr``
    (possibly replaced by the action), the runtime's own wrappers, and the C stdio buffers."""
    for stream in (sys.stdout, sys.stderr, *_tracked.values()):
        if stream is not None:
            try:
                stream.flush()
            except Exception:
                pass
    if _libc_fflush is not None:
        try:
            _libc_fflush(None)
        except Exception:
            pass


def end_activation() -> None:
    """Flush the action's output, then write the sentinel line to fd 1 and fd 2.

    Each sentinel is written with a single ``write(2)`` of at most 39 bytes, which is atomic on
    pipes, so concurrent activations cannot split one.
    """
    flush()
    for fd in (1, 2):
        writer = _tracked.get(fd)
        line = _LINE
        if writer is not None:
            if not writer.at_line_start:
                line = _NEWLINE_LINE
            writer.at_line_start = True
        try:
            os.write(fd, line)
        except OSError:  # closed or broken log stream: nothing useful to do
            pass


def error(message: str) -> None:
    """Write a message line from the runtime to stderr (for failed /init and refused requests)."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        if not message.endswith("\n"):
            message += "\n"
        stream.write(message)
        stream.flush()
    except Exception:
        pass
