"""An invoker under ``--scheduler fpc`` for the end-to-end tests, on real parts: etcd, the
embedded broker, pouchdb-server, runtime processes (process backend), and a scheduler (``fpc_scheduler``'s gRPC
ActivationService, ``fpc_driver``'s creation and deletion messages and ack reader). The
controller's side is the embedded controller: it reads ``completed{C}``."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fpc_driver import AckReader, creation
from fpc_scheduler import SchedulerServer

from invoker.cli import build_invoker
from invoker.config import load_config
from invoker.embedded.controller import EmbeddedController
from invoker.embedded.standalone import EMBEDDED_KAFKA_TIMINGS as FAST_KAFKA
from invoker.entities import action_document
from invoker.fpc.etcd import EtcdClient
from invoker.fpc.keys import EtcdKeys
from invoker.messages import FullyQualifiedEntityName
from invoker.messaging import KafkaSettings
from invoker.service import Invoker
from invoker.store.couchdb import CouchServer
from invoker.store.database import Database, DocumentNotFound
from invoker.store.entities import EntityStore

ROOT = Path(__file__).resolve().parents[2]
ECHO = "def main(args):\n    print('echo', args)\n    return {'echo': args}\n"
_instances = itertools.count(40)


def kafka_settings(bootstrap: str, prefix: str) -> KafkaSettings:
    return KafkaSettings(bootstrap, topic_prefix=prefix, session_timeout_ms=6000, heartbeat_interval_ms=1000,
                         max_poll_interval_ms=5000, fetch_max_wait_ms=5)


def wait_until(check: Callable[[], object], timeout_s: float = 20.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s} s"
        time.sleep(0.05)


@dataclass
class FpcDeployment:
    invoker: Invoker
    controller: EmbeddedController
    scheduler: SchedulerServer
    acks: AckReader
    whisks: Database
    activations: Database
    etcd: EtcdClient
    names: EtcdKeys
    instance: int
    kafka: KafkaSettings

    def deploy(self, name: str, code: str = ECHO, kind: str = "python:3", resources: tuple[str, ...] = (),
               **limits: int) -> tuple[FullyQualifiedEntityName, str, dict]:
        doc = action_document("guest", name, kind)
        if resources:  # invoker-resources: FPC's ContainerManager routes by it
            doc["annotations"].append({"key": "invoker-resources", "value": list(resources)})
        doc["limits"].update(limits)
        rev = EntityStore(self.whisks).put_action(doc, code, False)
        doc["_rev"] = rev
        return FullyQualifiedEntityName("guest", name, "0.0.1"), rev, doc

    def send(self, message) -> None:
        self.controller.publish(self.instance, message if isinstance(message, bytes) else message.serialize())

    def create(self, fqn, rev, doc):
        message = creation(fqn, rev, doc, self.scheduler.host, self.scheduler.port)
        self.send(message)
        return message, self.acks.wait_for(message.creation_id)

    def record(self, msg, timeout_s: float = 20.0) -> dict:
        docid = f"{msg.user.namespace_name}/{msg.activation_id}"
        return wait_until(lambda: _get(self.activations, docid), timeout_s, f"record {docid}")

    def container_keys(self, fqn, rev) -> dict[str, str]:
        return self.etcd.get_prefix(self.names.existing_containers_prefix("guest", fqn, rev))


def _get(db: Database, docid: str) -> dict | None:
    try:
        return db.get(docid)
    except DocumentNotFound:
        return None


@pytest.fixture
def fpc_factory(kafka_bootstrap, couchdb_url, etcd, cluster) -> Iterator[Callable[..., FpcDeployment]]:
    """``make(*args)``: an FPC invoker (its own instance, topics, databases) with extra CLI args."""
    made: list[FpcDeployment] = []

    def make(*extra: str, etcd_hosts: str | None = None) -> FpcDeployment:
        instance = next(_instances)
        prefix = f"f{uuid.uuid4().hex[:8]}_"
        server = CouchServer(couchdb_url)
        whisks, activations = server.database(f"{prefix}whisks"), server.database(f"{prefix}activations")
        for db in (whisks, activations):
            db.ensure_exists()
        kafka = kafka_settings(kafka_bootstrap, prefix)
        hosts = etcd_hosts or etcd.hosts
        args = ["--id", str(instance), "--port", "0", "--topic-prefix", prefix, "--user-memory", "1024 m",
                "--backend", "process", "--scheduler", "fpc", "--etcd-hosts", hosts, "--cluster-name", cluster,
                *FAST_KAFKA, *extra]
        invoker = build_invoker(load_config(args, env={}), kafka_bootstrap, env={}, whisks=whisks,
                                activations=activations)
        deployment = FpcDeployment(invoker, EmbeddedController(kafka), SchedulerServer().start(), AckReader(kafka),
                                   whisks, activations, EtcdClient.from_hosts(hosts), EtcdKeys(cluster), instance,
                                   kafka)
        made.append(deployment)
        invoker.start()
        assert invoker.wait_ready(60), "the FPC front end never got its lease and partition"
        return deployment

    yield make
    for d in made:
        d.invoker.stop()
        d.acks.close()
        d.scheduler.stop()
        d.controller.close()
        d.etcd.close()


@pytest.fixture
def fpc(fpc_factory) -> FpcDeployment:
    return fpc_factory("--tags", "gpu,fast")
