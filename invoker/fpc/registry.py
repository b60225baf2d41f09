"""What the invoker advertises in etcd, all of it bound to its lease.

``LeaseBoundKeys`` is the set of keys the invoker wants in etcd. It is the ``LeaseListener``
of the ``LeaseKeeper``: under a new lease it writes every key again (after etcd lost them);
a write or delete that failed while etcd was away is retried at each renewal. Callers never
see etcd's errors: what they ask for is recorded and becomes true once etcd answers.

``InvokerRegistration`` names those keys for one invoker: its ``InvokerResourceMessage`` under
``whisk/invokers/...``, and the ``whisk/namespace/...`` and ``whisk/warmed/...`` keys of its
containers (FunctionPullingContainerProxy writes both with the value "").
"""

from __future__ import annotations

import logging
import threading

from invoker.fpc.etcd import EtcdClient, EtcdError
from invoker.fpc.keys import EtcdKeys
from invoker.fpc.messages import InvokerResourceMessage, SchedulerEndpoints
from invoker.messages import FullyQualifiedEntityName, InvokerInstanceId, MessageError

log = logging.getLogger(__name__)


class LeaseBoundKeys:
    """Desired keys and values; etcd is brought to them under the current lease."""

    def __init__(self, client: EtcdClient) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._wanted: dict[str, str] = {}
        self._unwritten: set[str] = set()  # wanted, not yet written under the current lease
        self._undeleted: set[str] = set()  # removed here, maybe still in etcd
        self._lease_id: int | None = None
        self._etcd_away = False  # the last write failed: callers leave retries to the keeper

    # ---- what the invoker asks for

    def put(self, key: str, value: str) -> None:
        """Have ``key`` = ``value`` in etcd under the lease (now, or once etcd answers)."""
        with self._lock:
            if self._wanted.get(key) == value and key not in self._unwritten:
                return  # the memory sync writes every second: only changes go to etcd
            self._wanted[key] = value
            self._undeleted.discard(key)
            self._unwritten.add(key)
            self._sync_locked()

    def remove(self, key: str) -> None:
        """Have ``key`` gone from etcd (now, or once etcd answers; at worst with the lease)."""
        with self._lock:
            if self._wanted.pop(key, None) is None and key not in self._undeleted:
                return
            self._unwritten.discard(key)
            self._undeleted.add(key)
            self._sync_locked()

    def wanted(self) -> dict[str, str]:
        with self._lock:
            return dict(self._wanted)

    @property
    def pending(self) -> int:
        """Writes and deletes not yet done in etcd."""
        with self._lock:
            return len(self._unwritten) + len(self._undeleted)

    # ---- LeaseListener

    def lease_granted(self, lease_id: int) -> None:
        with self._lock:
            self._lease_id = lease_id
            # A new lease: etcd has none of our keys any more (they went with the old lease).
            self._unwritten = set(self._wanted)
            self._undeleted.clear()
            self._sync_locked(raise_errors=True)
            log.info("wrote %d keys under etcd lease %x", len(self._wanted), lease_id)

    def lease_renewed(self, lease_id: int) -> None:
        with self._lock:
            if self._unwritten or self._undeleted:
                self._sync_locked(raise_errors=True)

    def lease_lost(self, lease_id: int) -> None:
        with self._lock:
            self._lease_id = None

    # ---- etcd

    def _sync_locked(self, raise_errors: bool = False) -> None:
        """Do the pending writes and deletes. A failure leaves them pending. On the keeper's
        thread (``raise_errors``) it is raised for the keeper; a caller's write never raises,
        and while etcd is known to be away it does not even wait for etcd's timeout."""
        if self._lease_id is None:
            return  # written by lease_granted
        if self._etcd_away and not raise_errors:
            return  # the keeper's next renewal retries
        try:
            for key in sorted(self._undeleted):
                self.client.delete(key)
                self._undeleted.discard(key)
            for key in sorted(self._unwritten):
                self.client.put(key, self._wanted[key], self._lease_id)
                self._unwritten.discard(key)
        except EtcdError as error:
            # LeaseNotFound included: the keeper sees it too, grants a new lease and calls
            # lease_granted, which writes everything again.
            self._etcd_away = True
            if raise_errors:
                raise
            log.warning("etcd write deferred (%d pending): %s", len(self._unwritten) + len(self._undeleted), error)
        else:
            self._etcd_away = False


class InvokerRegistration:
    """One invoker's keys in etcd, through a ``LeaseBoundKeys``."""

    def __init__(self, keys: LeaseBoundKeys, invoker: InvokerInstanceId, names: EtcdKeys | None = None) -> None:
        self.keys = keys
        self.invoker = invoker
        self.names = names or EtcdKeys()

    @property
    def health_key(self) -> str:
        return self.names.invoker_health(self.invoker)

    @property
    def lease_key(self) -> str:
        return self.names.instance_lease(self.invoker)

    def publish(self, resources: InvokerResourceMessage) -> None:
        """The invoker's status and memory, as the scheduler reads them (InvokerHealthManager)."""
        self.keys.put(self.health_key, resources.serialize())

    def container_ready(self, invocation_namespace: str, fqn: FullyQualifiedEntityName,
                        revision: str, container_id: str) -> None:
        """A container initialised for (or resumed with) the action: counted by the scheduler."""
        self.keys.put(self._existing(invocation_namespace, fqn, revision, container_id), "")

    def container_paused(self, invocation_namespace: str, fqn: FullyQualifiedEntityName,
                         revision: str, container_id: str) -> None:
        """Paused: a warm container, no longer an existing one (the queue may time out)."""
        self.keys.put(self._warmed(invocation_namespace, fqn, revision, container_id), "")
        self.keys.remove(self._existing(invocation_namespace, fqn, revision, container_id))

    def container_resumed(self, invocation_namespace: str, fqn: FullyQualifiedEntityName,
                          revision: str, container_id: str) -> None:
        self.keys.remove(self._warmed(invocation_namespace, fqn, revision, container_id))
        self.keys.put(self._existing(invocation_namespace, fqn, revision, container_id), "")

    def container_removed(self, invocation_namespace: str, fqn: FullyQualifiedEntityName,
                          revision: str, container_id: str) -> None:
        self.keys.remove(self._existing(invocation_namespace, fqn, revision, container_id))
        self.keys.remove(self._warmed(invocation_namespace, fqn, revision, container_id))

    def _existing(self, ns: str, fqn: FullyQualifiedEntityName, revision: str, cid: str) -> str:
        return self.names.existing_container(ns, fqn, revision, self.invoker.instance, cid)

    def _warmed(self, ns: str, fqn: FullyQualifiedEntityName, revision: str, cid: str) -> str:
        return self.names.warmed_container(ns, fqn, revision, self.invoker.instance, cid)


def read_queue_leader(client: EtcdClient, invocation_namespace: str, fqn: FullyQualifiedEntityName,
                      names: EtcdKeys | None = None) -> SchedulerEndpoints | None:
    """The scheduler that holds the action's queue now, or None when no queue has a leader
    (or its value cannot be read). Raises ``EtcdError`` when etcd does not answer."""
    value = client.get((names or EtcdKeys()).queue_leader(invocation_namespace, fqn))
    if value is None:
        return None
    try:
        return SchedulerEndpoints.parse(value)
    except MessageError as error:
        log.warning("unreadable queue leader for %s/%s: %s", invocation_namespace, fqn.docid, error)
        return None
