"""The embedded controller in a long-running standalone mode keeps bounded state: the pings
it read are a window of the newest, however long it runs (on the real embedded broker)."""

from __future__ import annotations

import uuid

from kafka import KafkaProducer

from invoker.embedded.controller import EmbeddedController
from invoker.messages import ByteSize, InvokerInstanceId, PingMessage, serialize
from invoker.messaging import KafkaSettings


def test_pings_are_kept_as_a_bounded_window_of_the_newest(kafka_bootstrap: str) -> None:
    kafka = KafkaSettings(kafka_bootstrap, topic_prefix=f"pings{uuid.uuid4().hex[:6]}_", fetch_max_wait_ms=5)
    with EmbeddedController(kafka, keep_pings=10) as controller:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
        try:
            for n in range(50):
                ping = PingMessage(InvokerInstanceId(n, ByteSize(1024 * 1024 * 1024)))
                producer.send(kafka.topic("health"), serialize(ping.to_json()))
            producer.flush()
        finally:
            producer.close()
        last = controller.wait_for_ping(30, after=49)
        assert last.instance.instance == 49
        assert controller.ping_count == 50
        assert [p.instance.instance for p in controller.pings] == list(range(40, 50))
