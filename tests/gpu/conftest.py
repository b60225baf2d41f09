"""Fixtures of the GPU-layer tests: a FAKE MPS control program (see fake_mps_control.py)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

FAKE = Path(__file__).with_name("fake_mps_control.py")


@pytest.fixture
def fake_mps_control(tmp_path: Path):
    """Path of a FAKE ``nvidia-cuda-mps-control`` (not MPS; it imitates its interface)."""
    binary = tmp_path / "fakebin" / "nvidia-cuda-mps-control"
    binary.parent.mkdir()
    binary.write_text(f"#!{sys.executable}\n" + FAKE.read_text())
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    yield binary
    # Stop a fake daemon a failed test may have left.
    for pidfile in tmp_path.rglob("fake-control.pid"):
        try:
            os.kill(int(pidfile.read_text()), 15)
        except (OSError, ValueError):
            pass
