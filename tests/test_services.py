"""The real services the integration tests stand on: broker and CouchDB API answer as expected."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
import requests
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from services import CouchServer, EmbeddedKafka, free_port

# The embedded broker holds a group join for a whole rebalance timeout (max_poll_interval_ms).
FAST_GROUP = {"max_poll_interval_ms": 5000, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def _new_topic(bootstrap: str) -> str:
    topic = f"services-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    return topic


def _poll_values(consumer: KafkaConsumer, want: int, timeout_s: float) -> list[bytes]:
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(values) < want and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            values.extend(record.value for record in records)
    return values


def test_free_port_is_bindable() -> None:
    assert 0 < free_port() < 65536


def test_broker_produce_and_consume(kafka_bootstrap: str) -> None:
    topic = _new_topic(kafka_bootstrap)
    sent = [f"message {i}".encode() for i in range(3)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for value in sent:
        producer.send(topic, value)
    producer.flush(10)
    producer.close()

    # Without a group: assign the partition and read from the start.
    plain = KafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                          enable_auto_commit=False)
    plain.assign([TopicPartition(topic, 0)])
    try:
        assert _poll_values(plain, len(sent), 10) == sent
    finally:
        plain.close()

    # With a group: the join goes through the broker's group coordinator.
    grouped = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=f"g-{topic}",
                            auto_offset_reset="earliest", **FAST_GROUP)
    try:
        assert _poll_values(grouped, len(sent), 30) == sent
    finally:
        grouped.close()


def test_couchdb_database_and_document(couchdb_url: str) -> None:
    db = f"{couchdb_url}/services_{uuid.uuid4().hex[:8]}"
    assert requests.put(db, timeout=10).status_code == 201
    # OpenWhisk document ids contain '/', sent URL-encoded.
    doc = requests.put(f"{db}/guest%2Fhello", json={"value": 1}, timeout=10)
    assert doc.status_code == 201, doc.text
    got = requests.get(f"{db}/guest%2Fhello", timeout=10).json()
    assert got["_id"] == "guest/hello"
    assert got["value"] == 1
    assert got["_rev"] == doc.json()["rev"]


def test_couchdb_restart_keeps_url_and_loses_data(couchdb_server_factory: Callable[..., CouchServer],
                                                  couchdb_url: str) -> None:
    server = couchdb_server_factory()
    assert server.url != couchdb_url
    assert requests.put(f"{server.url}/gone", timeout=10).status_code == 201
    url = server.url
    server.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/", timeout=2)
    server.start()
    assert server.url == url
    assert requests.get(f"{url}/gone", timeout=10).status_code == 404


def test_broker_restart_on_same_port(kafka_broker_factory: Callable[..., EmbeddedKafka],
                                     kafka_bootstrap: str) -> None:
    broker = kafka_broker_factory()
    assert broker.bootstrap_servers != kafka_bootstrap
    topic = _new_topic(broker.bootstrap_servers)
    bootstrap = broker.bootstrap_servers
    broker.restart()
    assert broker.bootstrap_servers == bootstrap
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        assert topic not in admin.list_topics()  # memory storage starts empty
    finally:
        admin.close()
