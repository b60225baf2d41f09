"""How containers share one GPU: one ``DeviceSharing`` per device, keyed by the device's key.

A sharing mode says what a container placed on the device is given (environment, host
directories, the user it runs as), how many containers the device takes (client slots), and
whether it takes new work now. Two modes today: ``MpsSharing`` (NVIDIA MPS: an SM share and a
device memory limit per container, a bounded number of clients, nothing admitted while the
daemon is down) and ``TimeSlicing`` (the driver's default: nothing given, no limit). Another
mode, a MIG slice for one, is one more class here and its choice in ``GpuLayer``.
"""

from __future__ import annotations

from collections.abc import Callable

from invoker.gpu.mps import MpsDaemon, client_env


class DeviceSharing:
    """Time-slicing: what every mode gives unless it says otherwise."""

    mode = "time-slicing"

    def container_env(self, memory_mb: int, sm_percent: int) -> dict[str, str]:
        """Environment of a container on the device, created with these limits."""
        return {}

    def mounts(self) -> tuple[str, ...]:
        """Host directories a container on the device needs at the same path."""
        return ()

    def user(self) -> str | None:
        """``uid:gid`` a container on the device must run as; None: as its image or backend says."""
        return None

    def client_limit(self) -> int | None:
        """Most containers on the device at once; None: no limit."""
        return None

    def admitting(self) -> bool:
        """Whether the device takes new GPU work now."""
        return True


class TimeSlicing(DeviceSharing):
    pass


class MpsSharing(DeviceSharing):
    """A device shared through one MPS control daemon: every container is one of its clients,
    created with its SM share and memory limit (read when its CUDA context is created, so they
    cannot change for a running container)."""

    mode = "mps"

    def __init__(self, daemon: MpsDaemon, max_clients: int, client_uid: int | None,
                 daemon_up: Callable[[], bool]) -> None:
        self.daemon = daemon
        self.max_clients = max_clients
        self.client_uid = client_uid
        self._daemon_up = daemon_up  # a client that finds no daemon runs without limits: admit none

    def container_env(self, memory_mb: int, sm_percent: int) -> dict[str, str]:
        return client_env(self.daemon, memory_mb, sm_percent)

    def mounts(self) -> tuple[str, ...]:
        return (str(self.daemon.pipe_dir), str(self.daemon.log_dir))

    def user(self) -> str | None:
        return None if self.client_uid is None else f"{self.client_uid}:{self.client_uid}"

    def client_limit(self) -> int | None:
        return self.max_clients

    def admitting(self) -> bool:
        return self._daemon_up()
