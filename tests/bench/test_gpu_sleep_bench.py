"""bench/gpu_sleep.py stays runnable: ``--smoke`` runs its code paths on the CPU (Torch and ONNX,
sleep and wake through ``owruntime.models``, the copies host-to-host) and records nothing;
without CUDA and without ``--smoke`` it refuses to run rather than write a CPU figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "runtimes" / "python")])}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_sleep.py"), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_smoke_run_measures_every_model_and_records_nothing():
    results = ROOT / "bench" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    done = _run("--smoke", "--formats", "torch,onnx")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("smoke run on a CPU: nothing recorded")
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")} == before
    report = json.loads(done.stdout[done.stdout.index("\n{") + 1:done.stdout.rindex("}") + 1])
    assert "NOT GPU figures" in report["figures_are"] and report["gpu"] is None
    assert set(report["models"]) == {"resnet50", "minilm"}  # the 1.34 GB model only on a GPU
    for name, rows in report["models"].items():
        assert [r["format"] for r in rows] == ["torch", "onnx"], name
        for r in rows:
            assert r["resident_s"] > 0 and r["wake_s"] > 0 and r["model_bytes"] > 0, r
            assert len(r["cycles"]) == 1
        torch_row = rows[0]
        # host-to-host: the dropped copy is the model (one aligned allocation), said to be host-to-host
        assert 1.0 <= torch_row["freed_fraction"] < 1.01
        assert "host-to-host" in torch_row["copies"] and "copy_GBps" not in torch_row


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the full run would start")
def test_without_cuda_it_refuses_to_run():
    done = _run()
    assert done.returncode != 0
    assert "no CUDA device" in done.stderr and "--smoke" in done.stderr


def test_the_pool_level_sleep_bench_runs_on_the_cpu_and_records_nothing():
    results = ROOT / "bench" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_sleep_pool.py"), "--smoke", "--containers", "2",
                           "--calls", "2"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("smoke run on a CPU: nothing recorded")
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")} == before
    report = json.loads(done.stdout[done.stdout.index("{"):done.stdout.rindex("}") + 1])
    assert report["all_same_result"] and len(report["containers"]) == 2
    for row in report["containers"]:
        # On the CPU nothing is freed on a CUDA device: the charge asleep is the context estimate.
        assert (row["freed_bytes"], row["measured"], row["asleep_charge_mb"]) == (0, False, 300), row
        assert row["host_bytes"] > 0 and row["wake_s"] > 0
    assert report["pool"]["gpu_wakes"] == 2 and report["pool"]["gpu_sleep_failures"] == 0
