"""Fixtures of the example-action tests: one standalone mode per test module, and the real
photos the image examples are checked on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from actions_support import PHOTOS
from standalone_support import node_available, running_standalone


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory):
    """The examples deploy with the npm client: without it the tests fail (never skip)."""
    if not node_available():
        pytest.fail("node or the openwhisk npm client is missing: run ./dev setup", pytrace=False)
    yield from running_standalone(tmp_path_factory)


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("scikit-image (the photos) is not installed: run ./dev setup (the ml extra)", pytrace=False)
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return {name: data / name for name in PHOTOS}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the deploy scripts' build.py writes the zip and the model files (MODEL_DIR)."""
    return tmp_path_factory.mktemp("models")
