"""The HTTP layer: ``POST /init`` and ``POST /run`` on a ``ThreadingHTTPServer``.

* HTTP/1.1 keep-alive, every answer has ``Content-Length`` and ``Content-Type: application/json``
  and is sent with one ``send``; ``TCP_NODELAY`` on accepted sockets; no access log, no banner.
* Header parsing is a small loop instead of ``email.parser`` (the /run round trip is the
  invoker's hot path); request bodies may use ``Content-Length`` or chunked encoding.
* The action is executed on the **main thread** (like ActionLoop, where the launcher's main thread
  calls ``main``), so actions may use ``signal.signal``/``signal.alarm`` and libraries that insist
  on the main thread. Connection threads hand /init and /run to it through
  :class:`MainThreadExecutor`; this also serialises runs. With ``__OW_ALLOW_CONCURRENT=true``,
  /run executes directly on the connection threads, concurrently (/init still on the main thread).
* Every /run answer carries ``X-OW-Resident``: the models the action holds resident
  (:mod:`owruntime.resident`), so the invoker places work where a model already is.
* ``GET /ready``: 503 while the warm-up that ``OW_GPU_PREWARM`` asks for runs (GPU stem cells,
  :mod:`owruntime.prewarm`), then 200 with its report. /init and /run wait for the warm-up.
* ``POST /sleep``: the models the action loaded through :mod:`owruntime.models` give their
  device memory back and wait in host memory; the next /run wakes them (see
  :mod:`owruntime.models.sleep`). Runs on the main thread like /init and /run, so never under
  an activation; answers what was freed, with ``X-OW-Resident``.
* With ``OW_RUNTIME_SECRET`` set, /init, /run and /sleep answer 403 unless the request carries it in
  ``X-OW-Runtime-Secret`` (:mod:`owruntime.guard`): only the invoker may use the container.
* SIGTERM/SIGINT: stop accepting, finish the activations in progress, answer 503 to any request
  that arrives meanwhile, remove the action's directory and exit 0. A second signal exits at once.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import socketserver
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import guard, logs, prewarm
from .action import ActionRuntime, error_body
from .resident import HEADER as RESIDENT_HEADER
from .resident import REGISTRY

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    411: b"Length Required",
    413: b"Payload Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}
_MAX_LINE = 65536
_MAX_HEADERS = 100
_SMALL_BODY = 64 * 1024  # below this the head and the body are joined into one send
SHUTTING_DOWN = (503, error_body("the action runtime is shutting down"))
_SECRET_HEADER = guard.SECRET_HEADER.lower()  # parse_request lower-cases header names
_FORBIDDEN_BODY = error_body(guard.MSG_FORBIDDEN)


def concurrency_enabled(environ=os.environ) -> bool:
    """``__OW_ALLOW_CONCURRENT=true`` in the container environment (Node.js runtime's switch)."""
    return environ.get("__OW_ALLOW_CONCURRENT", "").strip().lower() == "true"


class _Job:
    __slots__ = ("fn", "body", "handler", "close", "done")

    def __init__(self, fn, body: bytes, handler: Handler, close: bool) -> None:
        self.fn, self.body, self.handler, self.close = fn, body, handler, close
        self.done = threading.Lock()
        self.done.acquire()  # released once the answer has been written

    def wait(self) -> None:
        self.done.acquire()
        self.done.release()


class MainThreadExecutor:
    """Runs /init and /run on the thread that calls :meth:`serve` (the main thread).

    A connection thread parses the request and queues a job; the main thread runs it and writes
    the answer to the connection itself, so the critical path has one thread switch, not two.
    The connection thread meanwhile goes back to reading its socket; it waits for the job only
    before closing the connection (see :meth:`Handler.finish`).
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.stopped = False

    def submit(self, fn, body: bytes, handler: Handler, close: bool) -> _Job:
        job = _Job(fn, body, handler, close)
        if self.stopped:
            self._finish(job, SHUTTING_DOWN)
        else:
            self._queue.put(job)
        return job

    @staticmethod
    def _finish(job: _Job, answer: tuple) -> None:
        try:
            job.handler.answer(answer[0], answer[1], job.close, *answer[2:])
        except OSError:  # the client went away
            pass
        finally:
            job.done.release()

    def serve(self) -> None:
        get = self._queue.get
        finish = self._finish
        while True:
            try:
                # The timeout lets Python run signal handlers even when the signal was
                # delivered to a thread the action started rather than to this one.
                job = get(timeout=1.0)
            except queue.Empty:
                continue
            if job is None:
                break
            try:
                answer = job.fn(job.body)
            except BaseException:  # a bug in the runtime: answer, keep serving
                logs.error(traceback.format_exc())
                answer = (500, error_body("internal error in the action runtime"))
            finish(job, answer)
        while True:  # answer what was queued behind the stop
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                finish(job, SHUTTING_DOWN)

    def stop(self) -> None:
        self.stopped = True
        self._queue.put(None)


class App:
    """Routes /init and /run to the :class:`ActionRuntime` on the right thread; counts requests
    in progress for a clean shutdown."""

    def __init__(self, runtime: ActionRuntime, executor: MainThreadExecutor, concurrent: bool,
                 secret: bytes | None = None):
        self.runtime = runtime
        self.secret = secret  # None: any caller (no OW_RUNTIME_SECRET)
        self.executor = executor
        self.concurrent = concurrent
        self.stopping = False
        self.ready = threading.Event()
        self.readiness: dict = {}
        self._busy = 0
        self._idle = threading.Condition(threading.Lock())

    def run(self, body: bytes) -> tuple[int, bytes, bytes]:
        """/run, with the resident models as they are after it."""
        status, out = self.runtime.run(body)
        return status, out, b"%s: %s\r\n" % (RESIDENT_HEADER.encode(), REGISTRY.header_value().encode())

    def sleep(self, body: bytes) -> tuple[int, bytes, bytes]:
        """/sleep: the body is empty or a JSON object (no field is defined yet)."""
        try:
            request = json.loads(body) if body.strip() else {}
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return 400, error_body("the /sleep body must be empty or a JSON object"), b""
        from .models import process_cache  # no framework import: the models load them
        from .models.sleep import sleep_all

        answer = sleep_all(process_cache(), REGISTRY)
        return 200, json.dumps(answer).encode(), b"%s: %s\r\n" % (
            RESIDENT_HEADER.encode(), REGISTRY.header_value().encode())

    def enter(self) -> None:
        with self._idle:
            self._busy += 1

    def leave(self) -> None:
        with self._idle:
            self._busy -= 1
            if self._busy == 0:
                self._idle.notify_all()

    def wait_idle(self) -> None:
        with self._idle:
            while self._busy:
                self._idle.wait(0.5)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # StreamRequestHandler.setup sets TCP_NODELAY
    server: RuntimeServer
    headers: dict  # lower-case names (see parse_request)
    _job = None  # the last job queued for the main thread

    def log_message(self, format, *args) -> None:  # noqa: A002 - no access log on stderr
        pass

    def parse_request(self) -> bool:
        """Request line as ``BaseHTTPRequestHandler`` checks it, then a plain header loop into a
        dict with lower-case names (``http.client.parse_headers`` builds an ``email`` message,
        which costs more than the rest of a warm /run)."""
        self.command = None
        self.request_version = self.default_request_version
        self.close_connection = True
        line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        self.requestline = line
        words = line.split()
        if not words:
            return False
        if len(words) != 3:
            self.send_error(400, f"Bad request syntax ({line!r})")
            return False
        command, path, version = words
        if version == "HTTP/1.1":
            self.close_connection = False
        elif version != "HTTP/1.0":
            if version.startswith("HTTP/") and version[5:6].isdigit() and version[5:6] != "1":
                self.send_error(505, f"Invalid HTTP version ({version})")
            else:
                self.send_error(400, f"Bad request version ({version!r})")
            return False
        self.command, self.path, self.request_version = command, path, version

        headers = {}
        readline = self.rfile.readline
        for _ in range(_MAX_HEADERS + 1):
            raw = readline(_MAX_LINE + 1)
            if len(raw) > _MAX_LINE:
                self.send_error(431, "Line too long")
                return False
            if raw in (b"\r\n", b"\n", b""):
                break
            name, sep, value = raw.partition(b":")
            if not sep:
                self.send_error(400, "Bad header line")
                return False
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        else:
            self.send_error(431, "Too many headers")
            return False
        self.headers = headers

        connection = headers.get("connection")
        if connection:
            tokens = connection.lower()
            if "close" in tokens:
                self.close_connection = True
            elif "keep-alive" in tokens:
                self.close_connection = False
        expect = headers.get("expect")
        if expect and expect.lower() == "100-continue" and version == "HTTP/1.1":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _read_body(self) -> bytes | None:
        headers = self.headers
        encoding = headers.get("transfer-encoding")
        if encoding is not None and "chunked" in encoding.lower():
            return self._read_chunked()
        length = headers.get("content-length")
        if length is None:
            return b""
        try:
            size = int(length)
            if size < 0:
                raise ValueError(length)
        except ValueError:
            self.send_error(400, f"Bad Content-Length ({length!r})")
            return None
        body = self.rfile.read(size)
        if len(body) < size:  # the client went away
            self.close_connection = True
            return None
        return body

    def _read_chunked(self) -> bytes | None:
        parts = []
        readline, read = self.rfile.readline, self.rfile.read
        while True:
            line = readline(_MAX_LINE + 1)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.send_error(400, "Bad chunk size")
                return None
            if size == 0:
                while readline(_MAX_LINE + 1) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts)
            chunk = read(size)
            if len(chunk) < size:
                self.close_connection = True
                return None
            parts.append(chunk)
            readline(_MAX_LINE + 1)  # CRLF after the chunk

    def answer(self, status: int, body: bytes, close: bool, extra_headers: bytes = b"") -> None:
        """Write a whole response (head and body in one ``send`` when small)."""
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n" % (
            status,
            _REASONS.get(status, b"Unknown"),
            len(body),
            extra_headers,
            b"Connection: close\r\n" if close else b"",
        )
        if len(body) <= _SMALL_BODY:
            self.wfile.write(head + body)
        else:
            self.wfile.write(head)
            self.wfile.write(body)

    def do_POST(self) -> None:
        app = self.server.app
        app.enter()
        try:
            body = self._read_body()
            if body is None:
                return
            close = self.close_connection
            if app.stopping:
                self.close_connection = True
                self.answer(*SHUTTING_DOWN, True)
                return
            path = self.path
            if "?" in path:
                path = path.split("?", 1)[0]
            if app.secret is not None and not guard.authorised(app.secret, self.headers.get(_SECRET_HEADER)):
                self.answer(403, _FORBIDDEN_BODY, close)
                return
            if path == "/run":
                if app.concurrent and app.ready.is_set():
                    status, out, headers = app.run(body)
                    self.answer(status, out, close, headers)
                    return
                job = app.executor.submit(app.run, body, self, close)
            elif path == "/init":
                job = app.executor.submit(app.runtime.init, body, self, close)
            elif path == "/sleep":  # on the main thread, between activations
                job = app.executor.submit(app.sleep, body, self, close)
            else:
                self.answer(404, error_body(f"no such route: {path}"), close)
                return
            self._job = job
            if close:
                job.wait()
        finally:
            app.leave()

    def finish(self) -> None:
        job = self._job
        if job is not None:  # never close the socket under the main thread's answer
            job.wait()
        super().finish()

    def do_GET(self) -> None:
        self._read_body()
        app = self.server.app
        if self.path.split("?", 1)[0] == "/ready":
            if app.ready.is_set():
                self.answer(200, json.dumps({"ready": True, "prewarm": app.readiness}).encode(), self.close_connection)
            else:
                self.answer(503, json.dumps({"ready": False, "warming": prewarm.requested()}).encode(),
                            self.close_connection)
            return
        self.answer(404, error_body(f"no such route: GET {self.path}"), self.close_connection)

    def send_error(self, code, message=None, explain=None) -> None:
        """JSON instead of ``BaseHTTPRequestHandler``'s HTML page; closes the connection."""
        self.close_connection = True
        if message is None:
            message = _REASONS.get(code, b"Error").decode()
        try:
            self.answer(code, error_body(message), True)
        except OSError:
            pass


class RuntimeServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, app: App) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can take
        # seconds in a container; the name is never used.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = host, port

    def handle_error(self, request, client_address) -> None:
        # socketserver prints a traceback to stderr by default: an action log stream.
        # A dropped connection is no error; anything else is reported briefly.
        kind = sys.exc_info()[0]
        if kind is not None and not issubclass(kind, ConnectionError):
            logs.error(f"owruntime: error while serving {client_address}: {traceback.format_exc()}")


def serve(host: str, port: int, concurrent: bool | None = None, ready=None) -> int:
    """Serve until SIGTERM/SIGINT; must be called on the main thread. Returns the exit status."""
    if concurrent is None:
        concurrent = concurrency_enabled()
    secret = guard.take_secret()  # before the action could read it
    runtime = ActionRuntime()
    executor = MainThreadExecutor()
    app = App(runtime, executor, concurrent, secret)
    httpd = RuntimeServer((host, port), app)

    def on_signal(signum, frame):
        if app.stopping:
            os._exit(128 + signum)
        app.stopping = True
        executor.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Linux delivers a process-directed signal to the main thread unless it blocks it, which
    # interrupts the executor's wait at once; the other threads keep the default signal mask
    # (a blocked mask would be inherited by the action's subprocesses).
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="owruntime-http", daemon=True
    )
    thread.start()
    if ready is not None:
        ready(httpd.server_address)
    try:
        # On the main thread, before any /init or /run (they wait in the executor's queue).
        warm = prewarm.requested()
        if warm:
            app.readiness = prewarm.warm_up(warm)
            logs.flush()
        app.ready.set()
        executor.serve()
    finally:
        app.stopping = True
        executor.stopped = True
        httpd.shutdown()
        thread.join()
        app.wait_idle()
        httpd.server_close()
        runtime.close()
        logs.flush()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
