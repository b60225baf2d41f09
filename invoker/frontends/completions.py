"""What every front end sends when an activation ends (``InvokerReactive.scala``): the result and
completion acks to ``completed{C}``, retried until sent, and the activation record.

``Completions`` sends acks for one invoker; ``Acknowledgements`` is the pool's ``ActivationSink``
of one activation: its acks, its record, then its ``end`` once both have landed.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from invoker.clock import SYSTEM_CLOCK, Clock, now_ms
from invoker.containerpool.activation import Job
from invoker.entities import WhiskActivation
from invoker.errors import BrokerUnavailable, RecordTooLarge
from invoker.messages import (
    ActivationMessage,
    CombinedCompletionAndResultMessage,
    CompletionMessage,
    ControllerInstanceId,
    InvokerInstanceId,
    ResultMessage,
    serialize,
)
from invoker.messaging import Producer
from invoker.store.activations import ActivationStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AckPolicy:
    """Acks are retried with exponential backoff (jittered) until ``deadline_s`` after the
    first attempt: a broker outage longer than the producer's own retries is ridden out."""

    deadline_s: float = 600.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0


@dataclass(frozen=True)
class StorePolicy:
    blocking_level: str = "STORE_ALWAYS"
    non_blocking_level: str = "STORE_ALWAYS"


class Completions:
    """Acks of one invoker to its controllers, and where its records go."""

    def __init__(self, instance: InvokerInstanceId, producer: Producer, activations: ActivationStore,
                 topic_prefix: str = "", store_policy: StorePolicy = StorePolicy(),
                 ack_policy: AckPolicy = AckPolicy(), clock: Clock = SYSTEM_CLOCK) -> None:
        self.instance = instance
        self.producer = producer
        self.activations = activations
        self.topic_prefix = topic_prefix
        self.store_policy = store_policy
        self.ack_policy = ack_policy
        self.clock = clock
        self.acks_retried = 0
        self._random = random.Random()

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
    """The ack sequence of one activation (as ``InvokerReactive.scala`` sends them), its record, and
    ``end`` once both have landed. Implements the pool's ``ActivationSink``: its methods never
    raise into the pool, and a second completion is logged and ignored. ``on_finished`` (the
    activation id) is called just before ``end``."""

    def __init__(self, completions: Completions, msg: ActivationMessage, end: Callable[[], None],
                 store: bool = True, on_finished: Callable[[str], None] | None = None) -> None:
        self.completions = completions
        self.msg = msg
        self.end = end
        self.store = store
        self.on_finished = on_finished
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
        msg, instance = self.msg, self.completions.instance
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
            futures.append(self.completions.activations.store(activation.to_document(now_ms())))
        self._pending = len(futures)
        for future in futures:
            future.add_done_callback(self._one_landed)

    def _send(self, ack: Any) -> Future:
        return self.completions.send_ack(self.msg.root_controller_index, self.msg.activation_id, ack)

    def _should_store(self, activation: WhiskActivation) -> bool:
        policy = self.completions.store_policy
        return self.completions.activations.should_store(
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
        if self.on_finished is not None:
            self.on_finished(self.msg.activation_id)
        # An ack that failed past its deadline still releases: holding the offset (or the
        # slot) forever would stop the invoker. A record write is retried until it lands
        # (the store's deadline), so an offset never commits ahead of its record.
        self.end()


def _chain(source: Future, target: Future) -> None:
    source.add_done_callback(
        lambda f: target.set_exception(f.exception()) if f.exception() else target.set_result(None)
    )
