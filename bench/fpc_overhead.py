"""The warm path under FPC beside the classic one, measured interleaved in one run.

* classic: publish on ``invoker0`` → slot-freeing ack on ``completed{C}`` (a warm no-op);
* fpc: the activation put in the scheduler's queue → the container's waiting ``FetchActivation``
  answered → ``/run`` → slot-freeing ack (``invoker1``, ``--scheduler fpc``, one created container).

Both invokers run in this process on the same embedded broker and store, the process backend and
the same action; the scheduler is the tests' gRPC ActivationService (``tests/fpc/fpc_scheduler``)
and its creation messages (``tests/fpc/fpc_driver``), etcd a real one on 127.0.0.1.

Run: ``.venv/bin/python bench/fpc_overhead.py [--samples 300]``.
Writes ``bench/results/fpc_overhead.json`` with the machine it ran on and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fpc"))  # the scheduler's side
from fpc_driver import AckReader, creation  # noqa: E402
from fpc_scheduler import FakeActivationService, SchedulerServer  # noqa: E402

from invoker.cli import build_invoker  # noqa: E402
from invoker.config import load_config  # noqa: E402
from invoker.embedded.broker import EmbeddedKafka  # noqa: E402
from invoker.embedded.child import HOST, free_port  # noqa: E402
from invoker.embedded.controller import EmbeddedController  # noqa: E402
from invoker.embedded.standalone import EMBEDDED_KAFKA_TIMINGS  # noqa: E402
from invoker.entities import action_document  # noqa: E402
from invoker.messages import FullyQualifiedEntityName  # noqa: E402
from invoker.messaging import KafkaSettings  # noqa: E402
from invoker.store.embedded import EmbeddedServer  # noqa: E402
from invoker.store.entities import EntityStore  # noqa: E402

NOOP = "def main(args):\n    return {}\n"
RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 3), "p90": round(percentile(values, 0.9), 3),
            "p99": round(percentile(values, 0.99), 3), "mean": round(statistics.fmean(values), 3)}


def start_etcd(workdir: Path) -> tuple[subprocess.Popen, str]:
    binary = os.environ.get("ETCD_BIN") or shutil.which("etcd")
    if binary is None:
        raise SystemExit("etcd not found: install etcd-server or set ETCD_BIN")
    port, peer = free_port(), free_port()
    url, peer_url = f"http://{HOST}:{port}", f"http://{HOST}:{peer}"
    process = subprocess.Popen(
        [binary, "--name", "bench", "--data-dir", str(workdir / "etcd"), "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
         "--initial-cluster", f"bench={peer_url}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(url + "/health", timeout=1).json().get("health") == "true":
                return process, f"{HOST}:{port}"
        except (requests.RequestException, ValueError):
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise SystemExit("etcd did not start")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--out", default="fpc_overhead.json", help="file name under bench/results/")
    args = parser.parse_args()
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp, EmbeddedKafka() as broker:
        etcd, etcd_hosts = start_etcd(Path(tmp))
        invokers = []
        try:
            store = EmbeddedServer()
            common = ["--port", "0", "--user-memory", "1024 m", "--backend", "process", *EMBEDDED_KAFKA_TIMINGS]
            classic_config = load_config(["--id", "0", *common], env={})
            fpc_config = load_config(["--id", "1", "--scheduler", "fpc", "--etcd-hosts", etcd_hosts, *common], env={})
            whisks = store.database(classic_config.db_whisks)
            activations = store.database(classic_config.db_activations)
            whisks.ensure_exists()
            activations.ensure_exists()
            kafka = KafkaSettings(broker.bootstrap_servers, session_timeout_ms=6000, heartbeat_interval_ms=1000,
                                  max_poll_interval_ms=5000, fetch_max_wait_ms=5)
            controller = EmbeddedController(kafka)
            acks = AckReader(kafka)
            scheduler = SchedulerServer(FakeActivationService(hold_s=10.0)).start()
            for config in (classic_config, fpc_config):
                invoker = build_invoker(config, broker.bootstrap_servers, env={}, whisks=whisks,
                                        activations=activations)
                invokers.append(invoker)
                invoker.start()
                assert invoker.wait_ready(60), f"invoker{config.instance} never became ready"
            doc = action_document("guest", "noop", "python:3", None, False)
            doc["limits"]["memory"] = 128
            doc["limits"]["logs"] = 0  # a pure no-op: no log collection
            rev = EntityStore(whisks).put_action(doc, NOOP, False)
            doc["_rev"] = rev
            fqn = FullyQualifiedEntityName("guest", "noop", "0.0.1")

            scheduler.service.add_queue("guest", fqn, rev)
            message = creation(fqn, rev, doc, scheduler.host, scheduler.port)
            controller.publish(1, message.serialize())
            assert acks.wait_for(message.creation_id).succeeded, "the FPC creation failed"

            def classic_once() -> float:
                msg = controller.message(fqn, rev, {})
                start = time.perf_counter()
                controller.invoke(0, msg, timeout_s=60)
                return (time.perf_counter() - start) * 1000

            def fpc_once() -> float:
                msg = controller.message(fqn, rev, {})
                start = time.perf_counter()
                scheduler.service.enqueue("guest", msg)
                controller.wait_for(msg.activation_id, timeout_s=60)
                return (time.perf_counter() - start) * 1000

            for _ in range(20):  # warm-up: the classic cold start, every path hot
                classic_once()
                fpc_once()
            classic_ms, fpc_ms = [], []
            for _ in range(args.samples):  # interleaved, so noise hits both alike
                classic_ms.append(classic_once())
                fpc_ms.append(fpc_once())
            containers = {invoker.frontend.name: len(invoker.pool.members) for invoker in invokers}
            acks.close()
            scheduler.stop()
            controller.close()
        finally:
            for invoker in invokers:
                invoker.stop()
            etcd.terminate()
            etcd.wait(30)

    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "broker": "Tansu (embedded, memory storage)", "store": "embedded", "backend": "process",
        "scheduler": "tests/fpc/fpc_scheduler (in-process gRPC ActivationService)", "etcd": "real, 127.0.0.1",
        "samples": args.samples, "containers": containers,
        "classic_publish_to_ack_ms": summary(classic_ms),
        "fpc_enqueue_to_ack_ms": summary(fpc_ms),
        "fpc_minus_classic_p50_ms": round(statistics.median(fpc_ms) - statistics.median(classic_ms), 3),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
