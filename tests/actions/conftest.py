"""The example actions in ``actions/``, deployed with their own deploy scripts (the
openwhisk npm client) into a standalone mode, and invoked through the REST API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from actions_support import ACTIONS
from standalone_support import ROOT, running_standalone

standalone = pytest.fixture(scope="module")(running_standalone)


@pytest.fixture(scope="session")
def resnet50_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's own export script, run as a user runs it."""
    out = tmp_path_factory.mktemp("models") / "resnet50-seed0.onnx"
    done = subprocess.run([sys.executable, str(ACTIONS / "image-classifier" / "export_model.py"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "exporting ResNet-50 (untrained, seed 0)" in done.stdout
    return out

