"""Soak under faults: activations published in waves to a real invoker process, with one fault
injected in the middle of each wave (issue #12, points 3-4).

Parts: the embedded Tansu broker, a pouchdb-server that keeps its data on disk, and
``python -m invoker`` as a child process (process backend), as ``tests/integration``'s
crash-recovery test drives it. Faults (``--faults``, pluggable through ``FAULTS``):

* ``broker``: SIGKILL the broker with activations in flight, keep it down for
  ``--broker-outage`` s (longer than the producer's own retries), start it again on the same
  port. Tansu keeps topics in memory only, so the bench recreates them as an operator would;
  the fault is injected once everything published has been consumed (what sits unconsumed
  in a memory-only broker is the broker's loss, not the invoker's);
* ``store``: stop pouchdb-server for ``--store-outage`` s, start it again on its files;
* ``sigkill``: SIGKILL the invoker mid-wave and start a new one.

Per fault it reports activations sent, completed (a slot-freeing ack), records written, lost
(no record: must be 0), run twice, duplicate acks, and seconds to recover (fault over → the
first activation published afterwards answered). Writes ``bench/results/faults.json`` and
prints a markdown table.

Run: ``.venv/bin/python bench/faults.py [--count 2000] [--faults broker,store,sigkill]``;
``--smoke`` is a small, fast run (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "faults")]

from fault_support import SLEEPER, AckReader, PersistentCouch, records_of  # noqa: E402
from kafka import KafkaProducer  # noqa: E402

from invoker.embedded.broker import EmbeddedKafka  # noqa: E402
from invoker.embedded.controller import EmbeddedController  # noqa: E402
from invoker.entities import action_document  # noqa: E402
from invoker.messages import FullyQualifiedEntityName  # noqa: E402
from invoker.messaging import INVOKER_TOPIC_CONFIG, KafkaSettings, ensure_topic  # noqa: E402
from invoker.store.couchdb import CouchServer as CouchClient  # noqa: E402
from invoker.store.entities import EntityStore  # noqa: E402

RESULTS = REPO / "bench" / "results"
INSTANCE = 0


@dataclass
class Row:
    fault: str
    sent: int = 0
    completed: int = 0
    records: int = 0
    lost: int = 0
    run_twice: int = 0
    duplicate_acks: int = 0
    recover_s: float | None = None
    ids: list[str] = field(default_factory=list, repr=False)


class Soak:
    """The parts, the invoker process, and what the bench publishes and reads."""

    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        self.broker = EmbeddedKafka(log_path=workdir / "broker.log").start()
        self.couch = PersistentCouch(workdir=workdir / "pouchdb").start()
        self.kafka = KafkaSettings(self.broker.bootstrap_servers, session_timeout_ms=6000,
                                   heartbeat_interval_ms=1000, max_poll_interval_ms=5000, fetch_max_wait_ms=5)
        client = CouchClient(self.couch.url)
        self.whisks, self.activations = client.database("whisks"), client.database("activations")
        for db in (self.whisks, self.activations):
            db.ensure_exists()
        self.journal = workdir / "journal"
        self.journal.touch()
        doc = action_document("guest", "soak", "python:3", None, False)
        doc["limits"]["memory"] = 128
        rev = EntityStore(self.whisks).put_action(doc, SLEEPER, False)
        self.action = (FullyQualifiedEntityName("guest", "soak", "0.0.1"), rev)
        self.controller = EmbeddedController(self.kafka)  # creates completed0/health; builds messages
        self.topic = self.kafka.topic(f"invoker{INSTANCE}")
        ensure_topic(self.kafka, self.topic, configs=INVOKER_TOPIC_CONFIG)
        self.acks = AckReader(self.broker.bootstrap_servers, self.controller.completed_topic)
        self.producer = KafkaProducer(bootstrap_servers=self.broker.bootstrap_servers, linger_ms=0, acks=1,
                                      reconnect_backoff_max_ms=500, metrics_enabled=False)
        self.invoker_log = workdir / "invoker.log"
        self.invoker = self.start_invoker()

    # ------------------------------------------------------------------ the invoker process

    def start_invoker(self) -> subprocess.Popen:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "KAFKA_HOSTS": self.broker.bootstrap_servers,
            "CONFIG_whisk_couchdb_protocol": "http",
            "CONFIG_whisk_couchdb_host": "127.0.0.1",
            "CONFIG_whisk_couchdb_port": str(self.couch.port),
            "CONFIG_whisk_couchdb_databases_WhiskEntity": "whisks",
            "CONFIG_whisk_couchdb_databases_WhiskActivation": "activations",
            "CONFIG_whisk_containerPool_userMemory": "1024m",
            "CONFIG_whisk_kafka_consumer_sessionTimeoutMs": "6000",
            "CONFIG_whisk_kafka_consumer_heartbeatIntervalMs": "1000",
            "CONFIG_whisk_kafka_consumer_maxPollIntervalMs": "5000",
            "CONFIG_whisk_kafka_consumer_fetchMaxWaitMs": "5",
            "CONFIG_whisk_kafka_producer_deliveryTimeoutMs": "2000",
            "INVOKER_ACK_DEADLINE": "10 minutes",
            "PORT": "0",
        }
        log = self.invoker_log.open("ab")
        return subprocess.Popen([sys.executable, "-m", "invoker", "--id", str(INSTANCE)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def check_invoker(self) -> None:
        if self.invoker.poll() is not None:
            raise RuntimeError(f"the invoker exited ({self.invoker.returncode}); log {self.invoker_log}")

    # ------------------------------------------------------------------ traffic

    def publish(self, count: int, sleep_s: float) -> list[str]:
        fqn, rev = self.action
        ids = []
        for i in range(count):
            msg = self.controller.message(fqn, rev, {"sleep": sleep_s, "journal": str(self.journal)},
                                          blocking=(i % 2 == 0))
            self.producer.send(self.topic, msg.serialize())
            ids.append(msg.activation_id)
        self.producer.flush(60)
        return ids

    def started(self) -> Counter:
        return Counter(self.journal.read_text().split())

    def wait(self, what: str, ready: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            self.check_invoker()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} within {timeout_s:.0f} s (invoker log {self.invoker_log})")
            time.sleep(interval_s)

    def answered(self, ids: list[str]) -> int:
        return sum(1 for i in ids if i in self.acks.slot_freeing)

    def close(self) -> None:
        if self.invoker.poll() is None:
            self.invoker.send_signal(signal.SIGTERM)
            try:
                self.invoker.wait(60)
            except subprocess.TimeoutExpired:
                self.invoker.kill()
        self.acks.close()
        self.producer.close(5)
        try:
            self.controller.close()
        except Exception:
            pass
        self.couch.stop()
        self.broker.stop()


# ---------------------------------------------------------------------- faults


def fault_broker(soak: Soak, ids: list[str]) -> None:
    # Everything published is consumed (answered or running) before the kill.
    soak.wait("all published records consumed", lambda: all(
        i in soak.acks.slot_freeing or i in soak.started() for i in ids), 300)
    soak.broker._proc.kill()
    soak.broker.stop()
    time.sleep(soak.args.broker_outage)
    soak.broker.start()
    for topic in (soak.controller.completed_topic, soak.controller.health_topic):
        ensure_topic(soak.kafka, topic)
    ensure_topic(soak.kafka, soak.topic, configs=INVOKER_TOPIC_CONFIG)
    soak.acks.log_recreated()


def fault_store(soak: Soak, ids: list[str]) -> None:
    soak.couch.stop()
    time.sleep(soak.args.store_outage)
    soak.couch.start()


def fault_sigkill(soak: Soak, ids: list[str]) -> None:
    soak.invoker.send_signal(signal.SIGKILL)
    soak.invoker.wait(30)
    soak.invoker = soak.start_invoker()


# Name → inject-and-recover: returns once the fault is over (service back).
FAULTS: dict[str, Callable[[Soak, list[str]], None]] = {
    "broker": fault_broker,
    "store": fault_store,
    "sigkill": fault_sigkill,
}


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def run_wave(soak: Soak, name: str, count: int, fault: Callable[[Soak, list[str]], None] | None) -> Row:
    say(f"wave {name}: {count} activations")
    row = Row(name)
    sleep_s = soak.args.sleep
    first = soak.publish(count // 2, sleep_s)
    # Mid-wave: some answered, some in flight.
    soak.wait("a quarter of the wave answered", lambda: soak.answered(first) >= len(first) // 2, 300)
    if fault is not None:
        in_flight = [i for i in first if i not in soak.acks.slot_freeing]
        # Slow ones, so that activations are surely running when the fault hits.
        in_flight += soak.publish(min(8, count // 4), max(sleep_s, 2.0))
        soak.wait("slow activations started", lambda: all(i in soak.started() for i in in_flight[-1:]), 120)
        say(f"injecting {name} with {len(in_flight)} activations in flight")
        fault(soak, first + in_flight)
        over = time.monotonic()
        say(f"{name} over")
        probe = soak.publish(1, 0.0)
        soak.wait("the probe answered", lambda: soak.answered(probe) == 1, 600)
        row.recover_s = round(soak.acks.first_at[probe[0]] - over, 2)
        first += in_flight + probe
    rest = soak.publish(count - len(first), sleep_s)
    row.ids = first + rest
    soak.wait(f"wave {name} answered", lambda: soak.answered(row.ids) == len(row.ids), 900)
    # The next fault must not land on this wave's tail: wait for its records (then its
    # offsets commit within the feed's commit interval).
    soak.wait(f"wave {name} recorded", lambda: all(
        records_of(soak.couch.url, database="activations").get(i) for i in row.ids), 300, interval_s=0.5)
    time.sleep(1.0)
    return row


def tally(soak: Soak, rows: list[Row]) -> None:
    deadline = time.monotonic() + 120
    while True:
        records = records_of(soak.couch.url, database="activations")
        if all(records.get(i) for row in rows for i in row.ids) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    started = soak.started()
    for row in rows:
        row.sent = len(row.ids)
        row.completed = soak.answered(row.ids)
        row.records = sum(1 for i in row.ids if records.get(i))
        row.lost = row.sent - row.records
        row.run_twice = sum(1 for i in row.ids if started.get(i, 0) > 1)
        row.duplicate_acks = sum(soak.acks.slot_freeing.get(i, 0) - 1 for i in row.ids
                                 if soak.acks.slot_freeing.get(i, 0) > 1)


def table(rows: list[Row]) -> str:
    lines = ["| fault | sent | completed | records | lost | run twice | duplicate acks | recover (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        recover = "n/a" if r.recover_s is None else f"{r.recover_s:.1f}"
        lines.append(f"| {r.fault} | {r.sent} | {r.completed} | {r.records} | {r.lost} | {r.run_twice} | "
                     f"{r.duplicate_acks} | {recover} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="activations in all (default 2000)")
    parser.add_argument("--faults", default="broker,store,sigkill", help=f"comma list of {', '.join(FAULTS)}")
    parser.add_argument("--broker-outage", type=float, default=8.0, help="seconds the broker stays down")
    parser.add_argument("--store-outage", type=float, default=15.0, help="seconds the store stays down")
    parser.add_argument("--sleep", type=float, default=0.02, help="seconds each activation runs")
    parser.add_argument("--smoke", action="store_true", help="a small, fast run: 60 activations, short outages")
    parser.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs and data here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.count, args.broker_outage, args.store_outage = 60, 3.0, 4.0
    names = [n for n in args.faults.split(",") if n]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    per_wave = args.count // (len(names) + 1)
    load_before = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="owgpu-faults-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        soak = Soak(workdir, args)
        try:
            rows = [run_wave(soak, "none (baseline)", args.count - per_wave * len(names), None)]
            for name in names:
                rows.append(run_wave(soak, name, per_wave, FAULTS[name]))
            tally(soak, rows)
        except BaseException:
            print(f"invoker log tail:\n{soak.invoker_log.read_text()[-4000:]}", file=sys.stderr)
            raise
        finally:
            soak.close()
    result = {
        "rows": [{k: v for k, v in asdict(r).items() if k != "ids"} for r in rows],
        "count": sum(r.sent for r in rows),
        "smoke": args.smoke,
        "broker_outage_s": args.broker_outage,
        "store_outage_s": args.store_outage,
        "seconds": round(time.monotonic() - started, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
    }
    if not args.smoke or args.out != RESULTS / "faults.json":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    return 1 if any(r.lost for r in rows) or any(r.completed < r.sent for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
