"""A local server run as a child process: start it, wait until it answers, stop it.

The embedded Kafka broker and the tests' CouchDB-API server are both such servers; this is
their one lifecycle. A subclass says how to start it (``command``) and how to tell that it
answers (``probe``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, Self

HOST = "127.0.0.1"  # never listen beyond this machine


class ServerStartError(RuntimeError):
    """The server did not start, or did not answer in time."""


def free_port(host: str = HOST) -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether ``port`` can be bound; TIME_WAIT leftovers of a stopped server do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR too, so a port they just gave up is usable again.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_accepts(port: int, host: str = HOST, timeout_s: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``port``."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        with open(path, errors="replace") as log:
            return "".join(deque(log, maxlen=lines)).rstrip() or "(empty)"
    except OSError as e:
        return f"(log unreadable: {e})"


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Terminate, then kill what does not exit within ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ChildServer:
    """One server process on ``127.0.0.1:port``, output appended to ``log_path``.

    ``start()`` returns once ``probe`` says the server answers; a stopped server can be
    started again on the same port. With no port given, the OS picks one, and a pick that was
    taken meanwhile is replaced on the first start (restarts keep the port).
    """

    what = "the server"  # for messages: "the Tansu broker", "pouchdb-server"
    start_error: type[ServerStartError] = ServerStartError

    def __init__(self, port: int | None, log_path: Path, start_timeout_s: float = 30.0,
                 cwd: Path | None = None) -> None:
        self._auto_port = port is None
        self.port = port if port is not None else free_port()
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._started_once = False

    # -- what a subclass provides

    def command(self) -> list[str]:
        raise NotImplementedError

    def probe(self, timeout_s: float) -> str | None:
        """``None`` when the server answers, else why not (called once the port accepts)."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    # -- the lifecycle

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start and wait until the server answers; a no-op when it runs."""
        if self.running:
            return self
        self.stop()  # reap a server that died on its own
        if not port_is_free(self.port):
            if not (self._auto_port and not self._started_once):
                raise self.start_error(f"port {self.port} is in use; cannot start {self.what} there")
            self.port = free_port()
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.cwd is not None:
            self.cwd.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # append: restarts keep earlier output
        self._log.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        self._log.flush()
        try:
            self._proc = subprocess.Popen(cmd, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=self._log,
                                          stderr=subprocess.STDOUT, env=self.environment())
        except OSError as e:
            self.stop()
            raise self.start_error(f"cannot run {self.what} ({cmd[0]}): {e}") from e
        self._started_once = True
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        last_error = "the port never accepted connections"
        while True:
            if self._proc.poll() is not None:
                raise self.start_error(
                    f"{self.what} exited with status {self._proc.returncode} during start-up "
                    f"(log {self.log_path}):\n{log_tail(self.log_path)}")
            failure = self.start_failure()
            if failure is not None:
                raise self.start_error(f"{self.what} {failure} (log {self.log_path}):\n{log_tail(self.log_path)}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.start_error(
                    f"{self.what} on {HOST}:{self.port} did not answer within {self.start_timeout_s:.0f} s "
                    f"({last_error}; log {self.log_path}):\n{log_tail(self.log_path)}")
            # A cheap TCP probe first: protocol clients log noisily when they cannot connect.
            if port_accepts(self.port):
                error = self.probe(max(0.5, min(5.0, remaining)))
                if error is None and self._proc.poll() is None:
                    return
                last_error = error or last_error
            time.sleep(0.02)

    def start_failure(self) -> str | None:
        """Why a server that is still running will never get ready, or None (a subclass that can
        tell says so: the wait then ends at once instead of at its timeout)."""
        return None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop (terminate, then kill); a no-op when not running."""
        if self._proc is not None:
            stop_process(self._proc, timeout_s)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> Self:
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
