"""Fixtures for the ``owruntime`` tests; the helpers are in ``runtime_support.py``."""

from __future__ import annotations

import pytest
from runtime_support import RuntimeProcess


@pytest.fixture
def start_runtime(tmp_path):
    """``start_runtime(env=None)`` -> a started :class:`RuntimeProcess`; killed at teardown."""
    started: list[RuntimeProcess] = []

    def start(env: dict[str, str] | None = None, **kwargs) -> RuntimeProcess:
        runtime = RuntimeProcess(tmp_path / "logs", env, **kwargs)
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        runtime.kill()


@pytest.fixture
def runtime(start_runtime) -> RuntimeProcess:
    return start_runtime()
