"""Helpers of the fault tests and of ``bench/faults.py``: actions, a pouchdb-server that keeps
its data on disk, a podman API service of one's own to kill and restart, an ack reader that
survives a broker restart, and record counts."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from services import CouchServer

from invoker.messages import CompletionMessage, parse_acknowledgement
from invoker.store.couchdb import CouchServer as CouchClient

ECHO = "def main(args):\n    return args\n"
# Notes its start in args["journal"] (when given), so a test knows it is running; in a
# container, which sees no host file, it prints a RUN_MARK line with a nonce of its own instead
# (when args["mark"]): one per run, in the container's log and in the activation's record.
RUN_MARK = "owgpu-run"
SLEEPER = """
import os, time, uuid
def main(args):
    if "journal" in args:
        with open(args["journal"], "a") as journal:
            journal.write(os.environ["__OW_ACTIVATION_ID"] + "\\n")
    if args.get("mark"):
        print("RUN_MARK", os.environ["__OW_ACTIVATION_ID"], uuid.uuid4().hex, flush=True)
    time.sleep(args.get("sleep", 0))
    return {"slept": args.get("sleep", 0), "n": args.get("n")}
""".replace("RUN_MARK", RUN_MARK)


class PersistentCouch(CouchServer):
    """pouchdb-server on LevelDOWN files in its workdir: a restart keeps the databases."""

    def command(self) -> list[str]:
        data = Path(self.workdir) / "data"
        data.mkdir(parents=True, exist_ok=True)
        return [*(arg for arg in super().command() if arg != "--in-memory"), "--dir", str(data)]


class OwnPodmanService:
    """A podman Docker-API service on a socket of one's own (under ``directory``), to kill and
    restart without touching the shared one. Containers outlive it (conmon keeps them, as
    they outlive a restarted dockerd): what goes away is the API."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.socket = directory / "podman.sock"
        self.log = directory / "service.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 30.0) -> OwnPodmanService:
        self.socket.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(["podman", "system", "service", "--time=0", self.url],
                                            stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the podman service did not start (log {self.log})")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGKILL the service (its whole process group): the API is gone at once."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None


def wait_started(journal: Path, count: int, timeout_s: float = 60.0) -> None:
    """Until ``count`` runs have noted their start in ``journal``."""
    deadline = time.monotonic() + timeout_s
    while not journal.exists() or len(journal.read_text().splitlines()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} runs started"
        time.sleep(0.05)


class AckReader:
    """Every ack on a completed topic from the start of its log, across a broker restart."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.slot_freeing: dict[str, int] = {}
        self.first_at: dict[str, float] = {}  # monotonic time of each id's first slot-freeing ack
        self.system_errors: set[str] = set()  # ids with a slot-freeing ack that says isSystemError
        self._stop = threading.Event()
        self._rewind = threading.Event()
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                       auto_offset_reset="earliest", fetch_max_wait_ms=10,
                                       reconnect_backoff_max_ms=500)
        self.topic = topic
        self._consumer.assign([TopicPartition(topic, 0)])
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        partition = TopicPartition(self.topic, 0)
        while not self._stop.is_set():
            if self._rewind.is_set():
                self._rewind.clear()
                # Tansu answers a fetch past the end of its new log with nothing, not with an
                # out-of-range error, so the consumer would never find its way back by itself.
                self._consumer.seek_to_beginning(partition)
            for records in self._consumer.poll(timeout_ms=50).values():
                for record in records:
                    ack = parse_acknowledgement(record.value)
                    if isinstance(ack, CompletionMessage):
                        activation_id = ack.activation_id
                    elif hasattr(ack, "instance"):
                        activation_id = ack.response if isinstance(ack.response, str) else ack.response["activationId"]
                    else:
                        continue  # a ResultMessage frees no slot
                    self.first_at.setdefault(activation_id, time.monotonic())
                    if ack.is_system_error:
                        self.system_errors.add(activation_id)
                    self.slot_freeing[activation_id] = self.slot_freeing.get(activation_id, 0) + 1

    def log_recreated(self) -> None:
        """The broker came back without its data: read the new log from its start."""
        self._rewind.set()

    def wait_for(self, ids: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(i in self.slot_freeing for i in ids):
            missing = [i for i in ids if i not in self.slot_freeing]
            assert time.monotonic() < deadline, f"no slot-freeing ack for {missing}"
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def activation_records(couch_url: str, deployment=None, database: str | None = None) -> list[dict]:
    """Every record in the activations database (the deployment's, or ``database``)."""
    name = database if database is not None else deployment.activations.name
    return [row["doc"] for row in CouchClient(couch_url).database(name).all_docs(include_docs=True)]


def records_of(couch_url: str, deployment=None, database: str | None = None) -> dict[str, int]:
    """Records per activation id in the activations database (the deployment's, or ``database``)."""
    counts: dict[str, int] = {}
    for doc in activation_records(couch_url, deployment, database):
        counts[doc["activationId"]] = counts.get(doc["activationId"], 0) + 1
    return counts
