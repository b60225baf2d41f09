"""Invoker overhead and warm throughput, measured side by side in one run.

* overhead: publish → slot-freeing ack for a warm no-op action, p50/p99;
* floor: what no invoker can beat on this machine — a Kafka round trip of the
  same shape (controller → topic → relay → topic → controller) plus a direct
  ``/run`` to the same runtime, measured interleaved with the invoker samples;
* throughput: N activations published at once, completions per second.

Run: ``.venv/bin/python bench/invoker_overhead.py [--samples 500] [--burst 2000]``.
Writes ``bench/results/invoker_overhead.json`` with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import threading
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from invoker.cli import build_invoker
from invoker.config import load_config
from invoker.containerpool.container import RuntimeClient
from invoker.embedded.broker import EmbeddedKafka
from invoker.embedded.controller import EmbeddedController
from invoker.embedded.standalone import EMBEDDED_KAFKA_TIMINGS
from invoker.entities import action_document
from invoker.messages import FullyQualifiedEntityName
from invoker.messaging import KafkaSettings, ensure_topic
from invoker.store.embedded import EmbeddedServer
from invoker.store.entities import EntityStore

NOOP = "def main(args):\n    return {}\n"
SLEEPER = "import time\n\ndef main(args):\n    time.sleep({s})\n    return {{}}\n"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RESULTS = Path(__file__).parent / "results"


def descendants_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) of each process below this one, by command name: where
    the rest of an activation's CPU goes (broker, store, runtimes)."""
    parents: dict[int, int] = {}
    stats: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        name, rest = raw[raw.index("(") + 1:raw.rindex(")")], raw[raw.rindex(")") + 2:].split()
        parents[int(entry.name)] = int(rest[1])
        stats[int(entry.name)] = (name, (int(rest[11]) + int(rest[12])) / CLOCK_TICKS)
    below, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
        below |= frontier
    totals: dict[str, float] = {}
    for pid in below:
        name, cpu = stats[pid]
        totals[name] = totals.get(name, 0.0) + cpu
    return totals


def threads_cpu_s() -> dict[int, float]:
    """CPU seconds of each thread of this process, by thread id (``/proc/self/task``)."""
    cpu = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2:].split()
        cpu[int(task.name)] = (int(rest[11]) + int(rest[12])) / CLOCK_TICKS
    return cpu


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class KafkaRelayFloor:
    """A → relay → B: the two broker hops an activation makes, with nothing else."""

    def __init__(self, bootstrap: str) -> None:
        self.settings = KafkaSettings(bootstrap)
        for topic in ("floor-in", "floor-out"):
            ensure_topic(self.settings, topic)
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
        self._got = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Barrier(3)
        self._threads = [threading.Thread(target=self._relay, daemon=True),
                         threading.Thread(target=self._sink, daemon=True)]
        for thread in self._threads:
            thread.start()
        self._ready.wait(30)

    def _consumer(self, topic: str) -> KafkaConsumer:
        consumer = KafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, enable_auto_commit=False,
                                 fetch_max_wait_ms=5)
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_end(partition)
        consumer.position(partition)
        return consumer

    def _relay(self) -> None:
        consumer = self._consumer("floor-in")
        self._ready.wait(30)
        while not self._stop.is_set():
            for records in consumer.poll(timeout_ms=50).values():
                for record in records:
                    self.producer.send("floor-out", record.value)
        consumer.close()

    def _sink(self) -> None:
        consumer = self._consumer("floor-out")
        self._ready.wait(30)
        while not self._stop.is_set():
            if consumer.poll(timeout_ms=50):
                self._got.set()
        consumer.close()

    def round_trip_ms(self) -> float:
        self._got.clear()
        start = time.perf_counter()
        self.producer.send("floor-in", b'{"x":1}')
        self.producer.flush()
        self._got.wait(10)
        return (time.perf_counter() - start) * 1000

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self.producer.close(5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--user-memory", default="2048 m")
    parser.add_argument("--max-peek", default=None, help="activations taken from Kafka at once (invoker default)")
    parser.add_argument("--action-ms", type=float, default=0.0, help="the action sleeps this long (0: a no-op)")
    parser.add_argument("--prefill", type=int, default=0,
                        help="an unmeasured burst of this many first, so the pool is warm up to its size")
    parser.add_argument("--out", default="invoker_overhead.json", help="file name under bench/results/")
    args = parser.parse_args()

    with EmbeddedKafka() as broker:
        store = EmbeddedServer()
        peek = ["--max-peek", args.max_peek] if args.max_peek else []
        config = load_config(["--id", "0", "--port", "0", "--user-memory", args.user_memory, *peek,
                              *EMBEDDED_KAFKA_TIMINGS], env={})
        whisks, activations = store.database(config.db_whisks), store.database(config.db_activations)
        whisks.ensure_exists()
        activations.ensure_exists()
        kafka = KafkaSettings(broker.bootstrap_servers, session_timeout_ms=6000, heartbeat_interval_ms=1000,
                              max_poll_interval_ms=5000, fetch_max_wait_ms=5)
        controller = EmbeddedController(kafka)
        # Threads that exist before the invoker does are the bench's: its main thread and the
        # embedded controller's readers and Kafka clients (the real controller runs elsewhere).
        bench_threads = {thread.native_id for thread in threading.enumerate()}
        bench_threads |= set(threads_cpu_s())
        invoker = build_invoker(config, broker.bootstrap_servers, env={}, whisks=whisks, activations=activations)
        invoker.start()
        assert invoker.wait_ready(60), "invoker never joined its topic"
        doc = action_document("guest", "noop", "python:3", None, False)
        doc["limits"]["memory"] = 128
        doc["limits"]["logs"] = 0  # a pure no-op: one Combined ack, no log collection
        code = SLEEPER.format(s=args.action_ms / 1000) if args.action_ms else NOOP
        rev = EntityStore(whisks).put_action(doc, code, False)
        fqn = FullyQualifiedEntityName("guest", "noop", "0.0.1")
        floor = KafkaRelayFloor(broker.bootstrap_servers)

        # Warm up: the cold start, and a few runs so every path is hot.
        for _ in range(20):
            controller.invoke(0, controller.message(fqn, rev, {}), timeout_s=60)
        warm = [p for p in invoker.pool._containers if p.action is not None][0]
        direct = RuntimeClient(warm.container.client.host, warm.container.client.port,
                               secret=warm.container.client.secret)
        run_payload = {"value": {}, "namespace": "guest", "action_name": "/guest/noop", "action_version": "0.0.1",
                       "activation_id": "0" * 32, "transaction_id": "bench", "deadline": "0"}

        invoker_ms, kafka_ms, run_ms = [], [], []
        for _ in range(args.samples):  # interleaved, so noise hits all three alike
            msg = controller.message(fqn, rev, {})
            start = time.perf_counter()
            controller.invoke(0, msg, timeout_s=60)
            invoker_ms.append((time.perf_counter() - start) * 1000)
            kafka_ms.append(floor.round_trip_ms())
            while warm.active:  # the container is ours again before the direct call
                time.sleep(0.0005)
            start = time.perf_counter()
            outcome = direct.post("/run", run_payload, 10)
            run_ms.append((time.perf_counter() - start) * 1000)
            assert outcome.status == 200
        floor_ms = [k + r for k, r in zip(kafka_ms, run_ms, strict=True)]

        # Throughput: a burst of blocking no-ops, all published at once. The floor's
        # clients go first: idle, they would still poll the broker from this process.
        floor.close()
        if args.prefill:
            prefill = [controller.message(fqn, rev, {}) for _ in range(args.prefill)]
            controller.publish_many(0, prefill)
            for msg in prefill:
                controller.wait_for(msg.activation_id, timeout_s=300)
        messages = [controller.message(fqn, rev, {}) for _ in range(args.burst)]
        start, cpu_start, others_start = time.perf_counter(), time.process_time(), descendants_cpu_s()
        threads_start = threads_cpu_s()
        controller.publish_many(0, messages)
        for msg in messages:
            controller.wait_for(msg.activation_id, timeout_s=300)
        burst_s = time.perf_counter() - start
        burst_cpu_s = time.process_time() - cpu_start
        others_end = descendants_cpu_s()
        threads_end = threads_cpu_s()
        per_thread = {tid: cpu - threads_start.get(tid, 0.0) for tid, cpu in threads_end.items()}
        bench_side_s = sum(cpu for tid, cpu in per_thread.items() if tid in bench_threads)
        invoker_s = sum(cpu for tid, cpu in per_thread.items() if tid not in bench_threads)
        names = {thread.native_id: thread.name for thread in threading.enumerate()}
        by_name: dict[str, float] = {}
        for tid, cpu in per_thread.items():
            # pool threads by their pool ("activation_3" -> "activation"); the bench's marked
            name = re.sub(r"_\d+$", "", names.get(tid, "(unnamed)"))
            name = f"bench: {name}" if tid in bench_threads else name
            by_name[name] = by_name.get(name, 0.0) + cpu
        threads_ms = {name: round(cpu * 1000 / args.burst, 3)
                      for name, cpu in sorted(by_name.items(), key=lambda item: -item[1]) if cpu > 0}
        others_ms = {name: round((cpu - others_start.get(name, 0.0)) * 1000 / args.burst, 3)
                     for name, cpu in sorted(others_end.items())}
        pool = invoker.pool.snapshot()
        controller.close()
        invoker.stop()

    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "broker": "Tansu (embedded, memory storage)", "store": "embedded", "backend": "process",
        "samples": args.samples, "max_peek": invoker.feed.capacity, "user_memory": args.user_memory,
        "invoker_publish_to_ack_ms": {"p50": statistics.median(invoker_ms), "p99": percentile(invoker_ms, 0.99)},
        "floor_ms": {"p50": statistics.median(floor_ms), "p99": percentile(floor_ms, 0.99)},
        "floor_parts_p50_ms": {"kafka_round_trip": statistics.median(kafka_ms), "direct_run": statistics.median(run_ms)},
        "overhead_ratio_p50": statistics.median(invoker_ms) / statistics.median(floor_ms),
        "overhead_ratio_p99": percentile(invoker_ms, 0.99) / percentile(floor_ms, 0.99),
        "burst": {"activations": args.burst, "seconds": burst_s, "per_second": args.burst / burst_s,
                  "containers_at_end": len(pool["containers"]),
                  # CPU of this process (invoker, broker client threads, the embedded controller)
                  # per activation: less noisy than the rate on a shared machine.
                  "process_cpu_ms_per_activation": burst_cpu_s * 1000 / args.burst,
                  # The same for the processes it started, by name (clock-tick resolution;
                  # runtimes that exited during the burst are missed).
                  "children_cpu_ms_per_activation": others_ms,
                  # The process's CPU split by thread (clock-tick resolution): the invoker's own
                  # threads, and the bench's (main thread, embedded controller's clients).
                  "invoker_threads_cpu_ms_per_activation": invoker_s * 1000 / args.burst,
                  "bench_threads_cpu_ms_per_activation": bench_side_s * 1000 / args.burst,
                  "threads_cpu_ms_per_activation": threads_ms},
        "action_ms": args.action_ms, "prefill": args.prefill,
        "load_average": os.getloadavg(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
