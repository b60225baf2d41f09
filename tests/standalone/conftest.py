from __future__ import annotations

import pytest
from standalone_support import node_available, running_standalone

standalone = pytest.fixture(scope="module")(running_standalone)


@pytest.fixture(scope="session")
def openwhisk_client() -> None:
    if not node_available():
        pytest.fail("node or the openwhisk npm client is missing: run ./dev setup", pytrace=False)
