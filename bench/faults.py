"""Soak under faults: activations published in waves to a real invoker process, with one fault
injected in the middle of each wave (issue #12, points 3-4).

Parts: the embedded Tansu broker, a pouchdb-server that keeps its data on disk, and
``python -m invoker`` as a child process, as ``tests/integration``'s crash-recovery test
drives it, on the process backend; for the ``engine`` wave it is restarted (SIGTERM, between
waves) on the Docker backend, on a podman API service of the bench's own (``podman system
service`` on a socket in the work dir; podman's storage and the runtime image are shared,
``CONTAINERS_CONF`` is passed on), and back on the process backend after it. A run notes its
start in a journal file (process backend) or, in a container that sees no host file, prints
a mark with a nonce of its own, read from the containers' logs through the engine and from
the records (Docker backend): "run twice" is an activation with two starts.
Faults (``--faults``, pluggable through ``FAULTS``):

* ``broker``: SIGKILL the broker with activations in flight, keep it down for
  ``--broker-outage`` s (longer than the producer's own retries), start it again on the same
  port. Tansu keeps topics in memory only, so the bench recreates them as an operator would;
  the fault is injected once everything published has been consumed (what sits unconsumed
  in a memory-only broker is the broker's loss, not the invoker's);
* ``store``: stop pouchdb-server for ``--store-outage`` s, start it again on its files;
* ``engine``: SIGKILL the podman API service for ``--engine-outage`` s and start it again.
  The containers keep running (conmon), but the invoker can neither follow them (their log
  streams end, so the pool discards them at their next use and the engine removes them once
  it is back) nor create new ones: activations published during the outage are answered
  with a whisk error ("whisk errors" column), which counts as answered and recorded, not lost;
* ``sigkill``: SIGKILL the invoker mid-wave and start a new one.

Per fault it reports activations sent, completed (a slot-freeing ack), records written, lost
(no record: must be 0), run twice, duplicate acks, whisk errors (records with status
whisk error), and seconds to recover (fault over → the first activation published afterwards
answered without a system error). Writes ``bench/results/faults.json`` and prints a markdown
table.

Run: ``.venv/bin/python bench/faults.py [--count 2000] [--faults broker,store,engine,sigkill]``;
``--smoke`` is a small, fast run (the test suite runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "faults")]

from fault_support import (  # noqa: E402
    RUN_MARK,
    SLEEPER,
    AckReader,
    OwnPodmanService,
    PersistentCouch,
    activation_records,
    records_of,
)
from kafka import KafkaProducer  # noqa: E402

from invoker.embedded.broker import EmbeddedKafka  # noqa: E402
from invoker.embedded.controller import EmbeddedController  # noqa: E402
from invoker.entities import WHISK_ERROR, action_document  # noqa: E402
from invoker.messages import FullyQualifiedEntityName  # noqa: E402
from invoker.messaging import INVOKER_TOPIC_CONFIG, KafkaSettings, ensure_topic  # noqa: E402
from invoker.store.couchdb import CouchServer as CouchClient  # noqa: E402
from invoker.store.entities import EntityStore  # noqa: E402

RESULTS = REPO / "bench" / "results"
INSTANCE = 0
USER_MEMORY_MB, ACTION_MEMORY_MB = 1024, 128  # the pool holds at most 8 of the soak's containers


@dataclass
class Row:
    fault: str
    sent: int = 0
    completed: int = 0
    records: int = 0
    lost: int = 0
    run_twice: int = 0
    duplicate_acks: int = 0
    whisk_errors: int = 0
    recover_s: float | None = None
    ids: list[str] = field(default_factory=list, repr=False)


class Soak:
    """The parts, the invoker process, and what the bench publishes and reads."""

    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        # Containers are labelled with the invoker's name: a unique one keeps other invokers
        # on the same podman storage from taking the soak's containers for leftovers, and back.
        self.unique_name = f"soak{uuid.uuid4().hex[:6]}"
        self.engine = OwnPodmanService(workdir / "podman").start() if "docker" in args.backends else None
        self.backend = "process"
        self.marks: dict[str, set[str]] = {}  # activation id → nonce of each run seen (Docker backend)
        self.before_outage: set[str] = set()  # the invoker's containers when the engine went away
        self.engine_back_at: float | None = None
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
        doc["limits"]["memory"] = ACTION_MEMORY_MB
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
            "CONFIG_whisk_containerPool_userMemory": f"{USER_MEMORY_MB}m",
            "CONFIG_whisk_kafka_consumer_sessionTimeoutMs": "6000",
            "CONFIG_whisk_kafka_consumer_heartbeatIntervalMs": "1000",
            "CONFIG_whisk_kafka_consumer_maxPollIntervalMs": "5000",
            "CONFIG_whisk_kafka_consumer_fetchMaxWaitMs": "5",
            "CONFIG_whisk_kafka_producer_deliveryTimeoutMs": "2000",
            "INVOKER_ACK_DEADLINE": "10 minutes",
            "PORT": "0",
            "INVOKER_BACKEND": self.backend,
        }
        if self.engine is not None:
            env["DOCKER_HOST"] = self.engine.url
        log = self.invoker_log.open("ab")
        return subprocess.Popen([sys.executable, "-m", "invoker", "--id", str(INSTANCE),
                                 "--uniqueName", self.unique_name], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def switch_backend(self, backend: str) -> None:
        """Restart the invoker on ``backend`` (SIGTERM: it finishes and commits what it has)."""
        if backend == self.backend:
            return
        self.stop_invoker()
        self.backend = backend
        self.invoker = self.start_invoker()

    def stop_invoker(self) -> None:
        if self.invoker.poll() is None:
            self.invoker.send_signal(signal.SIGTERM)
            try:
                self.invoker.wait(60)
            except subprocess.TimeoutExpired:
                self.invoker.kill()
                self.invoker.wait(30)

    def _engine_client(self) -> contextlib.closing:
        import docker

        assert self.engine is not None
        return contextlib.closing(docker.DockerClient(base_url=self.engine.url, timeout=60))

    def _own_containers(self, client) -> list[str]:
        # The low-level list: it inspects nothing, so a container removed meanwhile is no error.
        return [c["Id"] for c in client.api.containers(all=True, filters={"label": f"org.openwhisk.invoker={self.owner}"})]

    def engine_containers(self) -> set[str]:
        """Ids of the soak's invoker's containers on the engine, running or not."""
        with self._engine_client() as client:
            return set(self._own_containers(client))

    def read_marks(self, texts: list[str] | None = None) -> None:
        """Note the run marks in ``texts``, or else in the logs of the invoker's containers."""
        if texts is None:
            if self.engine is None or self.engine.process is None:
                return
            with self._engine_client() as client:
                texts = []
                for container in self._own_containers(client):
                    try:
                        texts.append(client.api.logs(container, stdout=True, stderr=False).decode("utf-8", "replace"))
                    except Exception:  # noqa: BLE001 - removed meanwhile: its runs are in their records
                        continue
        for text in texts:
            for line in text.splitlines():
                fields = line.split()
                if RUN_MARK in fields and len(fields) >= fields.index(RUN_MARK) + 3:
                    at = fields.index(RUN_MARK)
                    self.marks.setdefault(fields[at + 1], set()).add(fields[at + 2])

    @property
    def owner(self) -> str:
        return f"wsk{self.unique_name}{INSTANCE}"

    def check_invoker(self) -> None:
        if self.invoker.poll() is not None:
            raise RuntimeError(f"the invoker exited ({self.invoker.returncode}); log {self.invoker_log}")

    # ------------------------------------------------------------------ traffic

    def publish(self, count: int, sleep_s: float) -> list[str]:
        fqn, rev = self.action
        start = {"mark": True} if self.backend == "docker" else {"journal": str(self.journal)}
        ids = []
        for i in range(count):
            msg = self.controller.message(fqn, rev, {"sleep": sleep_s, **start}, blocking=(i % 2 == 0))
            self.producer.send(self.topic, msg.serialize())
            ids.append(msg.activation_id)
        self.producer.flush(60)
        return ids

    def started(self) -> Counter:
        """Starts per activation id: the journal's, and the run marks seen."""
        if self.backend == "docker":
            self.read_marks()
        return Counter(self.journal.read_text().split()) + Counter({i: len(n) for i, n in self.marks.items()})

    def wait(self, what: str, ready: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            self.check_invoker()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} within {timeout_s:.0f} s (invoker log {self.invoker_log})")
            time.sleep(interval_s)

    def answered(self, ids: list[str]) -> int:
        return sum(1 for i in ids if i in self.acks.slot_freeing)

    def served(self, ids: list[str]) -> bool:
        """Some of ``ids`` answered without a system error."""
        return any(i in self.acks.slot_freeing and i not in self.acks.system_errors for i in ids)

    def close(self) -> None:
        self.stop_invoker()
        self.acks.close()
        self.producer.close(5)
        try:
            self.controller.close()
        except Exception:
            pass
        self.couch.stop()
        self.broker.stop()
        if self.engine is not None:
            try:
                if self.engine.process is None:
                    self.engine.start()
                self.remove_leftovers()
            finally:
                self.engine.stop()

    def remove_leftovers(self) -> None:
        """What a failed run may leave on podman's shared storage (a clean stop leaves nothing)."""
        with self._engine_client() as client:
            for container in self._own_containers(client):
                client.api.remove_container(container, force=True)
            for network in client.networks.list():
                if network.name.startswith(f"{self.owner}_"):
                    network.remove()


# ---------------------------------------------------------------------- faults


def fault_broker(soak: Soak, ids: list[str]) -> list[str]:
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
    return []


def fault_store(soak: Soak, ids: list[str]) -> list[str]:
    soak.couch.stop()
    time.sleep(soak.args.store_outage)
    soak.couch.start()
    return []


def fault_engine(soak: Soak, ids: list[str]) -> list[str]:
    assert soak.engine is not None, "the engine fault needs the docker backend"
    soak.read_marks()  # the runs so far, in containers the outage will make the pool discard
    soak.before_outage = soak.engine_containers()
    soak.engine.stop()
    until = time.monotonic() + soak.args.engine_outage
    # Work that arrives while the API is gone: the warm containers can no longer be followed
    # and no container can be created, so each is answered with a whisk error.
    during = soak.publish(soak.args.engine_burst, soak.args.sleep)
    while time.monotonic() < until:
        soak.check_invoker()
        time.sleep(0.1)
    say(f"engine outage: {soak.answered(during)} of {len(during)} published during it answered, "
        f"{sum(1 for i in during if i in soak.acks.system_errors)} with a system error")
    soak.engine.start()
    soak.engine_back_at = time.monotonic()
    return during


def fault_sigkill(soak: Soak, ids: list[str]) -> list[str]:
    soak.invoker.send_signal(signal.SIGKILL)
    soak.invoker.wait(30)
    soak.invoker = soak.start_invoker()
    return []


# Name → inject-and-recover: returns once the fault is over (service back), with the
# activations it published itself.
FAULTS: dict[str, Callable[[Soak, list[str]], list[str]]] = {
    "broker": fault_broker,
    "store": fault_store,
    "engine": fault_engine,
    "sigkill": fault_sigkill,
}


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def run_wave(soak: Soak, name: str, count: int, fault: Callable[[Soak, list[str]], list[str]] | None) -> Row:
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
        soak.wait("slow activations started", lambda: all(i in soak.started() for i in in_flight[-1:]), 120,
                  interval_s=0.2)
        say(f"injecting {name} with {len(in_flight)} activations in flight")
        in_flight += fault(soak, first + in_flight)
        over = time.monotonic()
        say(f"{name} over")
        # Probes, one at a time, until one is served (not answered with a system error).
        probes: list[str] = []
        while not soak.served(probes):
            probe = soak.publish(1, 0.0)
            soak.wait("the probe answered", lambda probe=probe: soak.answered(probe) == 1, 600)
            probes += probe
        row.recover_s = round(soak.acks.first_at[probes[-1]] - over, 2)
        first += in_flight + probes
    rest = soak.publish(count - len(first), sleep_s)
    row.ids = first + rest
    soak.wait(f"wave {name} answered", lambda: soak.answered(row.ids) == len(row.ids), 900)
    # The next fault must not land on this wave's tail: wait for its records (then its
    # offsets commit within the feed's commit interval).
    soak.wait(f"wave {name} recorded", lambda: set(row.ids) <= set(
        records_of(soak.couch.url, database="activations")), 300, interval_s=0.5)  # one read per check
    time.sleep(1.0)
    return row


def leftovers_removed(soak: Soak, timeout_s: float = 180.0) -> dict:
    """Until the containers from before the engine outage are gone from the engine."""
    assert soak.engine_back_at is not None
    deadline = time.monotonic() + timeout_s
    while (left := soak.before_outage & soak.engine_containers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return {"before_outage": len(soak.before_outage), "still_there": len(left),
            "all_removed_s_after_engine_back": None if left else round(time.monotonic() - soak.engine_back_at, 1)}


def tally(soak: Soak, rows: list[Row]) -> None:
    deadline = time.monotonic() + 120
    while True:
        docs = activation_records(soak.couch.url, database="activations")
        records = Counter(doc["activationId"] for doc in docs)
        if all(records.get(i) for row in rows for i in row.ids) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    whisk_errors = {doc["activationId"] for doc in docs if doc["response"]["statusCode"] == WHISK_ERROR}
    soak.read_marks(["\n".join(doc.get("logs") or []) for doc in docs])  # runs in containers gone since
    started = soak.started()
    for row in rows:
        row.sent = len(row.ids)
        row.completed = soak.answered(row.ids)
        row.records = sum(1 for i in row.ids if records.get(i))
        row.lost = row.sent - row.records
        row.run_twice = sum(1 for i in row.ids if started.get(i, 0) > 1)
        row.duplicate_acks = sum(soak.acks.slot_freeing.get(i, 0) - 1 for i in row.ids
                                 if soak.acks.slot_freeing.get(i, 0) > 1)
        row.whisk_errors = sum(1 for i in row.ids if i in whisk_errors)


def table(rows: list[Row]) -> str:
    lines = ["| fault | sent | completed | records | lost | run twice | duplicate acks | whisk errors | recover (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        recover = "n/a" if r.recover_s is None else f"{r.recover_s:.1f}"
        lines.append(f"| {r.fault} | {r.sent} | {r.completed} | {r.records} | {r.lost} | {r.run_twice} | "
                     f"{r.duplicate_acks} | {r.whisk_errors} | {recover} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="activations in all (default 2000)")
    parser.add_argument("--faults", default=None,
                        help=f"comma list of {', '.join(FAULTS)} (default: all; with --smoke, all but engine)")
    parser.add_argument("--broker-outage", type=float, default=8.0, help="seconds the broker stays down")
    parser.add_argument("--store-outage", type=float, default=15.0, help="seconds the store stays down")
    parser.add_argument("--engine-outage", type=float, default=8.0, help="seconds the podman API stays down")
    parser.add_argument("--engine-burst", type=int, default=40, help="activations published during the engine outage")
    parser.add_argument("--sleep", type=float, default=0.02, help="seconds each activation runs")
    parser.add_argument("--smoke", action="store_true", help="a small, fast run: 60 activations, short outages")
    parser.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs and data here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.count, args.broker_outage, args.store_outage, args.engine_outage = 60, 3.0, 4.0, 3.0
        args.engine_burst = min(args.engine_burst, 6)
    if args.faults is None:
        args.faults = ",".join(n for n in FAULTS if not (args.smoke and n == "engine"))
    names = [n for n in args.faults.split(",") if n]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    args.backends = {"process", *(["docker"] if "engine" in names else [])}
    per_wave = args.count // (len(names) + 1)
    load_before = os.getloadavg()
    engine_after = None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="owgpu-faults-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        soak = Soak(workdir, args)
        try:
            rows = [run_wave(soak, "none (baseline)", args.count - per_wave * len(names), None)]
            for name in names:
                soak.switch_backend("docker" if name == "engine" else "process")
                rows.append(run_wave(soak, name, per_wave, FAULTS[name]))
                if name == "engine":
                    soak.read_marks()
                    engine_after = leftovers_removed(soak)
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
        "backends": {"engine": "docker (private podman API service)", "others": "process"},
        "broker_outage_s": args.broker_outage,
        "store_outage_s": args.store_outage,
        "engine_outage_s": args.engine_outage if "engine" in names else None,
        # The containers of the invoker when the engine went away (the pool discards them: it
        # cannot follow them any more): how many, and when the last left the engine.
        "engine_outage_containers": engine_after,
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
