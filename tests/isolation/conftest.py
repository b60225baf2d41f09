"""Fixtures of the tenant-isolation tests: each test is an attack a hostile tenant could try
with nothing but an action of its own (issue 15). The runtime helpers of tests/runtime are
reused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

from runtime_support import RuntimeProcess  # noqa: E402


@pytest.fixture
def start_runtime(tmp_path):
    """``start_runtime(env=None)`` -> a started runtime process; killed at teardown."""
    started: list[RuntimeProcess] = []

    def start(env: dict[str, str] | None = None) -> RuntimeProcess:
        runtime = RuntimeProcess(tmp_path / "logs", env)
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        runtime.kill()
