"""The controller's side of the invoker protocol, small enough to embed.

It does what an OpenWhisk controller does towards one invoker: publish
``ActivationMessage`` records to ``invoker{N}``, read acks from ``completed{C}``
and pings from ``health``. The standalone mode, the tests and the benchmarks
drive the invoker through it, so they see exactly what a real controller sees.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from invoker.messages import (
    AcknowledgementMessage,
    ActivationMessage,
    CombinedCompletionAndResultMessage,
    CompletionMessage,
    ControllerInstanceId,
    FullyQualifiedEntityName,
    Identity,
    PingMessage,
    ResultMessage,
    TransactionId,
)
from invoker.messaging import KafkaSettings, ensure_topic

log = logging.getLogger(__name__)


def new_activation_id() -> str:
    return uuid.uuid4().hex


def new_identity(namespace: str = "guest", subject: str | None = None) -> Identity:
    ns_uuid = str(uuid.uuid4())
    return Identity(
        subject=subject or f"{namespace}-subject",
        namespace_name=namespace,
        namespace_uuid=ns_uuid,
        authkey={"api_key": f"{ns_uuid}:{secrets.token_urlsafe(48)[:64]}"},
        rights=("READ", "PUT", "DELETE", "ACTIVATE"),
        limits={},
    )


@dataclass
class AckRecord:
    """Every ack seen for one activation, in arrival order."""

    acks: list[AcknowledgementMessage] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)

    @property
    def result(self) -> dict | str | None:
        for ack in self.acks:
            if isinstance(ack, ResultMessage | CombinedCompletionAndResultMessage):
                return ack.response
        return None

    @property
    def slot_freeing(self) -> list[AcknowledgementMessage]:
        return [a for a in self.acks if isinstance(a, CompletionMessage | CombinedCompletionAndResultMessage)]


# Pings come once a second per invoker: the last quarter of an hour of them.
KEEP_PINGS = 1000


class AckTimeout(TimeoutError):
    pass


class EmbeddedController:
    """Publishes activations and collects acks and pings (one ``completed{C}`` reader)."""

    def __init__(self, kafka: KafkaSettings, controller_id: str = "0", identity: Identity | None = None,
                 keep_acks: int | None = None, keep_pings: int = KEEP_PINGS) -> None:
        self.kafka = kafka
        # A long-running controller (standalone mode) keeps only the newest acks and pings.
        self.keep_acks = keep_acks
        self.controller = ControllerInstanceId(controller_id)
        self.identity = identity or new_identity()
        self.completed_topic = kafka.topic(f"completed{controller_id}")
        self.health_topic = kafka.topic("health")
        for topic in (self.completed_topic, self.health_topic):
            ensure_topic(kafka, topic)
        # Client metrics off, as in the invoker: nothing reads them.
        self._producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, linger_ms=0, acks=1,
                                       max_request_size=4 * 1024 * 1024, metrics_enabled=False, **kafka.extra)
        self._acks: dict[str, AckRecord] = defaultdict(AckRecord)
        self._by_transid: dict[str, AckRecord] = defaultdict(AckRecord)
        self.pings: deque[PingMessage] = deque(maxlen=keep_pings)  # the newest, oldest first
        self.ping_count = 0  # every ping read, also those the window no longer holds
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._readers = [
            threading.Thread(target=self._read, args=(self.completed_topic, self._on_ack), daemon=True),
            threading.Thread(target=self._read, args=(self.health_topic, self._on_ping), daemon=True),
        ]
        self._ready = threading.Barrier(len(self._readers) + 1)
        for reader in self._readers:
            reader.start()
        self._ready.wait(30)

    def close(self) -> None:
        self._stop.set()
        for reader in self._readers:
            reader.join(5)
        self._producer.close(5)

    def __enter__(self) -> EmbeddedController:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def _read(self, topic: str, on_value) -> None:
        # Assigned, not subscribed: no group join to wait for, and we want only new records.
        consumer = KafkaConsumer(bootstrap_servers=self.kafka.bootstrap_servers, enable_auto_commit=False,
                                 fetch_max_wait_ms=self.kafka.fetch_max_wait_ms, metrics_enabled=False,
                                 **self.kafka.extra)
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_end(partition)
        consumer.position(partition)
        self._ready.wait(30)
        try:
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=50).values():
                    for record in records:
                        try:
                            on_value(record.value)
                        except Exception:
                            log.exception("unreadable record on %s", topic)
        finally:
            consumer.close()

    def _on_ack(self, value: bytes) -> None:
        from invoker.messages import parse_acknowledgement

        ack = parse_acknowledgement(value)
        if isinstance(ack, CompletionMessage):
            activation_id = ack.activation_id
        elif isinstance(ack.response, str):
            activation_id = ack.response
        else:
            activation_id = ack.response["activationId"]
        with self._cond:
            now = time.monotonic()
            for book in (self._acks[activation_id], self._by_transid[ack.transid.id]):
                book.acks.append(ack)
                book.arrived.append(now)
            if self.keep_acks is not None:
                for books in (self._acks, self._by_transid):
                    while len(books) > self.keep_acks:
                        del books[next(iter(books))]  # dicts keep insertion order: the oldest
            self._cond.notify_all()

    def _on_ping(self, value: bytes) -> None:
        import json

        with self._cond:
            self.pings.append(PingMessage.from_json(json.loads(value)))
            self.ping_count += 1
            self._cond.notify_all()

    # ------------------------------------------------------------------ publishing

    def message(
        self,
        action: FullyQualifiedEntityName,
        revision: str | None,
        content: dict | list | None = None,
        blocking: bool = True,
        activation_id: str | None = None,
        user: Identity | None = None,
        transid: TransactionId | None = None,
        init_args: tuple[str, ...] = (),
        cause: str | None = None,
    ) -> ActivationMessage:
        return ActivationMessage(
            transid=transid or TransactionId.new(secrets.token_hex(16), int(time.time() * 1000)),
            action=action,
            revision=revision,
            user=user or self.identity,
            activation_id=activation_id or new_activation_id(),
            root_controller_index=self.controller,
            blocking=blocking,
            content=content,
            init_args=init_args,
            cause=cause,
        )

    def publish(self, invoker: int, msg: ActivationMessage | bytes) -> None:
        value = msg if isinstance(msg, bytes) else msg.serialize()
        self._producer.send(self.kafka.topic(f"invoker{invoker}"), value)
        self._producer.flush()

    def publish_many(self, invoker: int, messages: list[ActivationMessage]) -> None:
        topic = self.kafka.topic(f"invoker{invoker}")
        for msg in messages:
            self._producer.send(topic, msg.serialize())
        self._producer.flush()

    # ------------------------------------------------------------------ waiting

    def acks(self, activation_id: str) -> AckRecord:
        with self._cond:
            return self._acks[activation_id]

    def _await(self, ready, timeout_s: float):
        """``ready()`` (called with the lock held) once it is truthy, else None after ``timeout_s``."""
        with self._cond:
            return self._cond.wait_for(ready, timeout_s) or None

    def wait_for(self, activation_id: str, timeout_s: float = 30.0, slot_freeing: int = 1) -> AckRecord:
        """Until the activation's slot-freeing ack(s) arrived."""
        record = self._await(lambda: len(self._acks[activation_id].slot_freeing) >= slot_freeing
                             and self._acks[activation_id], timeout_s)
        if record is None:
            raise AckTimeout(f"no completion for {activation_id} within {timeout_s} s")
        return record

    def wait_for_result(self, activation_id: str, timeout_s: float = 60.0) -> AckRecord | None:
        """Until the activation's result ack arrived (what a blocking invoke answers with);
        None when it did not within ``timeout_s``."""

        def result() -> AckRecord | None:
            record = self._acks.get(activation_id)
            return record if record is not None and isinstance(record.result, dict) else None

        return self._await(result, timeout_s)

    def wait_for_transid(self, transid: str, timeout_s: float = 30.0) -> AckRecord:
        record = self._await(lambda: self._by_transid[transid].slot_freeing and self._by_transid[transid], timeout_s)
        if record is None:
            raise AckTimeout(f"no completion for transid {transid} within {timeout_s} s")
        return record

    def wait_for_ping(self, timeout_s: float = 30.0, after: int = 0) -> PingMessage:
        """The newest ping once more than ``after`` pings were read in all (``ping_count``)."""
        ping = self._await(lambda: self.ping_count > after and self.pings[-1], timeout_s)
        if ping is None:
            raise AckTimeout("no ping")
        return ping

    def invoke(self, invoker: int, msg: ActivationMessage, timeout_s: float = 60.0) -> AckRecord:
        self.publish(invoker, msg)
        return self.wait_for(msg.activation_id, timeout_s)

    def all_acks(self) -> dict[str, AckRecord]:
        with self._cond:
            return dict(self._acks)


def result_of(record: AckRecord) -> Any:
    response = record.result
    return response.get("response", {}).get("result") if isinstance(response, dict) else None
