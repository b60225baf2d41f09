"""An invoker against a real broker and a real CouchDB API (pouchdb-server), driven by the
embedded controller exactly as OpenWhisk's controller drives it, on each container
backend: ``process`` (runtimes as child processes) and ``docker`` (the project's runtime
image through the Docker API: podman in CI).

``deployment`` runs on both backends; ``deployment_factory(backend=...)`` on the one asked.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from invoker.cli import build_invoker
from invoker.config import load_config
from invoker.embedded.controller import EmbeddedController
from invoker.embedded.standalone import EMBEDDED_KAFKA_TIMINGS as FAST_KAFKA
from invoker.entities import action_document
from invoker.messages import FullyQualifiedEntityName
from invoker.messaging import KafkaSettings
from invoker.service import Invoker
from invoker.store.couchdb import CouchServer
from invoker.store.database import Database, DocumentNotFound
from invoker.store.entities import EntityStore

_instances = itertools.count(10)


def kafka_settings(bootstrap: str, prefix: str = "") -> KafkaSettings:
    return KafkaSettings(bootstrap, topic_prefix=prefix, session_timeout_ms=6000, heartbeat_interval_ms=1000,
                         max_poll_interval_ms=5000, fetch_max_wait_ms=5)


@dataclass
class Deployment:
    """One invoker, its databases and a controller, isolated by a topic prefix."""

    invoker: Invoker | None
    controller: EmbeddedController
    whisks: Database
    activations: Database
    instance: int
    prefix: str
    start_invoker: Callable[[], Invoker]
    backend: str = "process"

    @property
    def entities(self) -> EntityStore:
        return EntityStore(self.whisks)

    def deploy(self, name: str, code: str, *, binary: bool = False, kind: str = "python:3", main: str | None = None,
               namespace: str = "guest", limits: dict | None = None, annotations: list | None = None,
               package: str | None = None) -> tuple[FullyQualifiedEntityName, str]:
        path = f"{namespace}/{package}" if package else namespace
        doc = action_document(path, name, kind, main, binary)
        doc["limits"].update(limits or {})
        if annotations is not None:
            doc["annotations"] = annotations
        rev = self.entities.put_action(doc, code, binary)
        return FullyQualifiedEntityName(path, name, "0.0.1"), rev

    def record(self, msg, timeout_s: float = 20.0) -> dict:
        docid = f"{msg.user.namespace_name}/{msg.activation_id}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.activations.get(docid)
            except DocumentNotFound:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def invoke(self, fqn, rev, content=None, blocking=True, timeout_s: float = 60.0, **kw):
        msg = self.controller.message(fqn, rev, content, blocking=blocking, **kw)
        acks = self.controller.invoke(self.instance, msg, timeout_s)
        return msg, acks


BACKENDS = ("process", "docker")


def leftover_containers(docker_client, instance: int) -> list:
    return docker_client.containers.list(all=True, filters={"label": f"org.openwhisk.invoker=wsk{instance}"})


@pytest.fixture
def deployment_factory(request, kafka_bootstrap, couchdb_url) -> Iterator[Callable[..., Deployment]]:
    made: list[Deployment] = []
    docker_client = None

    def make(extra_args: list[str] | None = None, start: bool = True, backend: str = "process") -> Deployment:
        nonlocal docker_client
        if backend == "docker" and docker_client is None:
            docker_client = request.getfixturevalue("docker_client")
        instance = next(_instances)
        prefix = f"t{uuid.uuid4().hex[:8]}_"
        server = CouchServer(couchdb_url)
        whisks = server.database(f"{prefix}whisks")
        activations = server.database(f"{prefix}activations")
        whisks.ensure_exists()
        activations.ensure_exists()
        controller = EmbeddedController(kafka_settings(kafka_bootstrap, prefix))
        args = ["--id", str(instance), "--port", "0", "--topic-prefix", prefix, "--user-memory", "1024 m",
                "--backend", backend, *FAST_KAFKA, *(extra_args or [])]

        def start_invoker() -> Invoker:
            config = load_config(args, env={})
            invoker = build_invoker(config, kafka_bootstrap, env={}, whisks=whisks, activations=activations)
            invoker.start()
            assert invoker.wait_ready(60), "the invoker never got its partition"
            deployment.invoker = invoker
            return invoker

        deployment = Deployment(None, controller, whisks, activations, instance, prefix, start_invoker, backend)
        if start:
            start_invoker()
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.controller.close()
        if deployment.invoker is not None:
            deployment.invoker.stop()
    if docker_client is not None:
        # A stopped invoker leaves no container behind (the factory removes them by label).
        for deployment in made:
            left = leftover_containers(docker_client, deployment.instance)
            for container in left:
                container.remove(force=True)
            assert not left, f"containers left behind by invoker {deployment.instance}: {left}"


@pytest.fixture(params=BACKENDS)
def deployment(request, deployment_factory) -> Deployment:
    return deployment_factory(backend=request.param)
