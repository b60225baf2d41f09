"""Docker backend: action containers through the Docker Engine API (docker SDK).

It works against Docker and against podman's Docker-compatible API. Containers
get the action's memory limit and CPU share, no privileges, no Docker socket,
labels naming the invoker and the action, and the runtime's port published on
127.0.0.1 only (or the container network's address when one is configured).
Logs are read from the container's log stream, one follower per stream.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest, Ulimit

from invoker.containerpool.container import (
    Container,
    ContainerError,
    ContainerFactory,
    ContainerSpec,
    ContainerStartError,
)

log = logging.getLogger(__name__)

RUNTIME_PORT = "8080/tcp"
LABEL_INVOKER = "org.openwhisk.invoker"
LABEL_ACTION = "org.openwhisk.action"
LABEL_KIND = "org.openwhisk.kind"


class DockerContainer(Container):
    def __init__(self, handle: Any, spec: ContainerSpec, host: str, port: int) -> None:
        super().__init__(handle.id[:12], spec, host, port)
        self.handle = handle
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
            pending = b""
            for chunk in lines:
                pending += chunk
                while b"\n" in pending:
                    raw, pending = pending.split(b"\n", 1)
                    timestamp, _, text = raw.decode("utf-8", errors="replace").partition(" ")
                    self.logs.append(stream, text, timestamp)
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
            self.handle.remove(force=True)
        except NotFound:
            pass
        except APIError as error:
            log.warning("removing container %s failed: %s", self.id, error)
        self._gone.set()
        self.logs.close()


class DockerContainerFactory(ContainerFactory):
    name = "docker"

    def __init__(
        self,
        name_prefix: str,
        api_host: str = "",
        network: str | None = None,
        client: docker.DockerClient | None = None,
        extra_env: dict[str, str] | None = None,
        publish_host: str = "127.0.0.1",
    ) -> None:
        self.name_prefix = name_prefix
        self.api_host = api_host
        self.network = network
        self.extra_env = extra_env or {}
        self.publish_host = publish_host
        try:
            self.client = client or docker.from_env()
        except DockerException as error:
            raise ContainerError(f"no Docker API reachable (set DOCKER_HOST): {error}") from error

    def create(self, spec: ContainerSpec) -> Container:
        environment = {"__OW_API_HOST": self.api_host, **self.extra_env, **spec.env}
        kwargs: dict[str, Any] = dict(
            image=spec.image,
            name=spec.name,
            detach=True,
            environment=environment,
            labels={LABEL_INVOKER: self.name_prefix, LABEL_ACTION: spec.labels.get("action", ""),
                    LABEL_KIND: spec.kind, **spec.labels},
            mem_limit=f"{spec.memory_mb}m",
            memswap_limit=f"{spec.memory_mb}m",
            cpu_shares=spec.cpu_shares,
            cap_drop=["NET_RAW", "NET_ADMIN"],
            security_opt=["no-new-privileges"],
            ulimits=[Ulimit(name="nofile", soft=1024, hard=1024)],
            pids_limit=1024,
            log_config={"type": "json-file"},
        )
        if self.network:
            kwargs["network"] = self.network
        else:
            kwargs["ports"] = {RUNTIME_PORT: (self.publish_host, None)}
        if spec.gpu is not None:
            kwargs["device_requests"] = [DeviceRequest(device_ids=[spec.gpu], capabilities=[["gpu"]])]
        if spec.mounts:
            # MPS clients reach the host's control daemon through its pipe directory and
            # shared memory (gpu-facts §4): bind the directories, share the host IPC namespace.
            kwargs["volumes"] = {path: {"bind": path, "mode": "rw"} for path in spec.mounts}
            kwargs["ipc_mode"] = "host"
        try:
            handle = self.client.containers.run(**kwargs)
            handle.reload()
            host, port = self._address(handle)
        except ImageNotFound as error:
            raise ContainerStartError(f"image {spec.image} is not on this node: {error}") from error
        except (APIError, DockerException, KeyError, TypeError) as error:
            raise ContainerStartError(f"docker run {spec.image} failed: {error}") from error
        return DockerContainer(handle, spec, host, port)

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

    def close(self) -> None:
        self.cleanup()
        self.client.close()
