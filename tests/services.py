"""Real services for integration tests: a CouchDB-API server (pouchdb-server) and helpers.

The Kafka-protocol broker is ``invoker.embedded.broker.EmbeddedKafka``; this module
adds what only tests need. Import it as ``from services import ...`` (pytest puts
``tests/`` on ``sys.path`` for its conftest).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import requests

from invoker.embedded.broker import (
    HOST,
    BrokerStartError,
    EmbeddedKafka,
    free_port,
    log_tail,
    port_is_free,
    stop_process,
)

__all__ = ["RUNTIME_IMAGE", "BrokerStartError", "CouchServer", "CouchStartError", "EmbeddedKafka",
           "container_engine_problem", "free_port", "nvidia_gpu_count", "pouchdb_server_binary"]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_POUCHDB_SERVER = REPO / ".cache" / "node" / "node_modules" / ".bin" / "pouchdb-server"


class CouchStartError(RuntimeError):
    """pouchdb-server is missing, did not start, or did not answer in time."""


def pouchdb_server_binary() -> Path:
    """``$POUCHDB_SERVER``, else the copy ``./dev setup`` installs under ``.cache/node``."""
    path = Path(os.environ.get("POUCHDB_SERVER") or DEFAULT_POUCHDB_SERVER)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise CouchStartError(f"pouchdb-server not found at {path}: run `./dev setup` "
                              "(or set POUCHDB_SERVER to a pouchdb-server executable)")
    return path


class CouchServer:
    """A pouchdb-server (CouchDB HTTP API, admin party, in memory) on ``127.0.0.1:port``.

    Its data lives in memory only, so ``restart()`` gives the same URL with no databases:
    what a test of "CouchDB went away and came back" needs.
    """

    def __init__(self, port: int | None = None, *, workdir: str | Path | None = None,
                 binary: str | Path | None = None, start_timeout_s: float = 30.0) -> None:
        self.port = port if port is not None else free_port()
        # pouchdb-server writes config.json and log.txt into its cwd: give it its own.
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="pouchdb-"))
        self.log_path = self.workdir / "stdout.log"
        self.start_timeout_s = start_timeout_s
        self._binary = Path(binary) if binary is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start the server and wait until ``GET /`` answers; a no-op when running."""
        if self.running:
            return self
        self.stop()  # reap a server that died on its own
        binary = self._binary or pouchdb_server_binary()
        if not port_is_free(self.port):
            raise CouchStartError(f"port {self.port} is in use; cannot start pouchdb-server there")
        cmd = [str(binary), "--in-memory", "--host", HOST, "--port", str(self.port), "--no-color"]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        self._log.flush()
        try:
            self._proc = subprocess.Popen(cmd, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                          stdout=self._log, stderr=subprocess.STDOUT)
        except OSError as e:
            self.stop()
            raise CouchStartError(f"cannot run pouchdb-server {binary}: {e}") from e
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        last_error = "no answer"
        while True:
            if self._proc.poll() is not None:
                raise CouchStartError(
                    f"pouchdb-server exited with status {self._proc.returncode} during start-up "
                    f"(log {self.log_path}):\n{log_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise CouchStartError(
                    f"pouchdb-server on {self.url} did not answer within {self.start_timeout_s:.0f} s "
                    f"({last_error}; log {self.log_path}):\n{log_tail(self.log_path)}")
            try:
                reply = requests.get(self.url + "/", timeout=1.0)
                # Check it is our server's welcome, not another program on a reused port.
                if reply.ok and "pouchdb-adapters" in reply.json():
                    return
                last_error = f"GET / answered {reply.status_code}: {reply.text[:200]}"
            except (requests.RequestException, ValueError) as e:
                last_error = repr(e)
            time.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (terminate, then kill); its data is gone. A no-op when stopped."""
        if self._proc is not None:
            stop_process(self._proc, timeout_s)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> Self:
        """Stop and start again on the same port, with no databases."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"CouchServer({self.url}, {'running' if self.running else 'stopped'}, workdir={self.workdir})"


def nvidia_gpu_count() -> int:
    """NVIDIA GPUs that NVML reports; 0 when pynvml or the driver is missing."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError subclasses: no driver, no device, no permission
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return 0
    finally:
        pynvml.nvmlShutdown()


RUNTIME_IMAGE = "owgpu/action-python-v3:latest"
# Set by `./dev test` (and so in CI), where podman is installed and serving: there a missing
# engine or image is a failure, not a reason to skip.
REQUIRE_ENGINE_ENV = "OWGPU_REQUIRE_CONTAINER_ENGINE"


def container_engine_problem() -> str | None:
    """Why the container tests cannot run here (no Docker API, no runtime image), or None."""
    try:
        import docker
        from docker.errors import DockerException, ImageNotFound
    except ImportError:
        return "the docker SDK is not installed"
    try:
        client = docker.from_env(timeout=10)
    except DockerException as e:
        return f"no Docker API reachable (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}): {e}"
    try:
        client.ping()
        client.images.get(RUNTIME_IMAGE)
    except ImageNotFound:
        return f"image {RUNTIME_IMAGE} is not built (runtimes/build.sh --local-base)"
    except DockerException as e:
        return f"the Docker API at {client.api.base_url} does not answer: {e}"
    finally:
        client.close()
    return None
