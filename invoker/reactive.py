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
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from invoker.clock import SYSTEM_CLOCK, Clock, now_ms
from invoker.containerpool.activation import Job
from invoker.containerpool.pool import ContainerPool
from invoker.entities import (
    ActivationResponse,
    DocumentUnreadable,
    Messages,
    WhiskAction,
    WhiskActivation,
    instant_activation,
    stringify_env_value,
)
from invoker.errors import BrokerUnavailable, RecordTooLarge, activation_response_for
from invoker.manifest import RuntimesManifest
from invoker.messages import (
    ActivationMessage,
    CombinedCompletionAndResultMessage,
    CompletionMessage,
    ControllerInstanceId,
    InvokerInstanceId,
    MessageError,
    ResultMessage,
    TransactionId,
    salvage_addressee,
    serialize,
)
from invoker.messaging import FeedRecord, Producer
from invoker.store.activations import ActivationStore
from invoker.store.database import DocumentNotFound, StoreError
from invoker.store.entities import EntityStore
from invoker.supervision import submit_logged

log = logging.getLogger(__name__)

HEALTH_ACTION = re.compile(r"whisk\.system/invokerHealthTestAction\d+")


@dataclass(frozen=True)
class AckPolicy:
    """Acks are retried with exponential backoff (jittered) until ``deadline_s`` after the
    first attempt: a broker outage longer than the producer's own retries is ridden out."""

    deadline_s: float = 600.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0


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
        ack_policy: AckPolicy = AckPolicy(),
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
        self._random = random.Random()
        self._prepare = ThreadPoolExecutor(max_workers=prepare_workers, thread_name_prefix="prepare")
        self.done: Callable[[FeedRecord], None] = lambda record: None  # set by the invoker service
        self.replayed = 0
        self.malformed = 0
        self.duplicates = 0
        self.acks_retried = 0
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
        sink = Acknowledgements(self, record, msg, end, store=False, track=track)
        sink.completed_activation(activation, fallback=msg.blocking)
        return True

    def _fetch(self, record: FeedRecord, msg: ActivationMessage, end: RecordEnd) -> WhiskAction | None:
        try:
            document = self.entities.get_action(msg.action.docid, msg.revision)
            action = WhiskAction.from_document(document.doc, document.code)
            if self.manifest.resolve(action.kind) is None and action.kind != "blackbox":
                raise DocumentUnreadable(f"unknown kind {action.kind!r}")
        except (StoreError, MessageError) as error:  # DocumentUnreadable is a MessageError
            if not isinstance(error, DocumentNotFound):
                log.warning("action %s could not be fetched or read: %r", msg.action.docid, error)
            self._fallback(record, msg, activation_response_for(error), end)
            return None
        if action.is_sequence:
            self._fallback(record, msg, ActivationResponse.whisk_error(Messages.action_fetch_failed), end)
            return None
        return action

    def _job(self, record: FeedRecord, msg: ActivationMessage, action: WhiskAction, end: RecordEnd) -> Job:
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
                   sink=Acknowledgements(self, record, msg, end))

    def _health_shortcut(self, record: FeedRecord, msg: ActivationMessage, action: WhiskAction,
                         end: RecordEnd) -> None:
        """The controller's health test action is ``nodejs:default`` echoing its input
        (``InvokerHealthTestAction.scala``). A node without that runtime answers it as it would."""
        result: Any = msg.content if msg.content is not None else {}
        response = ActivationResponse.success(result, len(serialize(result)))
        activation = instant_activation(msg, response, action, now_ms())
        Acknowledgements(self, record, msg, end).completed_activation(activation, fallback=False)

    def _fallback(self, record: FeedRecord, msg: ActivationMessage, response: ActivationResponse,
                  end: RecordEnd) -> None:
        """``generateFallbackActivation``: the action never ran."""
        activation = instant_activation(msg, response, None, now_ms())
        Acknowledgements(self, record, msg, end).completed_activation(activation, fallback=True)

    # ------------------------------------------------------------------ sending

    def completed_topic(self, controller: ControllerInstanceId) -> str:
        return f"{self.topic_prefix}completed{controller.as_string}"

    def send_ack(self, controller: ControllerInstanceId, activation_id: str, ack: Any) -> Future:
        """Send ``ack`` to the controller, retried with backoff until the policy's deadline.
        The future fails (``BrokerUnavailable``) only once the deadline has passed; it never
        raises on the caller's thread."""
        policy = self.ack_policy
        topic = self.completed_topic(controller)
        outer: Future = Future()
        deadline = self.clock.monotonic() + policy.deadline_s
        current = [ack]
        shrunk = [False]

        def attempt(tries: int) -> None:
            try:
                inner = self._send_once(topic, activation_id, current[0])
            except Exception as error:  # producer closed, or no metadata within max_block_ms
                finish(tries, error)
                return
            inner.add_done_callback(lambda f: finish(tries, f.exception()))

        def finish(tries: int, error: BaseException | None) -> None:
            if error is None:
                outer.set_result(None)
                return
            if isinstance(error, RecordTooLarge) and not shrunk[0]:
                shrunk[0] = True
                current[0] = current[0].shrink(activation_id)  # the controller reads the store instead
                attempt(tries)
                return
            ceiling = min(policy.backoff_max_s, policy.backoff_initial_s * (2 ** tries))
            delay = ceiling / 2 + self._random.uniform(0, ceiling / 2)
            if self.clock.monotonic() + delay > deadline:
                log.error("ack for %s could not be sent within %.0f s: %s", activation_id, policy.deadline_s, error)
                failure = BrokerUnavailable(f"ack for {activation_id} not sent within {policy.deadline_s:.0f} s: {error}")
                failure.__cause__ = error
                outer.set_exception(failure)
                return
            if tries == 0:
                log.warning("ack for %s failed (%s); retrying until it is sent", activation_id, error)
            self.acks_retried += 1
            self.clock.call_later(delay, attempt, tries + 1)

        attempt(0)
        return outer

    def _send_once(self, topic: str, activation_id: str, ack: Any) -> Future:
        try:
            return self.producer.send(topic, serialize(ack.to_json()))
        except RecordTooLarge:
            # The controller reads the result from the activation store instead.
            return self.producer.send(topic, serialize(ack.shrink(activation_id).to_json()))


class Acknowledgements:
    """The ack sequence of one activation (as ``InvokerReactive.scala`` sends them), its record, and the
    record's end once both have landed. Implements the pool's ``ActivationSink``:
    its methods never raise into the pool, and a second completion is logged and ignored."""

    def __init__(self, reactive: InvokerReactive, record: FeedRecord, msg: ActivationMessage, end: RecordEnd,
                 store: bool = True, track: bool = True) -> None:
        self.reactive = reactive
        self.track = track
        self.record = record
        self.msg = msg
        self.end = end
        self.store = store
        self._result_sent: Future | None = None
        self._ran = False
        self._ended = False
        self._pending = 0
        self._lock = threading.Lock()

    # ActivationSink -----------------------------------------------------------------
    def result_ready(self, job: Job, activation: WhiskActivation) -> None:
        try:
            self._ran = True
            if self.msg.blocking and job.action.limits.logs_mb > 0:
                self._result_sent = self._send(ResultMessage(self.msg.transid, activation.to_json()))
        except Exception:
            log.exception("activation %s: the result ack could not be started", self.msg.activation_id)

    def completed(self, job: Job, activation: WhiskActivation) -> None:
        # Without a result_ready the action never reached a container (start failure).
        self.completed_activation(activation, fallback=not self._ran)

    # --------------------------------------------------------------------------------
    def completed_activation(self, activation: WhiskActivation, fallback: bool) -> None:
        with self._lock:
            if self._ended:
                log.warning("activation %s completed twice; ignoring the second", self.msg.activation_id)
                return
            self._ended = True
        try:
            self._complete(activation, fallback)
        except Exception:
            log.exception("activation %s: acks or record could not be started; releasing its record",
                          self.msg.activation_id)
            self._release()

    def _complete(self, activation: WhiskActivation, fallback: bool) -> None:
        msg, instance = self.msg, self.reactive.instance
        system_error = activation.response.is_whisk_error
        result_sent = self._result_sent
        if fallback or (msg.blocking and result_sent is None):
            response: Any = activation.to_json() if msg.blocking else msg.activation_id
            ack_sent = self._send(CombinedCompletionAndResultMessage(msg.transid, response, system_error, instance))
        elif result_sent is not None and not result_sent.done():
            # The completion must not overtake the result: send it once the result is out
            # (or given up on), from the result's callback, never blocking this thread.
            completion = CompletionMessage(msg.transid, msg.activation_id, system_error, instance)
            ack_sent = Future()
            result_sent.add_done_callback(lambda _f: _chain(self._send(completion), ack_sent))
        else:
            ack_sent = self._send(CompletionMessage(msg.transid, msg.activation_id, system_error, instance))
        futures = [ack_sent]
        if self.store and self._should_store(activation):
            futures.append(self.reactive.activations.store(activation.to_document(now_ms())))
        self._pending = len(futures)
        for future in futures:
            future.add_done_callback(self._one_landed)

    def _send(self, ack: Any) -> Future:
        return self.reactive.send_ack(self.msg.root_controller_index, self.msg.activation_id, ack)

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

    def _one_landed(self, future: Future) -> None:
        error = future.exception()
        if error is not None:
            log.error("activation %s: %s", self.msg.activation_id, error)
        with self._lock:
            self._pending -= 1
            last = self._pending == 0
        if last:
            self._release()

    def _release(self) -> None:
        if self.track:
            self.reactive.finished(self.msg.activation_id)
        # An ack that failed past its deadline still releases the record: holding the
        # offset forever would stop the invoker. A record write is retried until it lands
        # (the store's deadline), so an offset never commits ahead of its record.
        self.end()


def _chain(source: Future, target: Future) -> None:
    source.add_done_callback(
        lambda f: target.set_exception(f.exception()) if f.exception() else target.set_result(None)
    )
