"""The container backends, by name: what ``--backend`` chooses (OpenWhisk's
``ContainerFactoryProvider`` SPI, ``whisk.spi.ContainerFactoryProvider``, in one table).

A new backend is one entry here and one module with its ``ContainerFactory``; what it can
do (``runtime_families``, ``prewarms_stem_cells``, ``chooses_user``) is said by its factory
class, and nothing else in the invoker switches on a backend's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from invoker.containerpool.container import ContainerFactory


@dataclass(frozen=True)
class BackendOptions:
    """What a backend is built from (the invoker's configuration, backend by backend)."""

    owner: str  # the prefix of this invoker's containers (``wsk{unique}{N}``)
    api_host: str
    docker_network: str | None = None
    docker_publish_host: str = "127.0.0.1"
    docker_ulimits: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    docker_tmpfs_mb: int | None = None
    docker_log_max_mb: int | None = None
    docker_storage_mb: int | None = None


def _process(options: BackendOptions) -> ContainerFactory:
    from invoker.containerpool.process import ProcessContainerFactory, start_process_backend

    start_process_backend()
    return ProcessContainerFactory(api_host=options.api_host, extra_env={"__OW_INVOKER": options.owner})


def _docker(options: BackendOptions) -> ContainerFactory:
    from invoker.containerpool.docker import DockerContainerFactory  # needs the docker SDK

    return DockerContainerFactory(
        name_prefix=options.owner, api_host=options.api_host, network=options.docker_network,
        publish_host=options.docker_publish_host, ulimits=dict(options.docker_ulimits),
        tmpfs_mb=options.docker_tmpfs_mb, log_max_mb=options.docker_log_max_mb,
        storage_mb=options.docker_storage_mb,
    )


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str  # for --help
    create: Callable[[BackendOptions], ContainerFactory]


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("process", "runtimes as child processes of the invoker, no isolation: one machine, one tenant",
            _process),
    Backend("docker", "containers through the Docker API: Docker or podman", _docker),
)}
