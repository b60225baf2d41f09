"""What the invoker does with one ``ActivationMessage`` (``InvokerReactive.scala``):
parse, fetch the action, hand it to the pool, then ack and record the result.

Every record the feed hands over ends in exactly one ``feed.done`` call (its
``RecordEnd``), after its acks were sent and its activation stored, or when it is
dropped as malformed (one ERROR line naming partition, offset and why). That is what
lets the feed commit offsets without losing work: an offset commits only once its
record is in the activation store.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from invoker.clock import SYSTEM_CLOCK, Clock, now_ms
from invoker.containerpool.activation import Job
from invoker.containerpool.pool import ContainerPool
from invoker.entities import (
    ActivationResponse,
    Messages,
    WhiskAction,
    WhiskActivation,
    instant_activation,
)
from invoker.errors import activation_response_for
from invoker.frontends.actions import NotExecutable, build_job, load_action
from invoker.frontends.completions import Acknowledgements, AckPolicy, Completions, StorePolicy
from invoker.manifest import RuntimesManifest
from invoker.messages import (
    ActivationMessage,
    CombinedCompletionAndResultMessage,
    ControllerInstanceId,
    InvokerInstanceId,
    MessageError,
    TransactionId,
    salvage_addressee,
    serialize,
)
from invoker.messaging import FeedRecord, Producer
from invoker.store.activations import ActivationStore
from invoker.store.database import DocumentNotFound, StoreError
from invoker.store.entities import EntityStore
from invoker.supervision import submit_logged

__all__ = ["AckPolicy", "Acknowledgements", "InvokerReactive", "RecordEnd", "StorePolicy", "where"]

log = logging.getLogger(__name__)

DEFAULT_STORE_POLICY = StorePolicy()
DEFAULT_ACK_POLICY = AckPolicy()

HEALTH_ACTION = re.compile(r"whisk\.system/invokerHealthTestAction\d+")


class RecordEnd:
    """The one end of one feed record: ``feed.done`` exactly once, whoever calls."""

    def __init__(self, done: Callable[[FeedRecord], None], record: FeedRecord) -> None:
        self._done = done
        self.record = record
        self._lock = threading.Lock()
        self._ended = False

    def __call__(self) -> None:
        with self._lock:
            if self._ended:
                log.warning("record %s ended twice; ignoring the second end", where(self.record))
                return
            self._ended = True
        self._done(self.record)


def where(record: FeedRecord) -> str:
    """``topic-partition@offset``, as operators read it."""
    return f"{record.partition.topic}-{record.partition.partition}@{record.offset}"


class InvokerReactive:
    def __init__(
        self,
        instance: InvokerInstanceId,
        producer: Producer,
        entities: EntityStore,
        activations: ActivationStore,
        pool: ContainerPool,
        manifest: RuntimesManifest,
        runnable_kind: Callable[[str], bool],
        topic_prefix: str = "",
        store_policy: StorePolicy = DEFAULT_STORE_POLICY,
        prepare_workers: int = 16,
        ack_policy: AckPolicy = DEFAULT_ACK_POLICY,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.instance = instance
        self.clock = clock
        self.producer = producer
        self.entities = entities
        self.activations = activations
        self.pool = pool
        self.manifest = manifest
        self.runnable_kind = runnable_kind
        self.topic_prefix = topic_prefix
        self.store_policy = store_policy
        self.ack_policy = ack_policy
        self.completions = Completions(instance, producer, activations, topic_prefix, store_policy, ack_policy, clock)
        self._prepare = ThreadPoolExecutor(max_workers=prepare_workers, thread_name_prefix="prepare")
        self.done: Callable[[FeedRecord], None] = lambda record: None  # set by the invoker service
        self.replayed = 0
        self.malformed = 0
        self.duplicates = 0
        # Activation ids running now, and the last ones finished: a record that comes
        # twice (a producer retry, a rebalance) must not run the action twice.
        self._ids_lock = threading.Lock()
        self._running: set[str] = set()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._finished_max = 50_000

    def close(self) -> None:
        self._prepare.shutdown(wait=True)

    def finished(self, activation_id: str) -> None:
        with self._ids_lock:
            self._running.discard(activation_id)
            self._finished[activation_id] = None
            while len(self._finished) > self._finished_max:
                self._finished.popitem(last=False)

    # ------------------------------------------------------------------ entry point (feed thread)

    def handle(self, record: FeedRecord) -> None:
        submit_logged(self._prepare, f"activation record {where(record)}", self._process, record)

    def _process(self, record: FeedRecord) -> None:
        end = RecordEnd(self.done, record)
        msg: ActivationMessage | None = None
        try:
            try:
                msg = ActivationMessage.parse(record.value)
            except MessageError as error:
                self._drop(record, end, str(error))
                return
            # From here on the activation always gets at least one ack (InvokerReactive.scala).
            self._start(record, msg, end)
        except BaseException as error:
            if msg is None:
                log.exception("dropping record %s: %r", where(record), error)
                end()
                return
            log.exception("activation %s failed in the invoker", msg.activation_id)
            try:
                self._fallback(record, msg, activation_response_for(error), end)
            except BaseException:
                log.exception("activation %s: the fallback failed too; dropping record %s",
                              msg.activation_id, where(record))
                end()

    def _start(self, record: FeedRecord, msg: ActivationMessage, end: RecordEnd) -> None:
        with self._ids_lock:
            duplicate = msg.activation_id in self._running or msg.activation_id in self._finished
            if not duplicate:
                self._running.add(msg.activation_id)
        if duplicate:
            self.duplicates += 1
            log.warning("activation %s arrived again at %s; not running it twice", msg.activation_id, where(record))
            try:
                answered = self._answer_from_record(record, msg, end, track=False)
            except StoreError as error:
                log.warning("activation %s: cannot read its record (%s); its own acks answer it",
                            msg.activation_id, error)
                answered = False
            if not answered:
                end()  # still running: its own acks are on their way
            return
        if record.maybe_replayed:
            try:
                if self._answer_from_record(record, msg, end):
                    return
            except StoreError as error:
                # Unknown whether it ran: run it (at least once) rather than answer an error.
                log.warning("activation %s may be a replay but its record cannot be read (%s); running it",
                            msg.activation_id, error)
        action = self._fetch(record, msg, end)
        if action is None:
            return
        if HEALTH_ACTION.fullmatch(action.path) and not self.runnable_kind(action.kind):
            self._health_shortcut(record, msg, action, end)
            return
        self.pool.run(self._job(record, msg, action, end))

    def _drop(self, record: FeedRecord, end: RecordEnd, why: str) -> None:
        """A record that is no activation message: one ERROR line, and the slot and offset
        freed. When its id and controller can still be read, a whisk-error completion
        frees the controller's slot now instead of at its timeout."""
        self.malformed += 1
        addressee = salvage_addressee(record.value)
        log.error("dropping record %s: not an activation message: %s%s", where(record), why,
                  f" (answering activation {addressee.activation_id} with a whisk error)" if addressee else "")
        if addressee is None:
            end()
            return
        transid = addressee.transid or TransactionId.new("sid_invoker_malformed", now_ms())
        ack = CombinedCompletionAndResultMessage(transid, addressee.activation_id, True, self.instance)
        sent = self.send_ack(addressee.controller, addressee.activation_id, ack)
        sent.add_done_callback(lambda _future: end())

    # ------------------------------------------------------------------ steps

    def _answer_from_record(self, record: FeedRecord, msg: ActivationMessage, end: RecordEnd,
                            track: bool = True) -> bool:
        """After a crash: an activation whose record exists was finished; ack it from
        the record instead of running it twice."""
        doc = self.activations.get(f"{msg.user.namespace_name}/{msg.activation_id}")
        if doc is None:
            return False
        self.replayed += 1
        activation = WhiskActivation.from_document(doc)
        log.info("activation %s was already recorded; acking it from the record", msg.activation_id)
        sink = self._sink(msg, end, store=False, track=track)
        sink.completed_activation(activation, fallback=msg.blocking)
        return True

    def _fetch(self, record: FeedRecord, msg: ActivationMessage, end: RecordEnd) -> WhiskAction | None:
        try:
            return load_action(self.entities, self.manifest, msg.action.docid, msg.revision)
        except (StoreError, MessageError) as error:  # DocumentUnreadable is a MessageError
            if not isinstance(error, DocumentNotFound):
                log.warning("action %s could not be fetched or read: %r", msg.action.docid, error)
            self._fallback(record, msg, activation_response_for(error), end)
        except NotExecutable:
            self._fallback(record, msg, ActivationResponse.whisk_error(Messages.action_fetch_failed), end)
        return None

    def _job(self, record: FeedRecord, msg: ActivationMessage, action: WhiskAction, end: RecordEnd) -> Job:
        return build_job(msg, action, self._sink(msg, end))

    def _sink(self, msg: ActivationMessage, end: RecordEnd, store: bool = True, track: bool = True) -> Acknowledgements:
        return Acknowledgements(self.completions, msg, end, store=store, on_finished=self.finished if track else None)

    def _health_shortcut(self, record: FeedRecord, msg: ActivationMessage, action: WhiskAction,
                         end: RecordEnd) -> None:
        """The controller's health test action is ``nodejs:default`` echoing its input
        (``InvokerHealthTestAction.scala``). A node without that runtime answers it as it would."""
        result: Any = msg.content if msg.content is not None else {}
        response = ActivationResponse.success(result, len(serialize(result)))
        activation = instant_activation(msg, response, action, now_ms())
        self._sink(msg, end).completed_activation(activation, fallback=False)

    def _fallback(self, record: FeedRecord, msg: ActivationMessage, response: ActivationResponse,
                  end: RecordEnd) -> None:
        """``generateFallbackActivation``: the action never ran."""
        activation = instant_activation(msg, response, None, now_ms())
        self._sink(msg, end).completed_activation(activation, fallback=True)

    # ------------------------------------------------------------------ sending

    @property
    def acks_retried(self) -> int:
        return self.completions.acks_retried

    def completed_topic(self, controller: ControllerInstanceId) -> str:
        return self.completions.completed_topic(controller)

    def send_ack(self, controller: ControllerInstanceId, activation_id: str, ack: Any) -> Future:
        """``Completions.send_ack``: retried until the ack policy's deadline; never raises."""
        return self.completions.send_ack(controller, activation_id, ack)
