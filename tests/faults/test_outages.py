"""Outages ridden out with nothing lost (issue #12, point 3): the Kafka broker killed and
restarted after longer than the producer's own retries; the CouchDB-API store stopped and
started again. Every activation in flight gets its slot-freeing ack and exactly one record.

The embedded Tansu broker keeps topics and offsets in memory only (its binary has no
persistent storage engine), so after its restart the test recreates the topics, as an
operator would, and reads the acks from the start of the new log."""

from __future__ import annotations

import os
import time

from fault_support import SLEEPER, AckReader, records_of, wait_started

from invoker.embedded.controller import EmbeddedController
from invoker.messaging import INVOKER_TOPIC_CONFIG, ensure_topic

BROKER_OUTAGE_S = 8.0  # longer than the producer's own retries (--kafka-delivery-timeout-ms 2000)
# "Several minutes" in production; the mechanism does not depend on it (records are retried
# until written). FAULTS_STORE_OUTAGE_S lengthens it, e.g. past the old fixed 30 s deadline.
STORE_OUTAGE_S = float(os.environ.get("FAULTS_STORE_OUTAGE_S", "12"))


def test_broker_killed_longer_than_producer_retries_loses_no_ack(
        kafka_broker_factory, couchdb_url, fault_deployment, tmp_path):
    broker = kafka_broker_factory()
    deployment = fault_deployment(broker.bootstrap_servers, couchdb_url,
                                  ["--ack-deadline", "120 s", "--kafka-delivery-timeout-ms", "2000"])
    invoker, controller = deployment.invoker, deployment.controller
    fqn, rev = deployment.deploy("sleeper", SLEEPER, limits={"memory": 128})
    deployment.invoke(fqn, rev, {"n": -1})  # warm the path
    journal = tmp_path / "journal"
    in_flight = [controller.message(fqn, rev, {"sleep": 4, "n": i, "journal": str(journal)}, blocking=(i % 2 == 0))
                 for i in range(6)]
    controller.publish_many(deployment.instance, in_flight)
    wait_started(journal, len(in_flight))

    broker._proc.kill()  # SIGKILL, mid-flight
    broker.stop()
    time.sleep(BROKER_OUTAGE_S)
    broker.start()  # same port, empty (memory storage)
    kafka = controller.kafka
    for topic in (controller.completed_topic, controller.health_topic):
        ensure_topic(kafka, topic)
    ensure_topic(kafka, invoker.topic, configs=INVOKER_TOPIC_CONFIG)
    reader = AckReader(broker.bootstrap_servers, controller.completed_topic)
    try:
        ids = [m.activation_id for m in in_flight]
        reader.wait_for(ids, timeout_s=120)
        # The invoker consumes the new log as well.
        with EmbeddedController(kafka) as fresh:
            after = fresh.message(fqn, rev, {"n": 99})
            fresh.publish(deployment.instance, after)
            reader.wait_for([after.activation_id], timeout_s=60)
        deadline = time.monotonic() + 30
        while any(records_of(couchdb_url, deployment).get(i) != 1 for i in ids):
            assert time.monotonic() < deadline, records_of(couchdb_url, deployment)
            time.sleep(0.2)
        assert all(reader.slot_freeing[i] == 1 for i in ids), reader.slot_freeing
        assert invoker.reactive.acks_retried > 0  # the outage did outlast the producer's retries
        assert invoker.feed.in_flight == 0
    finally:
        reader.close()


def test_store_stopped_loses_no_record_and_commits_nothing_early(
        persistent_couch, kafka_bootstrap, fault_deployment, tmp_path):
    couch = persistent_couch()
    deployment = fault_deployment(kafka_bootstrap, couch.url)
    invoker, controller = deployment.invoker, deployment.controller
    fqn, rev = deployment.deploy("sleeper", SLEEPER, limits={"memory": 128})
    warm, _ = deployment.invoke(fqn, rev, {"n": -1})  # the action is cached from here on
    deployment.record(warm)  # and its record written: only what follows waits for the store
    journal = tmp_path / "journal"
    before = [controller.message(fqn, rev, {"sleep": 2, "n": i, "journal": str(journal)}, blocking=(i % 2 == 0))
              for i in range(6)]
    controller.publish_many(deployment.instance, before)
    wait_started(journal, len(before))

    couch.stop()
    outage_started = time.monotonic()
    during = [controller.message(fqn, rev, {"n": 10 + i}, blocking=(i % 2 == 0)) for i in range(4)]
    controller.publish_many(deployment.instance, during)
    for msg in before + during:  # they run and are answered; their records wait
        controller.wait_for(msg.activation_id, timeout_s=60)
    deadline = time.monotonic() + 30
    while invoker.healthy:  # records cannot be written: no more pings, no more work
        assert time.monotonic() < deadline, "the invoker kept calling itself healthy"
        time.sleep(0.2)
    pings = len(controller.pings)
    time.sleep(max(0.0, STORE_OUTAGE_S - (time.monotonic() - outage_started)))
    assert invoker.feed.in_flight == len(before) + len(during)  # no offset committed ahead of its record
    assert len(controller.pings) <= pings + 1

    couch.start()  # same port, same files
    deadline = time.monotonic() + 60
    ids = [m.activation_id for m in before + during]
    while any(records_of(couch.url, deployment).get(i) != 1 for i in ids):
        assert time.monotonic() < deadline, records_of(couch.url, deployment)
        time.sleep(0.2)
    while invoker.feed.in_flight or not invoker.healthy:
        assert time.monotonic() < deadline, "slots or pings did not come back with the store"
        time.sleep(0.2)
    controller.wait_for_ping(10, after=len(controller.pings))
