"""bench/image_classifier.py stays runnable: its ``--smoke`` mode runs the ``--device cuda``
code paths (the GPU layer with a declared inventory, a GPU stem cell, the example classifier's
zip and ONNX file from its build.py) on the CPU, and records nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("onnxruntime")
pytest.importorskip("efficientnet_lite_pytorch", reason="the ml extra is not installed")


def test_classifier_bench_measures_cold_stem_cell_and_warm():
    results = ROOT / "bench" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "image_classifier.py"), "--smoke"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("smoke run on a CPU: nothing recorded")
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")} == before
    report = json.loads(done.stdout[done.stdout.index("\n{") + 1:done.stdout.rindex("}") + 1])
    onnx = report["onnx"]
    assert {mode: onnx[mode]["n"] for mode in ("cold", "stem_cell", "warm")} == {"cold": 1, "stem_cell": 1, "warm": 1}
    for mode in ("cold", "stem_cell", "warm"):  # the real photo, the right answer, every time
        assert onnx[mode]["top1"] == ["Egyptian cat"], onnx[mode]
        assert onnx[mode]["total_s"]["median"] > 0
    assert onnx["cold"]["init_s"]["median"] > 0 and "torch" not in report
