"""Docker backend: action containers through the Docker Engine API (docker SDK).

It works against Docker and against podman's Docker-compatible API. Containers
get the action's memory limit and CPU share, no privileges, no Docker socket,
labels naming the invoker and the action, and the runtime's port published on
127.0.0.1 only (or the container network's address when one is configured).
Logs are read from the container's log stream, one follower per stream.

Tenant isolation (issue 15): no capabilities, a read-only image with size-limited tmpfs
for ``/tmp`` (where the runtime extracts the action) and ``/action`` (its home), logs
rotated by size, a network that reaches no other action container (``network.py``), and
a random secret per container that the project's runtime asks of every /init and /run.

Engine outage (issue 12): when the API goes away, containers may keep running (podman's
conmon keeps them; Docker does with live-restore) but their log streams end, so the pool
discards them. A container the engine cannot be asked to remove is kept on a list and
removed, with its network, as soon as the engine answers again (``Sweeper``): the outage
leaves nothing running.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest, Ulimit
from owruntime.guard import MAX_BYTES_ENV, SECRET_ENV

from invoker.containerpool.container import (
    Container,
    ContainerError,
    ContainerFactory,
    ContainerSpec,
    ContainerStartError,
)
from invoker.containerpool.logs import MAX_LINE_BYTES
from invoker.containerpool.network import ActionNetworks, NetworkError, engine_is_podman
from invoker.errors import EngineUnreachable

log = logging.getLogger(__name__)

RUNTIME_PORT = "8080/tcp"
LABEL_INVOKER = "org.openwhisk.invoker"
LABEL_ACTION = "org.openwhisk.action"
LABEL_KIND = "org.openwhisk.kind"
IMAGE_RECHECK_S = 30.0


class Sweeper:
    """Removes containers, and each one's network of its own, for good. What the engine cannot
    be asked to remove now (its API is away) is retried in the background every ``retry_s``
    and before a GPU container is created, until the engine answers."""

    def __init__(self, networks: ActionNetworks | None, retry_s: float = 2.0) -> None:
        self.networks = networks
        self.retry_s = retry_s
        self._pending: list[tuple[Any, str | None]] = []  # (container handle or None, network)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def remove(self, handle: Any | None, network: str | None) -> None:
        """Remove ``handle`` (if any), then ``network``; later, if the engine is unreachable."""
        try:
            self._remove(handle, network)
        except EngineUnreachable as error:
            log.warning("cannot remove %s now, will retry once the engine is back: %s",
                        handle.name if handle is not None else f"network {network}", error)
            with self._lock:
                self._pending.append((handle, network))
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(target=self._retry_loop, daemon=True, name="docker-sweeper")
                    self._thread.start()

    def sweep(self) -> None:
        """Retry every pending removal once; what still cannot be done stays pending."""
        with self._lock:
            batch, self._pending = self._pending, []
        failed = []
        for handle, network in batch:
            try:
                self._remove(handle, network)
                log.info("removed %s, left behind by an engine outage",
                         handle.name if handle is not None else f"network {network}")
            except EngineUnreachable:
                failed.append((handle, network))
            except Exception:  # the engine answered, with an error: nothing more to retry
                log.exception("removing %s failed", handle.name if handle is not None else f"network {network}")
        if failed:
            with self._lock:
                self._pending[:0] = failed

    def close(self) -> None:
        self._stop.set()

    def _retry_loop(self) -> None:
        while not self._stop.wait(self.retry_s):
            self.sweep()  # raises nothing: each removal's failure is logged there
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return

    def _remove(self, handle: Any | None, network: str | None) -> None:
        try:
            if handle is not None:
                try:
                    # kill first: a forced remove alone waits out podman's stop sequence (2-4 s here).
                    handle.kill()
                except (APIError, NotFound):
                    pass  # already stopped, or gone
                try:
                    handle.remove(force=True)
                except NotFound:
                    pass
                except APIError as error:
                    log.warning("removing container %s failed: %s", handle.id[:12], error)
            if self.networks is not None and network is not None:
                self.networks.detach(network)
        except APIError:
            raise  # the engine answered: handled above, never "unreachable"
        except (DockerException, OSError) as error:  # requests' ConnectionError is an OSError
            raise EngineUnreachable(str(error)) from error


class DockerContainer(Container):
    def __init__(self, handle: Any, spec: ContainerSpec, host: str, port: int, secret: str | None,
                 sweeper: Sweeper, network: str | None = None) -> None:
        super().__init__(handle.id[:12], spec, host, port, secret)
        self.handle = handle
        self._sweeper = sweeper
        self._network = network  # a network of its own goes with it
        self._gone = threading.Event()
        self._followers = [
            threading.Thread(target=self._follow, args=(name,), daemon=True, name=f"logs-{self.id}-{name}")
            for name in ("stdout", "stderr")
        ]
        for follower in self._followers:
            follower.start()

    def _follow(self, stream: str) -> None:
        try:
            lines = self.handle.logs(stream=True, follow=True, timestamps=True,
                                     stdout=stream == "stdout", stderr=stream == "stderr")
            # Each frame is one log entry, "TIMESTAMP text": a whole line, or (podman, and
            # Docker past 16 KiB) a partial one without its newline, continued by the next
            # frames. A line keeps the timestamp of its first fragment.
            pending, line_timestamp = b"", ""
            for frame in lines:
                timestamp, _, text = frame.partition(b" ")
                if not pending:
                    line_timestamp = timestamp.decode("ascii", errors="replace")
                pending += text
                while b"\n" in pending:
                    raw, pending = pending.split(b"\n", 1)
                    self.logs.append(stream, raw.decode("utf-8", errors="replace"), line_timestamp)
                while len(pending) > MAX_LINE_BYTES:  # a line never ending stays bounded
                    raw, pending = pending[:MAX_LINE_BYTES], pending[MAX_LINE_BYTES:]
                    self.logs.append(stream, raw.decode("utf-8", errors="replace"), line_timestamp)
        except (DockerException, OSError) as error:
            log.debug("log stream %s of %s ended: %s", stream, self.id, error)
        finally:
            if stream == "stdout":
                # The follow stream ends when the container stops: the cheapest liveness signal.
                self._gone.set()
                self.logs.close()

    def suspend(self) -> None:
        try:
            self.client.close()  # the Scala invoker drops its connections before pausing too
            self.handle.pause()
        except (APIError, NotFound) as error:
            raise ContainerError(f"pause failed: {error}") from error

    def resume(self) -> None:
        try:
            self.handle.unpause()
        except (APIError, NotFound) as error:
            raise ContainerError(f"resume failed: {error}") from error

    def is_alive(self) -> bool:
        return not self._gone.is_set()

    def was_oom_killed(self) -> bool:
        try:
            self.handle.reload()
        except (APIError, NotFound):
            return False
        return bool(self.handle.attrs.get("State", {}).get("OOMKilled"))

    def destroy(self) -> None:
        self.client.close()
        try:
            network, self._network = self._network, None
            self._sweeper.remove(self.handle, network)
        finally:
            self._gone.set()
            self.logs.close()


class DockerContainerFactory(ContainerFactory):
    name = "docker"
    chooses_user = True

    def __init__(
        self,
        name_prefix: str,
        api_host: str = "",
        network: str | None = None,
        client: docker.DockerClient | None = None,
        extra_env: dict[str, str] | None = None,
        publish_host: str = "127.0.0.1",
        ulimits: dict[str, tuple[int, int]] | None = None,
        pids_limit: int = 1024,
        tmpfs_mb: int = 256,
        log_max_mb: int = 10,
        storage_mb: int | None = None,
    ) -> None:
        self.name_prefix = name_prefix
        self.api_host = api_host
        self.network = network
        self.extra_env = extra_env or {}
        self.publish_host = publish_host
        # Empty by default: some hosts (nested containers) refuse any rlimit; pids_limit
        # (a cgroup, not an rlimit) is what stops a fork bomb.
        self.ulimits = [Ulimit(name=n, soft=s, hard=h) for n, (s, h) in (ulimits or {}).items()]
        self.pids_limit = pids_limit
        self.tmpfs_mb = tmpfs_mb  # most for each of /tmp and /action (tmpfs_size_mb); the archive cap too
        self.log_max_mb = log_max_mb  # per log file, two files kept
        self.storage_mb = storage_mb  # writable-layer quota: Docker overlay2 on xfs with pquota only
        self._images: dict[str, tuple[bool, float]] = {}  # image -> (present, when checked)
        self._images_lock = threading.Lock()
        try:
            self.client = client or docker.from_env()
        except DockerException as error:
            raise ContainerError(f"no Docker API reachable (set DOCKER_HOST): {error}") from error
        self.podman = engine_is_podman(self.client)
        # An operator-chosen network is used as it is; otherwise one that isolates containers.
        self.networks = None if network else ActionNetworks(
            self.client, name_prefix, "per-container" if self.podman else "no-icc")
        self.sweeper = Sweeper(self.networks)

    def create(self, spec: ContainerSpec) -> Container:
        if spec.gpu is not None:
            # GPU memory is free only once the container is gone (host memory the pool counts
            # free at once, as the Scala pool does): what an outage left goes first.
            self.sweeper.sweep()
        secret = secrets.token_urlsafe(32)
        handle, network = None, None
        try:
            if self.networks is not None:
                network = self.networks.attach(spec.name)
            kwargs = self.container_config(spec, secret, network)
            handle = self.client.containers.create(**kwargs)
            handle.start()
            handle.reload()
            host, port = self._address(handle)
        except NetworkError as error:
            raise ContainerStartError(str(error)) from error
        except ImageNotFound as error:
            self.sweeper.remove(None, network)
            raise ContainerStartError(f"image {spec.image} is not on this node: {error}") from error
        except (DockerException, OSError, KeyError, TypeError) as error:  # OSError: the engine went away
            self.sweeper.remove(handle, network)  # created but not started: leave nothing behind
            raise ContainerStartError(f"docker run {spec.image} failed: {error}") from error
        return DockerContainer(handle, spec, host, port, secret, self.sweeper, network)

    def tmpfs_size_mb(self, memory_mb: int) -> int:
        """Size of each tmpfs of a container with ``memory_mb``. tmpfs pages count against the
        container's memory limit: at half of it, a full tmpfs is ENOSPC, not an OOM kill."""
        return max(1, min(self.tmpfs_mb, memory_mb // 2))

    def container_config(self, spec: ContainerSpec, secret: str | None = None,
                         network: str | None = None) -> dict[str, Any]:
        """The ``containers.create`` arguments for ``spec``: limits, privileges, labels,
        network, and for a GPU container its device request and MPS mounts. ``secret``: the
        caller secret the runtime will ask for; ``network``: the isolating network."""
        tmpfs_mb = self.tmpfs_size_mb(spec.memory_mb)
        environment = {"__OW_API_HOST": self.api_host, **self.extra_env, **spec.env,
                       MAX_BYTES_ENV: str(tmpfs_mb * 1024 * 1024)}  # a zip fails clearly before the disk does
        if secret is not None:
            environment[SECRET_ENV] = secret
        # podman copies the image's directory into a tmpfs and keeps its owner: ``U`` gives it
        # to the container's user instead (Docker knows no ``U``; mode 1777 does it there).
        tmpfs = f"rw,nosuid,nodev,size={tmpfs_mb}m" + (",U" if self.podman else ",mode=1777")
        kwargs: dict[str, Any] = dict(
            image=spec.image,
            name=spec.name,
            environment=environment,
            labels={**{k: v for k, v in spec.labels.items() if k != "action"},
                    LABEL_INVOKER: self.name_prefix, LABEL_ACTION: spec.labels.get("action", ""),
                    LABEL_KIND: spec.kind},
            mem_limit=f"{spec.memory_mb}m",
            memswap_limit=f"{spec.memory_mb}m",
            cpu_shares=spec.cpu_shares,
            cap_drop=["ALL"],  # the runtime needs none: it listens on 8080 as an unprivileged user
            security_opt=["no-new-privileges"],
            pids_limit=self.pids_limit,
            read_only=True,
            tmpfs={"/tmp": tmpfs, "/action": tmpfs},
            log_config={"type": "json-file", "config": {"max-size": f"{self.log_max_mb}m", "max-file": "2"}},
        )
        if self.storage_mb:
            kwargs["storage_opt"] = {"size": f"{self.storage_mb}m"}
        if spec.user is not None:
            kwargs["user"] = spec.user
        if self.ulimits:
            kwargs["ulimits"] = self.ulimits
        if self.network:
            kwargs["network"] = self.network
        else:
            if network:
                kwargs["network"] = network
            kwargs["ports"] = {RUNTIME_PORT: (self.publish_host, None)}
        if spec.gpu is not None:
            kwargs["device_requests"] = [DeviceRequest(device_ids=[spec.gpu], capabilities=[["gpu"]])]
            if spec.gpu.startswith(("GPU-", "MIG-")):
                # The MPS documentation has clients name their GPU by UUID on multi-GPU nodes (the
                # process backend does too); an index would not do: inside the container the
                # GPU is 0. Only a multi-GPU node shows the effect; here the request is checked.
                environment["CUDA_VISIBLE_DEVICES"] = spec.gpu
        if spec.mounts:
            # MPS clients reach the host's control daemon through its pipe directory and
            # shared memory (NVIDIA's Multi-Process Service documentation): bind the directories, share the host IPC namespace.
            # Read-only: a client opens the daemon's FIFOs and sockets (allowed on a read-only
            # mount) but cannot delete or replace them (invoker/gpu/README.md, "Isolation").
            kwargs["volumes"] = {path: {"bind": path, "mode": "ro"} for path in spec.mounts}
            kwargs["ipc_mode"] = "host"
        return kwargs

    def has_image(self, image: str) -> bool:
        """Whether ``image`` is on this node. Images are not pulled: runtime images are built
        or loaded by the deployment (ansible/), as OpenWhisk's do. A missing image is looked
        for again after a while, so loading it later needs no restart."""
        now = time.monotonic()
        with self._images_lock:
            known = self._images.get(image)
            if known is not None and (known[0] or now - known[1] < IMAGE_RECHECK_S):
                return known[0]
        try:
            self.client.images.get(image)
            present = True
        except ImageNotFound:
            present = False
        except (APIError, DockerException) as error:
            log.warning("cannot inspect image %s: %s", image, error)
            return False
        with self._images_lock:
            if not present and image not in self._images:
                log.warning("image %s is not on this node: its kind cannot run here "
                            "(runtimes/build.sh builds the project's images)", image)
            self._images[image] = (present, now)
        return present

    def _address(self, handle: Any) -> tuple[str, int]:
        settings = handle.attrs["NetworkSettings"]
        if self.network:
            return settings["Networks"][self.network]["IPAddress"], 8080
        binding = settings["Ports"][RUNTIME_PORT][0]
        return binding.get("HostIp") or self.publish_host, int(binding["HostPort"])

    def cleanup(self) -> None:
        """Remove what a previous run of this invoker left (found by label)."""
        try:
            leftovers = self.client.containers.list(all=True, filters={"label": f"{LABEL_INVOKER}={self.name_prefix}"})
        except (APIError, DockerException) as error:
            log.warning("cannot list leftover containers: %s", error)
            return
        for handle in leftovers:
            try:
                handle.remove(force=True)
                log.info("removed leftover container %s", handle.name)
            except (APIError, NotFound):
                pass
        if self.networks is not None:
            self.networks.cleanup()

    def close(self) -> None:
        self.sweeper.close()
        self.sweeper.sweep()
        self.cleanup()
        self.client.close()
