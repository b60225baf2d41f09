"""etcd key names of the FPC protocol, as OpenWhisk's ``EtcdKV`` (C/etcd/EtcdUtils.scala) builds them.

Every key starts with the cluster name (``whisk.cluster.name``, ``whisk`` by default). Action
names in keys never carry the version (``fqn.copy(version = None)``): ``ns[/pkg]/action``.
"""

from __future__ import annotations

from dataclasses import dataclass

from invoker.messages import FullyQualifiedEntityName, InvokerInstanceId

DEFAULT_CLUSTER = "whisk"


def _action(fqn: FullyQualifiedEntityName) -> str:
    return f"{fqn.path}/{fqn.name}"


@dataclass(frozen=True)
class EtcdKeys:
    """The key builders for one cluster name."""

    cluster: str = DEFAULT_CLUSTER

    # ---- the invoker itself

    def instance_lease(self, invoker: InvokerInstanceId) -> str:
        """``{cluster}/instance/invoker{N}[/{unique}[/{display}]]/lease``: holds the lease id."""
        return f"{self.cluster}/instance/{self._instance_name(invoker)}/lease"

    def invoker_health(self, invoker: InvokerInstanceId) -> str:
        """``{cluster}/invokers/{N}[/{unique}[/{display}]]``: the ``InvokerResourceMessage``.

        A displayed name without a unique name is left out, as in ``InvokerKeys.health``:
        the scheduler could not tell it from a unique name when it splits the key.
        """
        key = f"{self.cluster}/invokers/{invoker.instance}"
        if invoker.unique_name is not None:
            key += f"/{invoker.unique_name}"
            if invoker.displayed_name is not None:
                key += f"/{invoker.displayed_name}"
        return key

    @property
    def invokers_prefix(self) -> str:
        return f"{self.cluster}/invokers/"

    @staticmethod
    def _instance_name(invoker: InvokerInstanceId) -> str:
        # InvokerInstanceId.toString: "invoker{N}" then unique and displayed names, "/"-joined.
        parts = [f"invoker{invoker.instance}"]
        parts += [name for name in (invoker.unique_name, invoker.displayed_name) if name is not None]
        return "/".join(parts)

    # ---- per container (ContainerKeys)

    def existing_container(self, invocation_namespace: str, fqn: FullyQualifiedEntityName,
                           revision: str, invoker: int, container_id: str) -> str:
        """``{cluster}/namespace/{invNs}/{ns/[pkg/]action}/{rev}/invoker{N}/container/{cid}``:
        a container of this invoker for that action revision, from init until removal or pause."""
        return (f"{self.existing_containers_prefix(invocation_namespace, fqn, revision)}"
                f"invoker{invoker}/container/{container_id}")

    def existing_containers_prefix(self, invocation_namespace: str, fqn: FullyQualifiedEntityName,
                                   revision: str | None = None) -> str:
        return self._container_prefix("namespace", invocation_namespace, fqn, revision)

    def warmed_container(self, invocation_namespace: str, fqn: FullyQualifiedEntityName,
                         revision: str, invoker: int, container_id: str) -> str:
        """``{cluster}/warmed/{invNs}/{ns/[pkg/]action}/{rev}/invoker/{N}/container/{cid}``:
        a paused (warm) container. Note ``invoker/{N}`` here against ``invoker{N}`` above."""
        return (f"{self._container_prefix('warmed', invocation_namespace, fqn, revision)}"
                f"invoker/{invoker}/container/{container_id}")

    def _container_prefix(self, kind: str, invocation_namespace: str, fqn: FullyQualifiedEntityName,
                          revision: str | None) -> str:
        rev = f"{revision}/" if revision is not None else ""
        return f"{self.cluster}/{kind}/{invocation_namespace}/{_action(fqn)}/{rev}"

    # ---- what the invoker reads

    def queue_leader(self, invocation_namespace: str, fqn: FullyQualifiedEntityName) -> str:
        """``{cluster}/queue/{invNs}/{ns/[pkg/]action}/leader``: the ``SchedulerEndpoints`` of
        the scheduler that holds the action's queue."""
        return f"{self.cluster}/queue/{invocation_namespace}/{_action(fqn)}/leader"

    @property
    def scheduler_prefix(self) -> str:
        return f"{self.cluster}/scheduler"
