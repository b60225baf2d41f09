"""OpenWhisk 2.0's protocol (``FPCInvokerReactive``): the FPC scheduler creates and deletes
containers over Kafka, and the containers pull their activations from it over gRPC.

* etcd: a lease (``LeaseKeeper``) and, bound to it, the invoker's ``InvokerResourceMessage``
  (published every second: status, free/busy/in-progress memory, tags) and one key per container.
* ``invoker{N}``: ``ContainerCreationMessage`` → the action fetched, ``ContainerPool.create``
  (admission, start, ``/init``), the container's key written, a ``ContainerCreationAckMessage``
  to ``creationAck{sid}`` (with OpenWhisk's error name when it failed), then its pull loops
  (``fpc_container``). ``ContainerDeletionMessage`` → its containers stopped and removed.
  The scheduler's warm-up creation is dropped, as OpenWhisk's invoker drops it.
* Activations end as under the classic protocol: acks to ``completed{C}`` and the record.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from invoker.containerpool.activation import InitContext
from invoker.containerpool.creation import InitFailed, LimitsRefused, NoRoom
from invoker.entities import WhiskAction, stringify_env_value
from invoker.errors import ContainerStartError, MessageError, StoreError
from invoker.fpc.etcd import EtcdClient
from invoker.fpc.keys import EtcdKeys
from invoker.fpc.lease import LeaseConfig, LeaseKeeper
from invoker.fpc.messages import (
    ContainerCreationAckMessage,
    ContainerCreationError,
    ContainerCreationMessage,
    ContainerDeletionMessage,
    InvokerResourceMessage,
    InvokerStatus,
    SchedulerEndpoints,
    parse_container_message,
)
from invoker.fpc.registry import InvokerRegistration, LeaseBoundKeys, read_queue_leader
from invoker.frontends.actions import NotExecutable, load_action
from invoker.frontends.base import FPC, InvokerParts
from invoker.frontends.completions import Completions
from invoker.frontends.fpc_container import ContainerTarget, PullingContainer, PullSettings
from invoker.messages import FullyQualifiedEntityName
from invoker.messaging import INVOKER_TOPIC_CONFIG, ActivationFeed, FeedRecord, ensure_topic
from invoker.supervision import SupervisedThread, submit_logged

log = logging.getLogger(__name__)

ACK_SEND_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class FpcSettings:
    etcd_hosts: str = "127.0.0.1:2379"
    cluster_name: str = "whisk"
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    publish_interval_s: float = 1.0  # InvokerHealthManager syncs memory every second
    pull: PullSettings = field(default_factory=PullSettings)
    max_creations: int = 16  # creations handled at once (each starts and initialises a container)
    ready_timeout_s: float = 10.0  # the first lease within this, or start fails
    # GPU invokers: the smallest GPU request a creation may bring; no GPU admitting it: freeMemory 0.
    # None: the smallest action memory (whisk.memory.min), an action's default GPU request.
    min_gpu_request_mb: int | None = None


class FpcFrontEnd:
    name = FPC

    def __init__(self, parts: InvokerParts, settings: FpcSettings | None = None) -> None:
        self.parts = parts
        self.settings = settings = settings or FpcSettings()
        self.enabled = True
        self.etcd = EtcdClient.from_hosts(settings.etcd_hosts)
        self.names = EtcdKeys(settings.cluster_name)
        self.keys = LeaseBoundKeys(self.etcd)
        self.registration = InvokerRegistration(self.keys, parts.instance, self.names)
        self.lease = LeaseKeeper(self.etcd, self.registration.lease_key, self.keys, parts.fatal("etcd lease"),
                                 settings.lease)
        self.completions = Completions(parts.instance, parts.producer, parts.activations, parts.kafka.topic_prefix,
                                       parts.store_policy, parts.ack_policy)
        self.topic = parts.kafka.topic(f"invoker{parts.instance.instance}")
        self.feed = ActivationFeed(parts.kafka, self.topic, settings.max_creations, self._handle,
                                   on_fatal=parts.fatal("container message feed"))
        self._creations = ThreadPoolExecutor(max_workers=settings.max_creations, thread_name_prefix="fpc-create")
        self._lock = threading.Lock()
        self._containers: set[PullingContainer] = set()
        self._creating_mb = 0  # memory of containers being created (inProgressMemory)
        # Creations under way per action revision, and those a deletion arrived for meanwhile:
        # the container they make is removed once made, never advertised nor pulling.
        self._creating: dict[QueueKey, int] = {}
        self._deleted_while_creating: set[QueueKey] = set()
        self._stopping = threading.Event()
        self._publisher = SupervisedThread("fpc-resources", self._publish_loop, parts.fatal("etcd resource publisher"),
                                           stop=self._stopping)
        self.malformed = 0

    # ------------------------------------------------------------------ FrontEnd

    def start(self) -> None:
        ensure_topic(self.parts.kafka, self.topic, configs=INVOKER_TOPIC_CONFIG)
        self.lease.start()
        self._publish()
        self._publisher.start()
        self.feed.start()

    def stop(self) -> None:
        self._stopping.set()
        self.feed.stop()
        self._creations.shutdown(wait=True)
        for container in self.containers:
            container.stop()
        for container in self.containers:
            container.join(5.0)

    def close(self) -> None:
        self.lease.stop(revoke=True)  # every key goes now, not at the end of the TTL
        self.etcd.close()

    def wait_ready(self, timeout_s: float) -> bool:
        return self.lease.wait_for_lease(timeout_s) is not None and self.feed.ready.wait(timeout_s)

    @property
    def healthy(self) -> bool:
        return not self.parts.failed.is_set() and self.feed.consuming and self.lease.lease_id is not None

    def set_enabled(self, enabled: bool) -> None:
        """``/disable``: status down (the scheduler stops choosing it), its containers drained
        (each ends its activation, fetches with alive=false and goes; their queues create
        containers elsewhere), creations refused meanwhile. ``/enable``: up again."""
        self.enabled = enabled
        self._publish()
        if not enabled:
            for container in self.containers:
                container.stop()

    @property
    def containers(self) -> list[PullingContainer]:
        with self._lock:
            return list(self._containers)

    # ------------------------------------------------------------------ etcd: what the scheduler reads

    def resources(self) -> InvokerResourceMessage:
        """What the scheduler reads. ``freeMemory`` is host memory, the one capacity FPC's
        ContainerManager knows (it subtracts an action's ``limits.memory`` per creation); on a
        GPU invoker it is 0 while no GPU can take the smallest GPU container, so that neither GPU
        work nor untagged work spilling over is sent to a node whose GPUs are full (or whose MPS
        is down). ``busyMemory`` stays host memory."""
        pool = self.parts.pool
        host_free = pool.free_memory_mb
        free = host_free
        if pool.gpu_room(self.settings.min_gpu_request_mb or pool.config.bounds.memory_min_mb) is False:
            free = 0
        with self._lock:
            creating = self._creating_mb
        busy = max(0, pool.config.user_memory_mb - host_free - creating)
        status = InvokerStatus.UP if self.enabled and self.healthy else InvokerStatus.UNHEALTHY
        if not self.enabled:
            status = InvokerStatus.DOWN
        me = self.parts.describe()
        return InvokerResourceMessage(status, free, busy, creating, tuple(me.tags), tuple(me.dedicated_namespaces))

    def _publish(self) -> None:
        self.registration.publish(self.resources())  # written once etcd answers; never raises

    def _publish_loop(self) -> None:
        while not self._stopping.wait(self.settings.publish_interval_s):
            self._publish()

    # ------------------------------------------------------------------ Kafka: invoker{N}

    def _handle(self, record: FeedRecord) -> None:
        try:
            submit_logged(self._creations, f"container message {record.offset}", self._process, record)
        except RuntimeError:  # shut down: the record is not committed, and comes again
            log.warning("stopping: container message at offset %d left for the next run", record.offset)

    def _process(self, record: FeedRecord) -> None:
        try:
            try:
                message = parse_container_message(record.value)
            except MessageError as error:
                self.malformed += 1
                log.error("dropping record %s@%d: not a container message: %s", record.partition.topic,
                          record.offset, error)
                return
            if isinstance(message, ContainerDeletionMessage):
                self._delete(message)
            elif message.is_warm_up:
                log.debug("dropping the scheduler's warm-up creation %s", message.creation_id)
            elif not message.scheduler_host or not message.rpc_port:
                # Nowhere to pull from: a container made for it would wait for nothing.
                self.malformed += 1
                log.error("dropping creation %s of %s: no scheduler endpoint (%r:%d)", message.creation_id,
                          message.action.docid, message.scheduler_host, message.rpc_port)
            else:
                self._create(message)
        finally:
            self.feed.done(record)

    def _create(self, creation: ContainerCreationMessage) -> None:
        memory = creation.action_metadata.limits.memory_mb
        key = queue_key(creation.invocation_namespace, creation.action, creation.revision)
        with self._lock:
            self._creating_mb += memory
            self._creating[key] = self._creating.get(key, 0) + 1
        try:
            error, reason, container = self._try_create(creation, key)
        finally:
            with self._lock:
                self._creating_mb -= memory
                self._creating[key] -= 1
                if not self._creating[key]:
                    del self._creating[key]
                    self._deleted_while_creating.discard(key)
        self._ack(creation, error, reason)
        if container is not None:
            container.start()
        self._publish()

    def _try_create(self, creation: ContainerCreationMessage, key: QueueKey
                    ) -> tuple[ContainerCreationError | None, str | None, PullingContainer | None]:
        """The container pulling for ``creation``, or why there is none (OpenWhisk's names:
        ContainerMessageConsumer and FunctionPullingContainerPool)."""
        E = ContainerCreationError
        if self._stopping.is_set():
            return E.ShuttingDownError, "the invoker is shutting down", None
        if not self.enabled:  # the scheduler had not yet read our status: it tries elsewhere
            return E.ResourceNotEnoughError, "the invoker is disabled", None
        try:
            action = load_action(self.parts.entities, self.parts.manifest, creation.action.docid, creation.revision)
        except NotExecutable as error:
            return E.NonExecutableActionError, str(error), None
        except (StoreError, MessageError) as error:  # DocumentNotFound and unreadable documents among them
            log.warning("creation %s: action %s could not be fetched: %r", creation.creation_id,
                        creation.action.docid, error)
            return E.DBFetchError, f"the action {creation.action.docid} could not be fetched: {error}", None
        init = InitContext(action, creation.invocation_namespace, creation.transid.id,
                           init_env=init_parameters(action))
        try:
            try:
                proxy = self.parts.pool.create(action, creation.invocation_namespace, init)
            except InitFailed as error:
                # OpenWhisk's invoker initialises a created container with its first activation,
                # so a failing /init is that activation's developer error, never a failed creation:
                # OpenWhisk's scheduler retries a WhiskError five times per creation, keeps creating,
                # and leaves the queued activations waiting out the queue's retention (60 s) to end
                # as whisk internal errors. So: a fresh container, left uninitialised; the first
                # activation it fetches runs /init (with that activation's environment) and is
                # answered with the init failure, its logs and initTime, and the container goes.
                log.info("creation %s of %s: /init failed (%s); the container is made again and "
                         "initialised by its first activation", creation.creation_id, creation.action.docid, error)
                proxy = self.parts.pool.create(action, creation.invocation_namespace, None)
        except LimitsRefused as error:
            return E.InvalidActionLimitError, str(error), None
        except NoRoom as error:
            return E.ResourceNotEnoughError, str(error), None
        except ContainerStartError as error:
            return E.WhiskError, f"the container did not start: {error.__cause__ or error}", None
        except Exception as error:  # an invoker bug must still be answered
            log.exception("creation %s failed inside the invoker", creation.creation_id)
            return E.UnknownError, repr(error), None
        target = ContainerTarget(creation.invocation_namespace, creation.action, creation.revision,
                                 SchedulerEndpoints(creation.scheduler_host, creation.rpc_port))
        container = PullingContainer(self.parts.pool, proxy, action, target, self.completions,
                                     lambda: read_queue_leader(self.etcd, target.invocation_namespace,
                                                               target.action, self.names),
                                     self._gone, self.settings.pull)
        with self._lock:  # one step with _delete's look: a deletion finds it, or is seen here
            deleted = key in self._deleted_while_creating or not self.enabled  # or /disable drained them
            if not deleted:
                self._containers.add(container)
        if deleted:
            # The scheduler deleted the action's containers while this one was made: it goes
            # now, unadvertised. The creation itself succeeded and is acked so (nothing retried).
            log.info("creation %s: its action was deleted meanwhile; removing the container", creation.creation_id)
            container.stop()  # never started: this only closes its channel
            self.parts.pool.delete(proxy)
            return None, None, None
        self.registration.container_ready(target.invocation_namespace, target.action, target.revision or "",
                                          container.container_id)
        return None, None, container

    def _ack(self, creation: ContainerCreationMessage, error: ContainerCreationError | None,
             reason: str | None) -> None:
        ack = ContainerCreationAckMessage.answering(creation, self.parts.describe(), error, reason)
        if error is not None:
            log.warning("creation %s of %s failed: %s: %s", creation.creation_id, creation.action.docid,
                        error.value, reason)
        topic = self.parts.kafka.topic(f"creationAck{creation.ack_topic_suffix}")
        try:
            self.parts.producer.send(topic, ack.serialize()).result(ACK_SEND_TIMEOUT_S)
        except Exception as failure:  # the scheduler times the creation out and retries it
            log.error("creation %s: the ack could not be sent to %s: %s", creation.creation_id, topic, failure)

    def _delete(self, deletion: ContainerDeletionMessage) -> None:
        key = queue_key(deletion.invocation_namespace, deletion.action, deletion.revision)
        with self._lock:
            if key in self._creating:
                self._deleted_while_creating.add(key)
            doomed = [c for c in self._containers
                      if queue_key(c.target.invocation_namespace, c.target.action, c.target.revision) == key]
        log.info("deletion of %s@%s: %d containers", deletion.action.docid, deletion.revision, len(doomed))
        for container in doomed:
            container.stop()  # its last loop hands it to _gone

    def _gone(self, container: PullingContainer) -> None:
        """A container's loops ended: its key and the member go."""
        with self._lock:
            self._containers.discard(container)
        t = container.target
        self.registration.container_removed(t.invocation_namespace, t.action, t.revision or "",
                                            container.container_id)
        self.parts.pool.delete(container.proxy)
        if not self._stopping.is_set():
            self._publish()


QueueKey = tuple[str, str, str | None]  # invocation namespace, action docid, revision


def queue_key(invocation_namespace: str, action: FullyQualifiedEntityName, revision: str | None) -> QueueKey:
    return invocation_namespace, action.docid, revision


def init_parameters(action: WhiskAction) -> dict[str, str]:
    """The action's own ``init`` parameters, as ``/init`` gets them (there is no activation yet)."""
    return {p.key: stringify_env_value(p.value) for p in action.parameters if p.init}
