"""A burst of records that are not ActivationMessages, on the real broker, then valid
activations (issue #12, point 1): each hostile record is dropped with one ERROR line
naming partition, offset and why; where its activation id and controller can still be
read, the controller gets a whisk-error completion; the valid activations are answered;
every offset commits; a restarted invoker reads none of them again."""

from __future__ import annotations

import json
import logging
import time

from fault_support import ECHO
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from invoker.embedded.controller import new_activation_id
from invoker.messages import serialize


def hostile_records(valid: bytes) -> tuple[list[bytes], list[str]]:
    """Records of several shapes, and the activation ids of those that can still be answered."""
    template = json.loads(valid)
    answerable: list[str] = []

    def broken(field: str, value) -> bytes:
        message = dict(template, activationId=new_activation_id())
        message[field] = value
        answerable.append(message["activationId"])
        return serialize(message)

    records: list[bytes] = []
    for _ in range(4):
        records += [
            b"null", b"[1,2]", b'"text"', b"{}", b"\xff\xfe\x00garbage",
            b"[" * 5000 + b"]" * 5000,  # deeply nested arrays
            broken("initArgs", 5), broken("lockedArgs", "ab"), broken("user", []),
        ]
    return records, answerable


def committed_offset(bootstrap: str, group: str, topic: str) -> int:
    """The group's committed offset, read without joining the group."""
    reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        offset = reader.committed(TopicPartition(topic, 0))
    finally:
        reader.close()
    return -1 if offset is None else offset


def test_hostile_burst_is_dropped_answered_and_committed(fault_deployment, kafka_bootstrap, couchdb_url, caplog):
    deployment = fault_deployment(kafka_bootstrap, couchdb_url)
    controller, invoker = deployment.controller, deployment.invoker
    fqn, rev = deployment.deploy("echo", ECHO, limits={"memory": 128})
    hostile, answerable = hostile_records(controller.message(fqn, rev, {"x": 1}).serialize())
    assert len(hostile) > 2 * invoker.feed.capacity  # more than enough to hold every slot
    topic = invoker.topic
    caplog.set_level(logging.ERROR, logger="invoker.reactive")
    for value in hostile:
        controller._producer.send(topic, value)
    valid = [controller.message(fqn, rev, {"n": i}, blocking=(i % 2 == 0)) for i in range(10)]
    controller.publish_many(deployment.instance, valid)

    for msg in valid:
        acks = controller.wait_for(msg.activation_id, timeout_s=60)
        assert not acks.slot_freeing[0].is_system_error
    for activation_id in answerable:  # freed at once, as a whisk error
        acks = controller.wait_for(activation_id, timeout_s=30)
        assert acks.slot_freeing[0].is_system_error
    for msg in valid:
        assert deployment.record(msg)["response"]["statusCode"] == 0

    assert invoker.reactive.malformed == len(hostile)
    drops = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropping record")]
    assert len(drops) == len(hostile), drops  # one ERROR line each
    assert all(f"{topic}-0@" in line for line in drops)
    end = len(hostile) + len(valid)
    deadline = time.monotonic() + 30
    while committed_offset(kafka_bootstrap, topic, topic) < end:
        assert time.monotonic() < deadline, "offsets did not commit"
        time.sleep(0.2)
    assert invoker.feed.in_flight == 0

    # A restart reads none of them again.
    invoker.stop()
    second = deployment.start_invoker()
    after = controller.message(fqn, rev, {"after": True})
    controller.invoke(deployment.instance, after, 60)
    assert second.reactive.malformed == 0
    assert second.reactive.replayed == 0 and second.reactive.duplicates == 0
    assert all(len(controller.acks(m.activation_id).slot_freeing) == 1 for m in valid)


def test_records_of_an_over_long_controller_id_free_their_slots_at_once(fault_deployment, kafka_bootstrap,
                                                                         couchdb_url):
    # Their acks could only go to a topic Kafka refuses: answered by nobody, dropped at once.
    deployment = fault_deployment(kafka_bootstrap, couchdb_url)
    controller, invoker = deployment.controller, deployment.invoker
    fqn, rev = deployment.deploy("echo", ECHO, limits={"memory": 128})
    template = json.loads(controller.message(fqn, rev, {"x": 1}).serialize())
    for _ in range(invoker.feed.capacity + 4):
        hostile = dict(template, activationId=new_activation_id(),
                       rootControllerIndex={"asString": "c" * 300, "instanceType": "controller"})
        controller._producer.send(invoker.topic, serialize(hostile))
    valid = [controller.message(fqn, rev, {"n": i}) for i in range(3)]
    controller.publish_many(deployment.instance, valid)
    for msg in valid:  # not after the hostile acks' 600 s deadline
        assert not controller.wait_for(msg.activation_id, timeout_s=30).slot_freeing[0].is_system_error
    assert invoker.reactive.malformed == invoker.feed.capacity + 4
