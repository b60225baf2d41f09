"""Fixtures for real services (Kafka-protocol broker, CouchDB API) and the ``gpu`` marker.

Fixtures:
  kafka_broker (session)            a started ``EmbeddedKafka``
  kafka_bootstrap (session)         its ``bootstrap_servers``, e.g. ``127.0.0.1:40123``
  couchdb_url (session)             ``http://127.0.0.1:PORT`` of an in-memory pouchdb-server
  couchdb_server_factory (function) ``make(port=None, start=True) -> CouchServer``
  kafka_broker_factory (function)   ``make(port=None, start=True) -> EmbeddedKafka``
  docker_client (session)           a docker SDK client of the engine at DOCKER_HOST (podman in CI);
                                    skips without one, fails instead under ./dev test
Servers made by a factory are independent of the session ones and stopped at teardown.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator

import pytest

# kafka-python 3.0 loads its protocol schemas through deprecated importlib.resources calls:
# 200+ warnings per run that would bury ours. Set before anything imports kafka.
warnings.filterwarnings("ignore", r"(read|open)_text is deprecated", DeprecationWarning)

from services import (  # noqa: E402
    BrokerStartError,
    CouchServer,
    CouchStartError,
    EmbeddedKafka,
    container_engine_problem,
    nvidia_gpu_count,
)

NO_GPU_REASON = "no NVIDIA GPU: nvidia-smi/NVML not available"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    # Ask NVML only when a gpu test was collected: it costs a driver load.
    if gpu_items and nvidia_gpu_count() < 1:
        skip = pytest.mark.skip(reason=NO_GPU_REASON)
        for item in gpu_items:
            item.add_marker(skip)


def _start_broker(broker: EmbeddedKafka) -> EmbeddedKafka:
    try:
        return broker.start()
    except BrokerStartError as e:
        pytest.fail(f"embedded Kafka broker did not start: {e}", pytrace=False)


def _start_couch(server: CouchServer) -> CouchServer:
    try:
        return server.start()
    except CouchStartError as e:
        pytest.fail(f"pouchdb-server did not start: {e}", pytrace=False)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    broker = EmbeddedKafka(log_path=tmp_path_factory.mktemp("kafka") / "broker.log")
    _start_broker(broker)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: EmbeddedKafka) -> str:
    return kafka_broker.bootstrap_servers


@pytest.fixture(scope="session")
def couchdb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CouchServer]:
    server = CouchServer(workdir=tmp_path_factory.mktemp("pouchdb"))
    _start_couch(server)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def couchdb_url(couchdb_server: CouchServer) -> str:
    return couchdb_server.url


@pytest.fixture
def couchdb_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., CouchServer]]:
    made: list[CouchServer] = []

    def make(port: int | None = None, start: bool = True) -> CouchServer:
        server = CouchServer(port, workdir=tmp_path_factory.mktemp("pouchdb"))
        made.append(server)
        return _start_couch(server) if start else server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def kafka_broker_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., EmbeddedKafka]]:
    made: list[EmbeddedKafka] = []

    def make(port: int | None = None, start: bool = True) -> EmbeddedKafka:
        broker = EmbeddedKafka(port, log_path=tmp_path_factory.mktemp("kafka") / "broker.log")
        made.append(broker)
        return _start_broker(broker) if start else broker

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture(scope="session")
def docker_client():
    problem = container_engine_problem()
    if problem is not None:
        if os.environ.get("OWGPU_REQUIRE_CONTAINER_ENGINE"):
            pytest.fail(f"container tests cannot run: {problem}", pytrace=False)
        pytest.skip(f"no container engine: {problem}")
    import docker

    client = docker.from_env(timeout=60)
    yield client
    client.close()
