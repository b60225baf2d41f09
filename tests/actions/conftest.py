"""The example actions in ``actions/``, deployed with their own deploy scripts (the
openwhisk npm client) into a standalone mode, and invoked through the REST API."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from actions_support import ACTIONS
from standalone_support import (
    ROOT,
    Standalone,
    StandaloneStartError,
    node_available,
    start_standalone,
)


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    if not node_available():
        pytest.fail("node or the openwhisk npm client is missing: run ./dev setup", pytrace=False)
    try:
        server = start_standalone(tmp_path_factory.mktemp("standalone"))
    except StandaloneStartError as error:
        pytest.fail(str(error), pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def resnet50_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's own export script, run as a user runs it."""
    out = tmp_path_factory.mktemp("models") / "resnet50-seed0.onnx"
    done = subprocess.run([sys.executable, str(ACTIONS / "image-classifier" / "export_model.py"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "exporting ResNet-50 (untrained, seed 0)" in done.stdout
    return out

