"""OpenWhisk 1.0's protocol (``InvokerReactive`` with ``DefaultInvokerServer``): activations
pushed on ``invoker{N}`` run by ``reactive``, acks to ``completed{C}``, pings on ``health``."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from invoker.frontends.base import CLASSIC, InvokerParts
from invoker.messages import PingMessage, serialize
from invoker.messaging import INVOKER_TOPIC_CONFIG, ActivationFeed, ensure_topic
from invoker.reactive import InvokerReactive

log = logging.getLogger(__name__)

MIN_ACTION_MEMORY_MB = 128


@dataclass(frozen=True)
class ClassicSettings:
    max_peek: int | None = None
    ping_interval_s: float = 1.0
    # Pings stop once records have failed to be written for this long: the controller
    # then sends its work elsewhere instead of to an invoker that cannot record it.
    store_outage_unhealthy_s: float = 5.0


class ClassicFrontEnd:
    name = CLASSIC

    def __init__(self, parts: InvokerParts, settings: ClassicSettings = ClassicSettings()) -> None:
        self.parts = parts
        self.settings = settings
        self.reactive = InvokerReactive(
            instance=parts.instance,
            producer=parts.producer,
            entities=parts.entities,
            activations=parts.activations,
            pool=parts.pool,
            manifest=parts.manifest,
            runnable_kind=parts.runnable_kind,
            topic_prefix=parts.kafka.topic_prefix,
            store_policy=parts.store_policy,
            ack_policy=parts.ack_policy,
        )
        user_memory_mb = parts.instance.user_memory.megabytes
        max_peek = settings.max_peek or max(user_memory_mb // MIN_ACTION_MEMORY_MB, 16)
        self.topic = parts.kafka.topic(f"invoker{parts.instance.instance}")
        self.feed = ActivationFeed(parts.kafka, self.topic, max_peek, self.reactive.handle,
                                   on_fatal=parts.fatal("activation feed"))
        self.reactive.done = self.feed.done
        self.enabled = True
        self._stop = threading.Event()
        self._pinger = threading.Thread(target=self._ping_loop, name="health-ping", daemon=True)

    def start(self) -> None:
        ensure_topic(self.parts.kafka, self.topic, configs=INVOKER_TOPIC_CONFIG)
        self.feed.start()
        self._pinger.start()  # after the feed: it pings only while the feed consumes

    def stop(self) -> None:
        self._stop.set()
        self.feed.stop()
        self.reactive.close()

    def close(self) -> None:
        self.parts.producer.send(self.parts.kafka.topic("health"),
                                 serialize(PingMessage(self.parts.instance, False).to_json()))

    def wait_ready(self, timeout_s: float) -> bool:
        """Until the feed has its partitions (group join can take seconds)."""
        return self.feed.ready.wait(timeout_s)

    @property
    def healthy(self) -> bool:
        """Pinging is a promise to take work: only while the feed consumes and records land."""
        if self.parts.failed.is_set() or not self.feed.consuming:
            return False
        return self.parts.activations.outage_s < self.settings.store_outage_unhealthy_s

    def set_enabled(self, enabled: bool) -> None:
        if self.enabled and not enabled:
            self.parts.producer.send(self.parts.kafka.topic("health"),
                                     serialize(PingMessage(self.parts.instance, False).to_json()))
        self.enabled = enabled

    def _ping_loop(self) -> None:
        topic = self.parts.kafka.topic("health")
        store = self.parts.activations
        was_healthy = True
        while not self._stop.is_set():
            healthy = self.healthy
            if healthy != was_healthy and not self._stop.is_set():
                log.log(logging.INFO if healthy else logging.ERROR, "health pings %s: feed %s, records %s",
                        "resume" if healthy else "stop", "consuming" if self.feed.consuming else "not consuming",
                        f"failing for {store.outage_s:.0f} s" if store.outage_s else "landing")
                was_healthy = healthy
            if self.enabled and healthy:
                try:
                    self.parts.producer.send(topic, serialize(PingMessage(self.parts.describe()).to_json()))
                except Exception as error:  # the broker may be away; keep pinging
                    log.warning("health ping failed: %s", error)
            self._stop.wait(self.settings.ping_interval_s)
