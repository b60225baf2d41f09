"""The scheduler's side of FPC's Kafka traffic, for tests: creation and deletion messages as
OpenWhisk's ``ContainerManager`` sends them, and a reader of ``creationAck{sid}``."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from invoker.fpc.messages import (
    ActionMetaData,
    ContainerCreationAckMessage,
    ContainerCreationMessage,
    ContainerDeletionMessage,
)
from invoker.messages import FullyQualifiedEntityName, TransactionId
from invoker.messaging import KafkaSettings, ensure_topic


def metadata(doc: dict[str, Any]) -> ActionMetaData:
    """``WhiskActionMetaData`` of an action document: the document without its code."""
    raw = {k: v for k, v in doc.items() if not k.startswith("_") and k not in ("entityType", "updated")}
    raw["exec"] = {k: v for k, v in doc["exec"].items() if k != "code"}
    return ActionMetaData.from_json(raw)


def creation(fqn: FullyQualifiedEntityName, revision: str | None, doc: dict[str, Any], host: str, port: int,
             namespace: str = "guest", scheduler: str = "scheduler0") -> ContainerCreationMessage:
    return ContainerCreationMessage(
        transid=TransactionId.new(secrets.token_hex(16), int(time.time() * 1000)),
        invocation_namespace=namespace, action=fqn, revision=revision, action_metadata=metadata(doc),
        root_scheduler_index=scheduler, scheduler_host=host, rpc_port=port, retry_count=0,
        creation_id=secrets.token_hex(16),
    )


def deletion(fqn: FullyQualifiedEntityName, revision: str | None, doc: dict[str, Any],
             namespace: str = "guest") -> ContainerDeletionMessage:
    return ContainerDeletionMessage(
        transid=TransactionId.new(secrets.token_hex(16), int(time.time() * 1000)),
        invocation_namespace=namespace, action=fqn, revision=revision, action_metadata=metadata(doc),
    )


class AckReader:
    """Reads ``creationAck{scheduler}`` from its end (assigned, no group) on a thread of its own."""

    def __init__(self, kafka: KafkaSettings, scheduler: str = "scheduler0") -> None:
        self.topic = kafka.topic(f"creationAck{scheduler}")
        ensure_topic(kafka, self.topic)
        self.acks: list[ContainerCreationAckMessage] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False,
                                       fetch_max_wait_ms=kafka.fetch_max_wait_ms, metrics_enabled=False)
        partition = TopicPartition(self.topic, 0)
        self._consumer.assign([partition])
        self._consumer.seek_to_end(partition)
        self._consumer.position(partition)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                for records in self._consumer.poll(timeout_ms=50).values():
                    for record in records:
                        ack = ContainerCreationAckMessage.parse(record.value)
                        with self._cond:
                            self.acks.append(ack)
                            self._cond.notify_all()
        finally:
            self._consumer.close()

    def wait_for(self, creation_id: str, timeout_s: float = 60.0) -> ContainerCreationAckMessage:
        def found() -> ContainerCreationAckMessage | None:
            return next((a for a in self.acks if a.creation_id == creation_id), None)

        with self._cond:
            ack = self._cond.wait_for(found, timeout_s)
        assert ack is not None, f"no creation ack for {creation_id} within {timeout_s} s"
        return ack

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
