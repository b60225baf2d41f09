"""Networks that keep action containers from reaching each other (tenant isolation).

An action container reaches no other action container; the invoker reaches each one on the
port published on the host's loopback address. How depends on the engine:

* **Docker**: one network of the invoker's own with inter-container traffic off
  (``com.docker.network.bridge.enable_icc=false``: Docker drops bridge-to-bridge traffic).
* **podman** (4.x, CNI or netavark) has no such option: it ignores ``enable_icc`` with a
  warning. Each container gets a network of its own, created with ``isolate=true``, which
  drops traffic between isolated networks; it is removed with the container (~50 ms each).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from docker.errors import APIError, DockerException, NotFound

from invoker.errors import NetworkError

log = logging.getLogger(__name__)

LABEL_NETWORK = "org.openwhisk.invoker.network"
Mode = Literal["no-icc", "per-container"]


def engine_is_podman(client: Any) -> bool:
    try:
        components = client.version().get("Components") or []
    except (APIError, DockerException):
        return False
    return any("podman" in str(c.get("Name", "")).lower() for c in components)


class ActionNetworks:
    """Where each action container of one invoker is attached."""

    def __init__(self, client: Any, owner: str, mode: Mode) -> None:
        self.client = client
        self.owner = owner
        self.mode = mode
        self.shared = f"{owner}-actions"
        self._shared_ready = False

    def attach(self, container_name: str) -> str:
        """The network to create ``container_name`` on (made now if needed)."""
        if self.mode == "per-container":
            self._create(container_name, {"isolate": "true"})
            return container_name
        if not self._shared_ready:
            self._ensure_shared()
        return self.shared

    def detach(self, network: str) -> None:
        """After the container on it is removed: a network of its own goes too."""
        if self.mode != "per-container":
            return
        try:
            self.client.networks.get(network).remove()
        except NotFound:
            pass
        except (APIError, DockerException) as error:
            log.warning("removing network %s failed: %s", network, error)

    def cleanup(self) -> None:
        """Remove the per-container networks a previous run left (found by label)."""
        try:
            leftovers = self.client.networks.list(filters={"label": f"{LABEL_NETWORK}={self.owner}"})
        except (APIError, DockerException) as error:
            log.warning("cannot list leftover networks: %s", error)
            return
        for network in leftovers:
            if network.name == self.shared:
                continue
            try:
                network.remove()
            except (APIError, DockerException):
                pass  # still in use by a container being removed

    def _create(self, name: str, options: dict[str, str]) -> None:
        try:
            self.client.networks.create(name, driver="bridge", options=options,
                                        labels={LABEL_NETWORK: self.owner}, check_duplicate=True)
        except (APIError, DockerException) as error:
            raise NetworkError(f"cannot create network {name}: {error}") from error

    def _ensure_shared(self) -> None:
        try:
            network = self.client.networks.get(self.shared)
        except NotFound:
            self._create(self.shared, {"com.docker.network.bridge.enable_icc": "false"})
        except (APIError, DockerException) as error:
            raise NetworkError(f"cannot inspect network {self.shared}: {error}") from error
        else:
            icc = network.attrs.get("Options", {}).get("com.docker.network.bridge.enable_icc")
            if icc != "false":
                raise NetworkError(f"network {self.shared} exists with inter-container traffic on: "
                                   f"remove it, the invoker creates it with enable_icc=false")
        self._shared_ready = True
