"""Process backend: each "container" is the action runtime as a child process on a
loopback port. It is what runs on a laptop with no container engine, and what the
tests use to exercise the pool without Docker.

What it cannot give: memory and CPU isolation (limits are only accounted, not
enforced), pausing keeps the process running (SIGSTOP would break keep-alive
bookkeeping for nothing), and any isolation between tenants: every runtime runs as the
invoker's user, on the invoker's host. It is for one-user machines, and says so at start.

What it does: a runtime's environment is built here from nothing (none of the invoker's,
whose environment may hold the CouchDB password); the invoker process makes itself
non-dumpable, so that ``/proc/<invoker>/environ`` and ptrace are closed to other processes
of its user (root still reads them, and the invoker's files stay readable to its user);
each runtime asks for its own secret, so a neighbour on loopback cannot call it.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from owruntime.guard import SECRET_ENV

from invoker.containerpool.container import (
    Container,
    ContainerFactory,
    ContainerSpec,
    ContainerStartError,
)
from invoker.containerpool.logs import MAX_LINE_BYTES

log = logging.getLogger(__name__)

RUNTIME_SOURCE = Path(__file__).resolve().parents[2] / "runtimes" / "python"
PR_SET_DUMPABLE = 4  # prctl(2)


def start_process_backend() -> None:
    """What the invoker does once, before it starts runtimes as its children: say that this
    backend isolates nothing, and close its own ``/proc/<pid>/environ`` to its children."""
    log.warning("process backend: actions run as this invoker's user on this host; it isolates nothing "
                "between tenants (no memory, CPU, file or network isolation): for one-user machines only. "
                "Use --backend docker where tenants share a node.")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as error:  # not Linux
        log.warning("process backend: cannot make the invoker non-dumpable (%s): its environment is "
                    "readable by its actions through /proc", error)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProcessContainer(Container):
    def __init__(self, container_id: str, spec: ContainerSpec, process: subprocess.Popen, port: int,
                 secret: str | None = None) -> None:
        super().__init__(container_id, spec, "127.0.0.1", port, secret)
        self.process = process
        self._readers = [
            threading.Thread(target=self._pump, args=(process.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._pump, args=(process.stderr, "stderr"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, stream, name: str) -> None:
        for raw in iter(lambda: stream.readline(MAX_LINE_BYTES), b""):  # a line never ending stays bounded
            self.logs.append(name, raw.decode("utf-8", errors="replace").rstrip("\n"))
        stream.close()
        if name == "stdout":
            self.logs.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def suspend(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def destroy(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.warning("runtime process %s did not exit after SIGKILL", self.process.pid)


INVOKER_PID_ENV = "__OW_INVOKER_PID"


def _alive(pid: bytes | None) -> bool:
    """Whether the invoker process ``pid`` still runs (not a zombie). Unknown: not alive."""
    if not pid or not pid.isdigit():
        return False
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class ProcessContainerFactory(ContainerFactory):
    """Starts ``python -m owruntime`` per container. ``python`` is the invoker's own
    interpreter unless configured."""

    name = "process"
    runtime_families = frozenset({"python"})  # only the project's own Python runtime
    prewarms_stem_cells = False

    def __init__(self, python: str | None = None, api_host: str = "", extra_env: dict[str, str] | None = None) -> None:
        self.python = python or sys.executable
        self.api_host = api_host
        self.extra_env = extra_env or {}
        self._seq = itertools.count()
        self._live: dict[str, ProcessContainer] = {}
        self._lock = threading.Lock()

    def create(self, spec: ContainerSpec) -> Container:
        port = free_loopback_port()
        secret = secrets.token_urlsafe(32)
        env = {  # from nothing: none of the invoker's environment reaches the action
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "UTF-8",
            "PYTHONPATH": str(RUNTIME_SOURCE),
            "__OW_API_HOST": self.api_host,
            **self.extra_env,
            **spec.env,
            SECRET_ENV: secret,
            INVOKER_PID_ENV: str(os.getpid()),  # who started it: see cleanup
        }
        if spec.gpu is not None:  # what a GPU device request does for a container
            env["CUDA_VISIBLE_DEVICES"] = spec.gpu
        try:
            process = subprocess.Popen(
                [self.python, "-m", "owruntime", "--host", "127.0.0.1", "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group, so destroy kills children too
            )
        except OSError as error:
            raise ContainerStartError(f"cannot start runtime process: {error}") from error
        container = ProcessContainer(f"{spec.name}-{next(self._seq)}", spec, process, port, secret)
        with self._lock:
            self._live[container.id] = container
        return container

    def cleanup(self) -> None:
        # Child processes die with their session leader's SIGKILL only if we kill them;
        # after a crash of the invoker they would be orphans. They are started in their
        # own sessions and hold no state, so the previous run's leftovers are found by
        # their environment: runtimes of this invoker's name whose invoker process is gone.
        # A live invoker of the same name (a second standalone mode, a test run beside this
        # one) keeps its runtimes.
        me = self.extra_env.get("__OW_INVOKER")
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if b"owruntime" not in (proc / "cmdline").read_bytes():
                    continue
                environ = dict(e.split(b"=", 1) for e in (proc / "environ").read_bytes().split(b"\0") if b"=" in e)
            except OSError:
                continue
            owner = environ.get(b"__OW_INVOKER")
            if owner is None or owner.decode() != me or _alive(environ.get(INVOKER_PID_ENV.encode())):
                continue
            try:
                os.kill(int(proc.name), signal.SIGKILL)
                log.info("removed leftover runtime process %s", proc.name)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        with self._lock:
            live = list(self._live.values())
            self._live.clear()
        for container in live:
            container.destroy()
