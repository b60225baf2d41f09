"""The container seam: what the pool needs from a container and from its factory.

A backend (processes, Docker) implements ``ContainerFactory`` and ``Container``;
the pool and the per-container proxy never know which one they drive. The HTTP
conversation with the action runtime (``/init``, ``/run``) is the same for every
backend and lives here, in ``RuntimeClient``; so does ``POST /sleep`` (GPU sleep, issue #20),
whose answer ``SleepReport`` parses.
"""

from __future__ import annotations

import http.client
import json
import queue
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from owruntime.guard import SECRET_HEADER
from owruntime.resident import HEADER as RESIDENT_HEADER
from owruntime.resident import Residency, loads_report, parse_header, reported_bytes

from invoker.clock import SYSTEM_CLOCK, Clock
from invoker.containerpool.logs import LogBuffer

# The backends' errors belong to the invoker's one tree (invoker.errors); importable from here too.
from invoker.errors import ContainerError as ContainerError
from invoker.errors import ContainerStartError as ContainerStartError


@dataclass(frozen=True)
class ContainerSpec:
    """Everything a backend needs to start one action container."""

    name: str
    kind: str
    image: str
    memory_mb: int
    cpu_shares: int
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    gpu: str | None = None  # device UUID or index assigned by the GPU layer
    mounts: tuple[str, ...] = ()  # host directories bound at the same path (the MPS pipe and log)
    user: str | None = None  # ``uid:gid`` to run as; None: the image's user (backends that can choose)


@dataclass(frozen=True)
class HttpOutcome:
    """One ``/init`` or ``/run`` exchange, as the proxy needs it to decide the result."""

    start_ms: int
    end_ms: int
    status: int | None = None  # None: no HTTP answer (timeout or connection lost)
    body: bytes = b""
    timed_out: bool = False
    connection_lost: bool = False
    # The runtime's ``X-OW-Resident`` header as sent; None: it sent none (a stock runtime).
    resident_header: str | None = None
    # The whole body's length when only its first bytes were read (``max_body``): the declared
    # Content-Length, else what was read. None: ``body`` is the whole body.
    length: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class SleepReport:
    """What one ``POST /sleep`` did (runtimes/python/README.md, "GPU sleep"). A failure, a
    timeout or an answer that is not the runtime's (a stock runtime: 404) is ``answered=False``
    with nothing asleep: the container is still awake, all its memory still held."""

    answered: bool
    asleep: tuple[dict, ...] = ()  # {"key", "device", "freed", "host_bytes", "measured", "seconds"}
    kept: tuple[dict, ...] = ()  # {"key", "device", "reason"}: models that stayed awake
    freed: dict[str, int] = field(default_factory=dict)  # device memory given back, per device
    host_bytes: int = 0  # host memory that holds the asleep models
    seconds: float = 0.0  # how long the runtime took
    problem: str | None = None  # why it was not answered

    @property
    def slept(self) -> bool:
        """Some model went to sleep (with ``kept`` entries, only part of its memory came back)."""
        return bool(self.asleep)

    @property
    def measured(self) -> bool:
        """Every ``freed`` figure was measured on the device, none is a model-size estimate."""
        return all(m.get("measured", True) for m in self.asleep)

    def freed_on_gpu(self) -> int:
        """Bytes the sleep gave back on CUDA devices (a CPU "device" copy is host memory)."""
        return sum(n for device, n in self.freed.items() if device.startswith("cuda"))

    @classmethod
    def parse(cls, outcome: HttpOutcome) -> SleepReport:
        """The runtime's answer, every number checked (``reported_bytes``): a wrong type, NaN,
        a negative or a huge figure makes the whole answer unreadable, so the container counts
        as awake with its charge unchanged."""
        if outcome.status is None:
            return cls(False, problem="timed out" if outcome.timed_out else "no answer")
        if outcome.status != 200:
            return cls(False, problem=f"answered {outcome.status}")
        if outcome.length is not None:
            return cls(False, problem=f"an answer of {outcome.length} bytes, over the {SLEEP_MAX_BODY}-byte cap")
        try:
            body = loads_report(outcome.body)
            asleep = tuple(_sleep_entry(m) for m in body.get("asleep") or ())
            kept = tuple(dict(m) for m in body.get("kept") or ())
            freed = {str(k): reported_bytes(v) for k, v in (body.get("freed") or {}).items()}
            return cls(True, asleep, kept, freed, reported_bytes(body.get("host_bytes", 0)),
                       _seconds(body.get("seconds", 0)))
        except (ValueError, TypeError, AttributeError, RecursionError) as error:
            return cls(False, problem=f"unreadable answer: {error}")


# A sleep report lists a few models (about 150 bytes each): far more than one needs.
SLEEP_MAX_BODY = 64 * 1024
_SIZES = ("bytes", "freed", "host_bytes")


def _sleep_entry(entry: object) -> dict:
    """One ``asleep`` entry; its sizes checked as ``reported_bytes``, ``measured`` a bool."""
    checked = dict(entry)  # type: ignore[call-overload]  # TypeError/ValueError: not an object
    for name in _SIZES:
        if name in checked:
            reported_bytes(checked[name])
    if not isinstance(checked.get("measured", True), bool):
        raise ValueError("measured is not a boolean")
    return checked


def _seconds(value: object) -> float:
    if type(value) not in (int, float) or not 0 <= value < 1e9:  # NaN fails the comparison
        raise ValueError(f"not a duration: {str(value)[:40]}")
    return float(value)  # type: ignore[arg-type]


DEADLINE_SLACK_S = 0.01


class _DeadlineSocket(socket.socket):
    """A socket whose every read and write ends by one wall-clock ``deadline`` (monotonic):
    a response dripped a byte at a time cannot outlive it, as it would a per-read timeout."""

    deadline = float("inf")
    clock: Clock = SYSTEM_CLOCK  # the client's: its deadline is on this clock

    def _remaining(self) -> None:
        remaining = self.deadline - self.clock.monotonic()
        if remaining <= 0:
            raise TimeoutError("the exchange's deadline has passed")
        current = self.gettimeout()
        # settimeout is a system call: re-arm only when the deadline would be overshot by more
        # than DEADLINE_SLACK_S, so a fast exchange arms it once.
        if current is None or current > remaining + DEADLINE_SLACK_S:
            self.settimeout(remaining)

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:  # noqa: D102
        self._remaining()
        return super().recv_into(buffer, nbytes, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:  # noqa: D102
        self._remaining()
        return super().recv(bufsize, flags)

    def sendall(self, data, flags: int = 0) -> None:  # noqa: D102
        self._remaining()
        super().sendall(data, flags)


class _DeadlineConnection(http.client.HTTPConnection):
    """``HTTPConnection`` on a ``_DeadlineSocket``; ``deadline`` is set per exchange."""

    deadline = float("inf")
    clock: Clock = SYSTEM_CLOCK

    def connect(self) -> None:
        timeout = max(0.001, self.deadline - self.clock.monotonic())
        raw = socket.create_connection((self.host, self.port), timeout)
        sock = _DeadlineSocket(fileno=raw.detach())
        sock.clock = self.clock
        sock.deadline = self.deadline
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock


class RuntimeClient:
    """Keep-alive HTTP/1.1 client for one action runtime, up to ``max_connections``
    exchanges at once (intra-container concurrency). Each exchange has one wall-clock
    deadline, and reads at most ``max_body`` + 1 bytes of the response body."""

    def __init__(self, host: str, port: int, max_connections: int = 1, secret: str | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.host = host
        self.clock = clock  # deadlines, retry pauses and the outcome's timestamps
        self.port = port
        self.secret = secret  # the container's caller secret (owruntime.guard), sent on every POST
        self._idle: queue.LifoQueue[_DeadlineConnection] = queue.LifoQueue()
        self._closed = False
        self.max_connections = max_connections

    def _connection(self, deadline: float) -> _DeadlineConnection:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = _DeadlineConnection(self.host, self.port)
            conn.clock = self.clock
        conn.deadline = deadline
        if isinstance(conn.sock, _DeadlineSocket):
            conn.sock.deadline = deadline
        return conn

    def _release(self, conn: _DeadlineConnection) -> None:
        if self._closed:
            conn.close()
        else:
            self._idle.put(conn)

    def post(self, path: str, payload: dict, timeout_s: float, retry_refused: bool = False,
             alive: Callable[[], bool] | None = None, max_body: int | None = None) -> HttpOutcome:
        """POST JSON. ``timeout_s`` bounds the whole exchange, connecting to the last body byte.
        ``max_body``: read at most that many bytes plus one of the body (the connection is then
        dropped, and ``length`` tells the whole length). ``retry_refused`` retries every 50 ms,
        until the timeout is spent, a connection that was refused or closed before any answer,
        as OpenWhisk does for ``/init`` of a starting container (Docker's port proxy accepts and
        then resets connections until the runtime listens). ``alive`` stops the retries as soon
        as the container is gone."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        start = self.clock.wall_ms()
        deadline = self.clock.monotonic() + timeout_s
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.secret is not None:
            headers[SECRET_HEADER] = self.secret
        while True:
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                return HttpOutcome(start, self.clock.wall_ms(), timed_out=True)
            conn = self._connection(deadline)
            try:
                if conn.sock is None:
                    conn.connect()
                    conn.sock.deadline = deadline
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read() if max_body is None else response.read(max_body + 1)
                status = response.status
                reported = response.getheader(RESIDENT_HEADER)
                end = self.clock.wall_ms()
                length = None
                if not response.isclosed():  # cut at max_body + 1: the rest is never read
                    declared = response.getheader("Content-Length", "")
                    length = int(declared) if declared.isdigit() else len(data)
                    conn.close()
                elif response.will_close:
                    conn.close()
                else:
                    self._release(conn)
                return HttpOutcome(start, end, status=status, body=data, resident_header=reported, length=length)
            except TimeoutError:
                conn.close()
                return HttpOutcome(start, self.clock.wall_ms(), timed_out=True)
            except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
                conn.close()
                if retry_refused and (alive is None or alive()):
                    remaining = deadline - self.clock.monotonic()
                    if remaining <= 0.05:  # still not listening when time is up: a timeout, as in OpenWhisk
                        self.clock.sleep(max(0.0, remaining))
                        return HttpOutcome(start, self.clock.wall_ms(), timed_out=True)
                    self.clock.sleep(0.05)
                    continue
                return HttpOutcome(start, self.clock.wall_ms(), connection_lost=True)
            except (http.client.HTTPException, OSError):
                conn.close()
                return HttpOutcome(start, self.clock.wall_ms(), connection_lost=True)

    def get_status(self, path: str, timeout_s: float, max_body: int = 64 * 1024) -> tuple[int, bytes] | None:
        """One GET on a fresh connection, over by ``timeout_s`` whatever the runtime drips; None
        when it does not answer (yet). Reads at most ``max_body`` + 1 bytes of the body."""
        conn = _DeadlineConnection(self.host, self.port)
        conn.clock = self.clock
        conn.deadline = self.clock.monotonic() + timeout_s
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read(max_body + 1)
        except (http.client.HTTPException, OSError):
            return None
        finally:
            conn.close()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class Container(ABC):
    """One running action runtime. Created by a ``ContainerFactory``."""

    def __init__(self, container_id: str, spec: ContainerSpec, host: str, port: int,
                 secret: str | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.id = container_id
        self.spec = spec
        self.clock = clock
        self.client = RuntimeClient(host, port, secret=secret, clock=clock)
        self.logs = LogBuffer()
        self.residency = Residency()  # as last reported by the runtime
        self._resident_header: str | None = None

    def initialize(self, payload: dict, timeout_s: float, max_body: int | None = None) -> HttpOutcome:
        return self.client.post("/init", {"value": payload}, timeout_s, retry_refused=True, alive=self.is_alive,
                                max_body=max_body)

    def run(self, payload: dict, timeout_s: float, max_body: int | None = None) -> HttpOutcome:
        outcome = self.client.post("/run", payload, timeout_s, max_body=max_body)
        self._note_residency(outcome)
        return outcome

    def sleep(self, timeout_s: float) -> SleepReport:
        """``POST /sleep``: the models the action loaded through ``owruntime.models`` give their
        device memory back and wait in host memory; the next ``/run`` wakes them. Only for an
        idle, unpaused container (a paused one answers nothing: the call times out)."""
        outcome = self.client.post("/sleep", {}, timeout_s, max_body=SLEEP_MAX_BODY)
        if outcome.ok and outcome.length is None:
            self._note_residency(outcome)  # asleep models move from ``models`` to ``asleep``
        return SleepReport.parse(outcome)

    def _note_residency(self, outcome: HttpOutcome) -> None:
        reported = outcome.resident_header
        if reported is not None and reported != self._resident_header:  # parsed only when it changed
            self._resident_header = reported
            self.residency = parse_header(reported)

    def wait_ready(self, timeout_s: float) -> dict | None:
        """Until the runtime answers ``GET /ready`` with 200 (its warm-up, e.g. the CUDA
        context and framework imports of a GPU stem cell, has finished). Returns the
        runtime's readiness report, or None when it did not get ready in time or died. Every
        ``GET`` ends by the one deadline, so an answer dripped a byte at a time cannot outlive it."""
        deadline = self.clock.monotonic() + timeout_s
        while self.clock.monotonic() < deadline and self.is_alive():
            answer = self.client.get_status("/ready", timeout_s=min(5.0, max(0.1, deadline - self.clock.monotonic())))
            if answer is not None and answer[0] == 200:
                try:
                    report = json.loads(answer[1])
                except ValueError:
                    report = {}
                return report if isinstance(report, dict) else {}
            self.clock.sleep(0.05)
        return None

    def set_max_concurrency(self, n: int) -> None:
        self.client.max_connections = n

    @abstractmethod
    def suspend(self) -> None:
        """Pause an idle container (``docker pause``); a no-op where the backend cannot."""

    @abstractmethod
    def resume(self) -> None:
        """Undo ``suspend``."""

    @abstractmethod
    def destroy(self) -> None:
        """Stop and remove. Must be idempotent and never raise for a dead container."""

    @abstractmethod
    def is_alive(self) -> bool:
        """Whether the runtime process/container is still running."""

    def was_oom_killed(self) -> bool:
        """Whether the backend saw the container killed for exceeding its memory."""
        return False


class ContainerFactory(ABC):
    """Creates containers for one invoker (the Scala ``ContainerFactory`` seam)."""

    #: The backend's name (``invoker.containerpool.backends``).
    name: str = "abstract"
    #: Runtime families (the manifest's ``python``, ``nodejs``...) it can run; None: any it has an image for.
    runtime_families: frozenset[str] | None = None
    #: Whether it starts the manifest's stem cells (a process backend's would only burn memory).
    prewarms_stem_cells: bool = True
    #: Whether ``ContainerSpec.user`` is honoured (processes run as the invoker's user).
    chooses_user: bool = False

    @abstractmethod
    def create(self, spec: ContainerSpec) -> Container:
        """Start a container and return once it is created (not necessarily ready:
        ``/init`` retries until the runtime listens). Raises ContainerStartError."""

    def has_image(self, image: str) -> bool:
        """Whether containers of ``image`` can start on this node (backends without images: always)."""
        return True

    @abstractmethod
    def cleanup(self) -> None:
        """Remove containers a previous run of this invoker left behind."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release backend resources at shutdown."""
