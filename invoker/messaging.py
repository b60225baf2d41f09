"""Kafka: the ``invoker{N}`` feed, the ack/ping producer and topic creation.

Delivery differs from the Scala invoker on purpose (``InvokerReactive.scala`` and its
``MessageFeed``, in ``MessageConsumer.scala``): Scala
commits right after each poll (at-most-once, a crash loses what was peeked).
This feed commits an offset only when every activation up to it is *done* —
acked and recorded — so a crash loses nothing; the reactive layer makes the
replay harmless by answering from the stored record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, MessageSizeTooLargeError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata, TopicPartition

from invoker.errors import BrokerUnavailable, RecordTooLarge
from invoker.supervision import RestartPolicy, SupervisedThread

__all__ = ["ActivationFeed", "BrokerUnavailable", "FeedRecord", "KafkaSettings", "Producer", "RecordTooLarge",
           "ensure_topic"]

log = logging.getLogger(__name__)

# CRC-32C of b"123456789", the algorithm's published check value.
_CRC32C_CHECK = 0xE3069283


def use_c_crc32c() -> bool:
    """Have kafka-python compute record-batch CRCs in C. It checks a CRC-32C over every batch
    it writes or reads, in pure Python unless the ``crc32c`` package is installed, which is
    LGPL (not for an Apache project): that was a sixth of the invoker's CPU in a warm burst
    (bench/results/invoker_overhead_profile.md). ``google-crc32c`` (Apache-2.0) computes
    the same sum in C. True when the C sum is in use; without it nothing changes."""
    try:
        import google_crc32c
        from kafka.record import default_records
    except ImportError:
        return False
    if google_crc32c.implementation != "c" or not callable(getattr(default_records, "calc_crc32c", None)):
        return False

    def calc_crc32c(data) -> int:
        return google_crc32c.value(bytes(data))  # it takes read-only buffers only

    if calc_crc32c(memoryview(bytearray(b"123456789"))) != _CRC32C_CHECK:
        return False
    default_records.calc_crc32c = calc_crc32c
    return True


use_c_crc32c()  # before any client exists; one sum for the whole process, like kafka-python's own choice

# Payload max (1 MiB) plus OpenWhisk's serdes overhead: the max.message.bytes of
# the invoker and completed topics, and the producer's max.request.size.
MAX_MESSAGE_BYTES = 1024 * 1024 + 6068


# Clocks of the controller (record timestamps) and this host may differ this much.
REPLAY_CLOCK_SKEW_MS = 5_000


# A broker that went away should be found again within a second or two once it is back
# (kafka-python's default backs off up to 30 s between reconnects).
RECONNECT_BACKOFF_MAX_MS = 1_000


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    topic_prefix: str = ""
    # Group-membership timings: production Kafka's defaults are fine; an embedded
    # broker that waits a whole rebalance timeout on join wants them short.
    session_timeout_ms: int = 30_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    # How long the broker may hold a fetch with no data. Kafka answers as soon as a
    # record arrives; some embedded brokers wait the whole time, so they want it short.
    fetch_max_wait_ms: int = 500
    # How long the producer itself retries a record before its future fails; the ack
    # layer (AckPolicy) retries beyond that.
    producer_delivery_timeout_ms: int = 30_000
    extra: dict = field(default_factory=dict)  # passed to every client (security settings)

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


def ensure_topic(settings: KafkaSettings, name: str, partitions: int = 1, configs: dict | None = None) -> None:
    """Create a topic if missing, as ``Invoker.scala`` does with ``ensureTopic``."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **settings.extra)
    try:
        try:
            admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})])
        except TopicAlreadyExistsError:
            pass
        except KafkaError as error:
            if configs:
                # Some Kafka-protocol brokers reject topic configs they do not know.
                log.info("creating %s with configs failed (%s); creating it without", name, error)
                try:
                    admin.create_topics([NewTopic(name, partitions, 1)])
                except TopicAlreadyExistsError:
                    pass
            else:
                raise
    finally:
        admin.close()


INVOKER_TOPIC_CONFIG = {
    "retention.ms": str(48 * 3600 * 1000),
    "segment.bytes": str(512 * 1024 * 1024),
    "max.message.bytes": str(MAX_MESSAGE_BYTES),
}


class Producer:
    """Acks and pings. ``send`` returns a future resolved once the broker has the record."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._producer = KafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            acks=1,
            linger_ms=0,
            max_request_size=MAX_MESSAGE_BYTES,
            retries=5,
            # One in flight per connection keeps a blocking call's ResultMessage
            # ahead of its CompletionMessage, as the controller expects.
            max_in_flight_requests_per_connection=1,
            metrics_enabled=False,  # nothing reads them; they cost a sensor update per request
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
            # A send must not hold the caller (a pool thread) for a minute when the broker is
            # away: it fails fast and the ack layer retries with backoff (AckPolicy).
            max_block_ms=5_000,
            delivery_timeout_ms=settings.producer_delivery_timeout_ms,
            request_timeout_ms=min(30_000, settings.producer_delivery_timeout_ms // 2),  # must be below it
            **settings.extra,
        )

    def send(self, topic: str, value: bytes) -> Future:
        """A future resolved once the broker has the record. Failures are ``RecordTooLarge``
        or ``BrokerUnavailable`` (chained to kafka-python's error), raised here or set on
        the future."""
        result: Future = Future()
        try:
            record = self._producer.send(topic, value)
        except KafkaError as error:
            raise _broker_error(error) from error
        record.add_callback(lambda _meta: result.set_result(None))
        record.add_errback(lambda error: result.set_exception(_broker_error(error)))
        return result

    def flush(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        self._producer.close(timeout=timeout_s)


def _broker_error(error: BaseException) -> Exception:
    """The one seam from kafka-python's errors to the invoker's."""
    if isinstance(error, MessageSizeTooLargeError):
        mapped: Exception = RecordTooLarge(str(error))
    else:
        mapped = BrokerUnavailable(f"{type(error).__name__}: {error}")
    mapped.__cause__ = error
    return mapped


@dataclass(frozen=True)
class FeedRecord:
    partition: TopicPartition
    offset: int
    value: bytes
    #: True for records that a previous run of this invoker may already have
    #: processed (they sat between the committed offset and the end of the
    #: partition when this run started).
    maybe_replayed: bool
    #: Which life of the partition's log the offset belongs to: a broker without
    #: persistence that restarts starts its offsets again at 0.
    generation: int = 0


class _PartitionProgress:
    """Offsets handed out and finished; the commit point is the lowest unfinished one."""

    def __init__(self, generation: int = 0) -> None:
        self.generation = generation
        self.pending: set[int] = set()
        self.highest_seen = -1
        self.committed = -1

    def commit_point(self) -> int | None:
        point = min(self.pending) if self.pending else self.highest_seen + 1
        return point if point > self.committed and self.highest_seen >= 0 else None


class ActivationFeed:
    """Consumes ``invoker{N}`` on its own thread, hands at most ``capacity`` records
    at once to ``handler``, and commits what is done.

    The consumer thread is supervised: if it dies, a new consumer takes over (records
    still in flight are not handed out again); if it keeps dying, ``on_fatal`` is called.
    ``consuming`` says whether it is alive and polling: the invoker pings only then.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        capacity: int,
        handler: Callable[[FeedRecord], None],
        poll_timeout_ms: int = 100,
        commit_interval_ms: int = 50,
        on_fatal: Callable[[BaseException], None] | None = None,
        restart_policy: RestartPolicy | None = None,
        stall_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.capacity = capacity
        self.handler = handler
        self.poll_timeout_ms = poll_timeout_ms
        # A commit is a broker round trip on this thread: under load, one per interval
        # rather than one per poll. A crash replays at most this much more (harmless).
        self.commit_interval_ms = commit_interval_ms
        # A loop that has not come round for this long cannot be consuming.
        self.stall_s = stall_s
        self._last_commit = 0.0
        self._last_tick = 0.0
        self._lock = threading.Lock()
        self._in_flight = 0
        self._freed = threading.Event()  # set by done(): a slot came free
        self._progress: dict[TopicPartition, _PartitionProgress] = {}
        self._replay_end: dict[TopicPartition, int] = {}
        self._stop = threading.Event()
        self._on_fatal = on_fatal or (lambda error: None)
        self._thread = SupervisedThread(f"feed-{topic}", self._run_consumer, self._on_fatal,
                                        restart_policy or RestartPolicy(), self._stop)
        self._consumer: KafkaConsumer | None = None
        self._paused = False
        self.ready = threading.Event()  # set once partitions are assigned
        self._started_ms = int(time.time() * 1000)
        self.restarts = 0

    def start(self) -> None:
        self._last_tick = time.monotonic()  # consuming from the start, not from the first poll
        self._thread.start()

    def _new_consumer(self) -> KafkaConsumer:
        consumer = KafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=self.topic,
            client_id=f"consumer-{self.topic}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.capacity,
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=self.settings.heartbeat_interval_ms,
            max_poll_interval_ms=self.settings.max_poll_interval_ms,
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            metrics_enabled=False,
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
            **self.settings.extra,
        )
        consumer.subscribe([self.topic])
        return consumer

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    @property
    def consuming(self) -> bool:
        """Alive and polling: the loop came round within ``stall_s``."""
        return (self._thread.alive and not self._stop.is_set()
                and time.monotonic() - self._last_tick < self.stall_s)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def done(self, record: FeedRecord) -> None:
        """The record's activation is finished (or was skipped): it may be committed."""
        with self._lock:
            progress = self._progress.get(record.partition)
            if progress is not None and progress.generation == record.generation:
                progress.pending.discard(record.offset)
            self._in_flight -= 1
        self._freed.set()

    # ------------------------------------------------------------------ the consumer thread

    def _run_consumer(self) -> None:
        """One consumer's life; raising hands over to the supervisor (restart or fatal)."""
        if self._consumer is not None:
            self.restarts += 1
            self._paused = False
        self._last_tick = time.monotonic()
        consumer = self._consumer = self._new_consumer()
        try:
            self._loop(consumer)
        finally:
            try:
                consumer.close(autocommit=False)
            except Exception:
                log.exception("closing the consumer of %s failed", self.topic)

    def _loop(self, consumer: KafkaConsumer) -> None:
        while not self._stop.is_set():
            self._last_tick = time.monotonic()
            self._freed.clear()
            free = self.capacity - self.in_flight
            # Full: wait for a slot here rather than in poll(), which would not wake
            # when one frees (and sleeps its retry backoff on paused partitions). The
            # partitions stay resumed meanwhile, so the fetcher keeps records ready;
            # only a pool that stays full gets them paused.
            if free <= 0 and self._freed.wait(self.poll_timeout_ms / 1000):
                continue
            self._flow_control(consumer, free > 0)
            batch = consumer.poll(timeout_ms=self.poll_timeout_ms if free > 0 else 0, max_records=max(free, 1))
            if consumer.assignment() and not self.ready.is_set():
                self._note_replay_window(consumer)
                self.ready.set()
            for partition, records in batch.items():
                for record in records:
                    self._dispatch(partition, record.offset, record.value, record.timestamp)
            if not batch or time.monotonic() - self._last_commit >= self.commit_interval_ms / 1000:
                self._commit(consumer)
        self._commit(consumer)

    def _flow_control(self, consumer: KafkaConsumer, want_records: bool) -> None:
        # Paused partitions keep the consumer in its group (poll still heartbeats)
        # while we take no more than the pool can run.
        assignment = consumer.assignment()
        if not assignment:
            return
        if want_records and self._paused:
            consumer.resume(*assignment)
            self._paused = False
        elif not want_records and not self._paused:
            consumer.pause(*assignment)
            self._paused = True

    def _note_replay_window(self, consumer: KafkaConsumer) -> None:
        partitions = list(consumer.assignment())
        try:
            self._replay_end = consumer.end_offsets(partitions)
        except KafkaError as error:
            log.warning("cannot read end offsets (%s): checking every record for a replay", error)
            self._replay_end = {p: 2**62 for p in partitions}

    def _dispatch(self, partition: TopicPartition, offset: int, value: bytes, timestamp_ms: int | None = None) -> None:
        end = self._replay_end.get(partition)
        if end is None and partition not in self._replay_end:
            end = 2**62  # assigned later (rebalance): be safe
        # Some Kafka-protocol brokers (Tansu) report end offsets per batch, not per
        # record, so a record written before this run started counts as well.
        written_before_start = timestamp_ms is not None and 0 <= timestamp_ms < self._started_ms + REPLAY_CLOCK_SKEW_MS
        with self._lock:
            progress = self._progress.setdefault(partition, _PartitionProgress())
            if offset <= progress.committed - 1 and offset not in progress.pending:
                # Below what we committed: the broker lost its log (one without persistence
                # restarted) and numbers its records from 0 again. A new life of the log.
                log.warning("%s: offset %d is below the committed %d: the broker's log was recreated; "
                            "following the new one", partition, offset, progress.committed)
                progress = self._progress[partition] = _PartitionProgress(progress.generation + 1)
            elif offset <= progress.highest_seen:
                # A rebalance rewinds the consumer to the committed offset, so records
                # this process already has in flight (or finished) come again: skip them.
                return
            progress.pending.add(offset)
            progress.highest_seen = max(progress.highest_seen, offset)
            self._in_flight += 1
            generation = progress.generation
        record = FeedRecord(partition, offset, value, maybe_replayed=offset < end or written_before_start,
                            generation=generation)
        try:
            self.handler(record)
        except Exception:
            log.exception("dropping record %s-%d@%d: the handler failed on it", partition.topic,
                          partition.partition, offset)
            self.done(record)

    def _commit(self, consumer: KafkaConsumer) -> None:
        self._last_commit = time.monotonic()
        offsets = {}
        with self._lock:
            for partition, progress in self._progress.items():
                point = progress.commit_point()
                if point is not None:
                    offsets[partition] = (progress, point)
        if not offsets:
            return
        try:
            consumer.commit({p: OffsetAndMetadata(point, "", -1) for p, (_, point) in offsets.items()})
        except KafkaError as error:
            log.warning("offset commit failed, will retry: %s", error)
            return
        with self._lock:
            for progress, point in offsets.values():
                progress.committed = max(progress.committed, point)
