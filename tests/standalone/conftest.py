from __future__ import annotations

from collections.abc import Iterator

import pytest
from standalone_support import Standalone, StandaloneStartError, node_available, start_standalone


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    try:
        server = start_standalone(tmp_path_factory.mktemp("standalone"))
    except StandaloneStartError as error:
        pytest.fail(str(error), pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def openwhisk_client() -> None:
    if not node_available():
        pytest.fail("node or the openwhisk npm client is missing: run ./dev setup", pytrace=False)
