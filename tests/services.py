"""Real services for integration tests: a CouchDB-API server (pouchdb-server) and helpers.

The Kafka-protocol broker is ``invoker.embedded.broker.EmbeddedKafka``; this module
adds what only tests need. Import it as ``from services import ...`` (pytest puts
``tests/`` on ``sys.path`` for its conftest).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import requests

from invoker.embedded.broker import BrokerStartError, EmbeddedKafka
from invoker.embedded.child import HOST, ChildServer, ServerStartError, free_port

__all__ = ["RUNTIME_IMAGE", "BrokerStartError", "CouchServer", "CouchStartError", "EmbeddedKafka",
           "container_engine_problem", "free_port", "nvidia_gpu_count", "pouchdb_server_binary"]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_POUCHDB_SERVER = REPO / ".cache" / "node" / "node_modules" / ".bin" / "pouchdb-server"


class CouchStartError(ServerStartError):
    """pouchdb-server is missing, did not start, or did not answer in time."""


def pouchdb_server_binary() -> Path:
    """``$POUCHDB_SERVER``, else the copy ``./dev setup`` installs under ``.cache/node``."""
    path = Path(os.environ.get("POUCHDB_SERVER") or DEFAULT_POUCHDB_SERVER)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise CouchStartError(f"pouchdb-server not found at {path}: run `./dev setup` "
                              "(or set POUCHDB_SERVER to a pouchdb-server executable)")
    return path


class CouchServer(ChildServer):
    """A pouchdb-server (CouchDB HTTP API, admin party, in memory) on ``127.0.0.1:port``.

    Its data lives in memory only, so ``restart()`` gives the same URL with no databases:
    what a test of "CouchDB went away and came back" needs.
    """

    what = "pouchdb-server"
    start_error = CouchStartError

    def __init__(self, port: int | None = None, *, workdir: str | Path | None = None,
                 binary: str | Path | None = None, start_timeout_s: float = 30.0) -> None:
        # pouchdb-server writes config.json and log.txt into its cwd: give it its own.
        workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="pouchdb-"))
        super().__init__(port, workdir / "stdout.log", start_timeout_s, cwd=workdir)
        self.workdir = workdir
        self._binary = Path(binary) if binary is not None else None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        binary = self._binary or pouchdb_server_binary()
        return [str(binary), "--in-memory", "--host", HOST, "--port", str(self.port), "--no-color"]

    def probe(self, timeout_s: float) -> str | None:
        try:
            reply = requests.get(self.url + "/", timeout=timeout_s)
            # Check it is our server's welcome, not another program on a reused port.
            if reply.ok and "pouchdb-adapters" in reply.json():
                return None
            return f"GET / answered {reply.status_code}: {reply.text[:200]}"
        except (requests.RequestException, ValueError) as e:
            return repr(e)

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


# OWGPU_RUNTIME_IMAGE: test a side build (runtimes/build.sh --tag) without touching :latest.
RUNTIME_IMAGE = os.environ.get("OWGPU_RUNTIME_IMAGE") or "owgpu/action-python-v3:latest"
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
