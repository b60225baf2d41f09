"""Fixtures of the FPC tests: a real etcd on 127.0.0.1.

  etcd (session)             a running ``EtcdServer`` shared by the tests
  etcd_factory (function)    ``make() -> EtcdServer``: a server of the test's own (to stop,
                             restart or wipe), stopped at teardown
  etcd_client (function)     an ``EtcdClient`` of the shared server
  cluster (function)         a cluster name of the test's own: its keys share no prefix with
                             another test's on the shared server
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from fpc_deployment import fpc, fpc_factory  # noqa: F401  (fixtures of the end-to-end tests)
from fpc_support import EtcdServer, EtcdStartError

from invoker.fpc.etcd import EtcdClient


def _start(server: EtcdServer) -> EtcdServer:
    try:
        return server.start()
    except EtcdStartError as e:
        pytest.fail(f"etcd did not start: {e}", pytrace=False)


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = _start(EtcdServer(tmp_path_factory.mktemp("etcd")))
    yield server
    server.stop()


@pytest.fixture
def etcd_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], EtcdServer]]:
    made: list[EtcdServer] = []

    def make() -> EtcdServer:
        server = EtcdServer(tmp_path_factory.mktemp("etcd"))
        made.append(server)
        return _start(server)

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def etcd_client(etcd: EtcdServer) -> Iterator[EtcdClient]:
    client = EtcdClient.from_hosts(etcd.hosts)
    yield client
    client.close()


@pytest.fixture
def cluster() -> str:
    return f"whisk-{uuid.uuid4().hex[:8]}"
