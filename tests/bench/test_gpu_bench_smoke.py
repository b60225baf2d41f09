"""The GPU benchmarks stay runnable: their ``--smoke`` mode runs every code path (pool, GPU
layer with a declared inventory, stem cells, the ResNet-50 actions, the breakdown and the
report) on the CPU and records nothing. The figures themselves come only from a GPU machine
(``bench/gpu_session.sh``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("torch")


def smoke(script: str, *args: str) -> dict:
    results = ROOT / "bench" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--smoke", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("smoke run on a CPU: nothing recorded")
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")} == before  # no CPU figure recorded
    text = done.stdout[done.stdout.index("{"):done.stdout.rindex("}") + 1]
    return json.loads(text)


def test_cold_start_benchmark_breaks_each_start_into_its_parts():
    report = smoke("gpu_coldstart.py", "--only", "torch", "--trials", "1", "--warm", "2")
    torch_rows = report["torch"]
    naive, stem, warm = torch_rows["naive_cold_start"], torch_rows["stem_cell_start"], torch_rows["warm"]
    # Naive: the runtime process, framework import, weights, copy and first inference.
    for part in ("container_start_s", "init_s", "import_s", "weights_load_s", "to_device_s", "first_inference_s"):
        assert naive[part]["n"] == 1 and naive[part]["median"] >= 0, part
    # The stem cell imported the framework before it was claimed; warm runs only infer.
    assert stem["first_inference_s"]["n"] == 1 and warm["inference_s"]["n"] == 2
    assert naive["import_s"]["median"] > stem["import_s"]["median"]
    assert torch_rows["stem_over_warm"] > 0 and "onnx" not in report


def test_mps_throughput_benchmark_runs_n_concurrent_functions():
    report = smoke("gpu_mps_throughput.py", "--n", "2", "--seconds", "1", "--batch", "1")
    (row,) = report["runs"]  # a CPU has no MPS: the time-sliced run only
    assert row["functions"] == 2 and row["sharing"] == "time-slicing"
    assert row["images"] > 0 and len(row["per_function_images_per_s"]) == 2
    assert report["mps_over_time_slicing"] == {} and report["goal_mps_ge_2x_at_n4"] is None
