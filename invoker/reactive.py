"""What the invoker does with one ``ActivationMessage`` (``InvokerReactive.scala``):
parse, fetch the action, hand it to the pool, then ack and record the result.

Every record the feed hands over ends in exactly one ``feed.done`` call, after
its acks were sent and its activation stored (or when it is dropped as
malformed), which is what lets the feed commit offsets without losing work.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from invoker.containerpool.container import now_ms
from invoker.containerpool.pool import ContainerPool
from invoker.containerpool.proxy import Job, Messages
from invoker.entities import (
    ActivationResponse,
    DocumentUnreadable,
    WhiskAction,
    WhiskActivation,
    instant_activation,
    stringify_env_value,
)
from invoker.manifest import RuntimesManifest
from invoker.messages import (
    ActivationMessage,
    CombinedCompletionAndResultMessage,
    CompletionMessage,
    InvokerInstanceId,
    MessageError,
    ResultMessage,
    serialize,
)
from invoker.messaging import FeedRecord, Producer, RecordTooLarge
from invoker.store.activations import ActivationStore
from invoker.store.database import DocumentNotFound, StoreError
from invoker.store.entities import EntityStore

log = logging.getLogger(__name__)

HEALTH_ACTION = re.compile(r"whisk\.system/invokerHealthTestAction\d+")


@dataclass(frozen=True)
class StorePolicy:
    blocking_level: str = "STORE_ALWAYS"
    non_blocking_level: str = "STORE_ALWAYS"


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
        store_policy: StorePolicy = StorePolicy(),
        prepare_workers: int = 16,
    ) -> None:
        self.instance = instance
        self.producer = producer
        self.entities = entities
        self.activations = activations
        self.pool = pool
        self.manifest = manifest
        self.runnable_kind = runnable_kind
        self.topic_prefix = topic_prefix
        self.store_policy = store_policy
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
        self._prepare.submit(self._process, record)

    def _process(self, record: FeedRecord) -> None:
        try:
            msg = ActivationMessage.parse(record.value)
        except MessageError as error:
            # The controller forces the completion later; no ack can be addressed anyway.
            self.malformed += 1
            log.error("dropping malformed activation message at %s@%d: %s", record.partition, record.offset, error)
            self.done(record)
            return
        with self._ids_lock:
            duplicate = msg.activation_id in self._running or msg.activation_id in self._finished
            if not duplicate:
                self._running.add(msg.activation_id)
        if duplicate:
            self.duplicates += 1
            log.warning("activation %s arrived again at %s@%d; not running it twice",
                        msg.activation_id, record.partition, record.offset)
            if not self._answer_from_record(record, msg, track=False):
                self.done(record)  # still running: its own acks are on their way
            return
        try:
            if record.maybe_replayed and self._answer_from_record(record, msg):
                return
            action = self._fetch(record, msg)
            if action is None:
                return
            if HEALTH_ACTION.fullmatch(action.path) and not self.runnable_kind(action.kind):
                self._health_shortcut(record, msg, action)
                return
            self.pool.run(self._job(record, msg, action))
        except Exception:
            log.exception("activation %s failed in the invoker", msg.activation_id)
            self._fallback(record, msg, ActivationResponse.whisk_error(Messages.abnormal_run))

    # ------------------------------------------------------------------ steps

    def _answer_from_record(self, record: FeedRecord, msg: ActivationMessage, track: bool = True) -> bool:
        """After a crash: an activation whose record exists was finished; ack it from
        the record instead of running it twice."""
        doc = self.activations.get(f"{msg.user.namespace_name}/{msg.activation_id}")
        if doc is None:
            return False
        self.replayed += 1
        activation = WhiskActivation.from_document(doc)
        log.info("activation %s was already recorded; acking it from the record", msg.activation_id)
        sink = Acknowledgements(self, record, msg, store=False, track=track)
        sink.completed_activation(activation, fallback=msg.blocking)
        return True

    def _fetch(self, record: FeedRecord, msg: ActivationMessage) -> WhiskAction | None:
        try:
            document = self.entities.get_action(msg.action.docid, msg.revision)
            action = WhiskAction.from_document(document.doc, document.code)
            if self.manifest.resolve(action.kind) is None and action.kind != "blackbox":
                raise DocumentUnreadable(f"unknown kind {action.kind!r}")
        except DocumentNotFound:
            self._fallback(record, msg, ActivationResponse.application_error(Messages.action_not_found))
            return None
        except (DocumentUnreadable, MessageError) as error:
            log.warning("action %s is unreadable: %s", msg.action.docid, error)
            self._fallback(record, msg, ActivationResponse.whisk_error(Messages.action_incompatible))
            return None
        except StoreError as error:
            if type(error).__name__ == "DocumentTypeMismatch":
                self._fallback(record, msg, ActivationResponse.whisk_error(Messages.action_incompatible))
            else:
                log.warning("action %s could not be fetched: %s", msg.action.docid, error)
                self._fallback(record, msg, ActivationResponse.whisk_error(Messages.action_fetch_failed))
            return None
        if action.is_sequence:
            self._fallback(record, msg, ActivationResponse.whisk_error(Messages.action_fetch_failed))
            return None
        return action

    def _job(self, record: FeedRecord, msg: ActivationMessage, action: WhiskAction) -> Job:
        content = msg.content if msg.content is not None else {}
        init_env: dict[str, str] = {}
        if isinstance(content, dict):
            content = dict(content)
            for name in msg.init_args:
                if name in content:
                    init_env[name] = stringify_env_value(content.pop(name))
            if msg.locked_args:
                log.warning(
                    "activation %s has encrypted parameters %s and no parameter-storage key is "
                    "configured: they are passed as stored", msg.activation_id, sorted(msg.locked_args)
                )
        return Job(msg=msg, action=action, arguments=content, init_env=init_env,
                   sink=Acknowledgements(self, record, msg))

    def _health_shortcut(self, record: FeedRecord, msg: ActivationMessage, action: WhiskAction) -> None:
        """The controller's health test action is ``nodejs:default`` echoing its input
        (§1.7.3). A node without that runtime answers it as it would."""
        result: Any = msg.content if msg.content is not None else {}
        response = ActivationResponse.success(result, len(serialize(result)))
        activation = instant_activation(msg, response, action, now_ms())
        Acknowledgements(self, record, msg).completed_activation(activation, fallback=False)

    def _fallback(self, record: FeedRecord, msg: ActivationMessage, response: ActivationResponse) -> None:
        """``generateFallbackActivation``: the action never ran."""
        activation = instant_activation(msg, response, None, now_ms())
        Acknowledgements(self, record, msg).completed_activation(activation, fallback=True)

    # ------------------------------------------------------------------ sending

    def completed_topic(self, msg: ActivationMessage) -> str:
        return f"{self.topic_prefix}completed{msg.root_controller_index.as_string}"

    def send_ack(self, msg: ActivationMessage, ack: Any) -> Future:
        topic = self.completed_topic(msg)
        try:
            return self.producer.send(topic, serialize(ack.to_json()))
        except RecordTooLarge:
            # The controller reads the result from the activation store instead.
            return self.producer.send(topic, serialize(ack.shrink(msg.activation_id).to_json()))


class Acknowledgements:
    """The ack sequence of one activation (PROTOCOL.md §1.6.2), its record, and the
    feed's ``done`` once both have landed. Implements the pool's ``ActivationSink``."""

    def __init__(self, reactive: InvokerReactive, record: FeedRecord, msg: ActivationMessage, store: bool = True,
                 track: bool = True) -> None:
        self.reactive = reactive
        self.track = track
        self.record = record
        self.msg = msg
        self.store = store
        self._result_sent: Future | None = None
        self._ran = False
        self._pending = 0
        self._lock = threading.Lock()

    # ActivationSink -----------------------------------------------------------------
    def result_ready(self, job: Job, activation: WhiskActivation) -> None:
        self._ran = True
        if self.msg.blocking and job.action.limits.logs_mb > 0:
            self._result_sent = self._retrying_send(ResultMessage(self.msg.transid, activation.to_json()))

    def completed(self, job: Job, activation: WhiskActivation) -> None:
        # Without a result_ready the action never reached a container (start failure).
        self.completed_activation(activation, fallback=not self._ran)

    # --------------------------------------------------------------------------------
    def completed_activation(self, activation: WhiskActivation, fallback: bool) -> None:
        msg, instance = self.msg, self.reactive.instance
        system_error = activation.response.is_whisk_error
        if fallback or (msg.blocking and self._result_sent is None):
            response: Any = activation.to_json() if msg.blocking else msg.activation_id
            ack: Any = CombinedCompletionAndResultMessage(msg.transid, response, system_error, instance)
        else:
            if self._result_sent is not None:
                self._result_sent.result()  # the completion must not overtake the result
            ack = CompletionMessage(msg.transid, msg.activation_id, system_error, instance)
        futures = [self._retrying_send(ack)]
        if self.store and self._should_store(activation):
            futures.append(self.reactive.activations.store(activation.to_document(now_ms())))
        self._pending = len(futures)
        for future in futures:
            future.add_done_callback(self._one_landed)

    def _should_store(self, activation: WhiskActivation) -> bool:
        policy = self.reactive.store_policy
        return self.reactive.activations.should_store(
            user_limits=self.msg.user.limits,
            transid_extra_logging=self.msg.transid.extra_logging,
            blocking=self.msg.blocking,
            status_code=activation.response.status_code,
            blocking_level=policy.blocking_level,
            non_blocking_level=policy.non_blocking_level,
        )

    def _retrying_send(self, ack: Any, attempts: int = 5) -> Future:
        outer: Future = Future()

        def attempt(left: int) -> None:
            try:
                inner = self.reactive.send_ack(self.msg, ack)
            except Exception as error:  # producer closed or broker unreachable at send time
                finish(left, error)
                return
            inner.add_done_callback(lambda f: finish(left, f.exception()))

        def finish(left: int, error: BaseException | None) -> None:
            if error is None:
                outer.set_result(None)
            elif left > 1:
                log.warning("ack for %s failed (%s); retrying", self.msg.activation_id, error)
                threading.Timer(0.5, attempt, args=(left - 1,)).start()
            else:
                log.error("ack for %s could not be sent: %s", self.msg.activation_id, error)
                outer.set_exception(error)

        attempt(attempts)
        return outer

    def _one_landed(self, future: Future) -> None:
        error = future.exception()
        if error is not None:
            log.error("activation %s: %s", self.msg.activation_id, error)
        with self._lock:
            self._pending -= 1
            last = self._pending == 0
        if last:
            if self.track:
                self.reactive.finished(self.msg.activation_id)
            # Even when a write finally failed the record is released: the store
            # already retried until its deadline, and holding the offset forever
            # would stop the invoker. The replay check covers a crash before this.
            self.reactive.done(self.record)
