"""Invokers under faults: each test gets its own broker and store when it kills them.

``fault_deployment(broker=..., couch=..., args=[...])`` builds an in-process invoker (process
backend) with its own topic prefix and databases, on the given broker and CouchDB-API
server, like ``tests/integration``'s ``deployment_factory`` but on servers a test may stop.
``persistent_couch()`` is a pouchdb-server that keeps its data on disk across a restart,
as a real CouchDB does.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator

import pytest
from fault_support import PersistentCouch
from integration.conftest import Deployment, kafka_settings

from invoker.cli import build_invoker
from invoker.config import load_config
from invoker.embedded.controller import EmbeddedController
from invoker.embedded.standalone import EMBEDDED_KAFKA_TIMINGS as FAST_KAFKA
from invoker.service import Invoker
from invoker.store.couchdb import CouchServer as CouchClient

_instances = itertools.count(40)

@pytest.fixture
def persistent_couch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], PersistentCouch]]:
    made: list[PersistentCouch] = []

    def make() -> PersistentCouch:
        server = PersistentCouch(workdir=tmp_path_factory.mktemp("pouchdb-disk"))
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def fault_deployment() -> Iterator[Callable[..., Deployment]]:
    made: list[Deployment] = []

    def make(bootstrap: str, couch_url: str, args: list[str] | None = None) -> Deployment:
        instance = next(_instances)
        prefix = f"f{uuid.uuid4().hex[:8]}_"
        server = CouchClient(couch_url)
        whisks = server.database(f"{prefix}whisks")
        activations = server.database(f"{prefix}activations")
        whisks.ensure_exists()
        activations.ensure_exists()
        controller = EmbeddedController(kafka_settings(bootstrap, prefix))
        argv = ["--id", str(instance), "--port", "0", "--topic-prefix", prefix, "--user-memory", "1024 m",
                "--backend", "process", *FAST_KAFKA, *(args or [])]

        def start_invoker() -> Invoker:
            config = load_config(argv, env={})
            invoker = build_invoker(config, bootstrap, env={}, whisks=whisks, activations=activations)
            invoker.start()
            assert invoker.wait_ready(60), "the invoker never got its partition"
            deployment.invoker = invoker
            return invoker

        deployment = Deployment(None, controller, whisks, activations, instance, prefix, start_invoker)
        start_invoker()
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        try:
            deployment.controller.close()
        except Exception:  # its broker may be the one the test killed
            pass
        if deployment.invoker is not None:
            deployment.invoker.stop()
