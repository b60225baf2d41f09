"""The GPU session stays runnable: ``bench/gpu_session.sh all --smoke`` runs every step of the
GPU machine's session, in order and under its time limit, on the CPU: the benchmarks' code
paths (pool, GPU layer with a declared inventory, stem cells, the ResNet-50 actions, the
breakdown and the report), the loading benchmark and the selection of the ``gpu`` tests. It
records no figure. The figures themselves come only from a GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("torch")
sys.path.insert(0, str(ROOT / "bench"))

ORDER = ["info", "coldstart", "loading", "mps", "tests", "sleep", "sleep-pool", "classifier", "loading-onnx"]  # by value, as on the GPU machine


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu-session")
    results = ROOT / "bench" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    # Limits x5: this shared CPU machine is not what is timed; the steps' order and the GPU
    # machine's limits are.
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_SESSION_LIMIT_SCALE": "5",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "runtimes" / "python")])}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), "all", "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")} == before  # no CPU figure recorded
    return out


def report(log: Path) -> dict:
    text = log.read_text()
    assert text.rstrip().endswith("smoke run on a CPU: nothing recorded"), text[-2000:]
    return json.loads(text[text.index("{"):text.rindex("}") + 1])


def test_the_session_runs_every_step_in_order_within_its_limit(session):
    steps = [json.loads(line) for line in (session / "session.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == ORDER
    for s in steps:
        assert s["status"] == "ok" and s["rc"] == 0, s
        assert s["seconds"] <= s["limit_s"], s
    assert sum(s["gpu_limit_s"] for s in steps) <= 540  # fits one 10-minute device command, start-up aside
    info = (session / "info.log").read_text()
    for what in ("nvidia-smi", "nvidia-cuda-mps-control", "torch", "onnxruntime"):
        assert what in info, what
    assert "collected" in (session / "tests.log").read_text()


def test_cold_start_benchmark_breaks_each_start_into_its_parts(session):
    torch_rows = report(session / "coldstart.log")["torch"]
    naive, stem, warm = torch_rows["naive_cold_start"], torch_rows["stem_cell_start"], torch_rows["warm"]
    # Naive: the runtime process, framework import, weights, copy and first inference.
    for part in ("container_start_s", "init_s", "import_s", "weights_load_s", "to_device_s", "first_inference_s"):
        assert naive[part]["n"] == 1 and naive[part]["median"] >= 0, part
    # The stem cell imported the framework before it was claimed; warm runs only infer.
    assert stem["first_inference_s"]["n"] == 1 and warm["inference_s"]["n"] == 2
    assert naive["import_s"]["median"] > stem["import_s"]["median"]
    assert torch_rows["stem_over_warm"] > 0
    assert torch_rows["mps_server_start"] is None  # no MPS on a CPU: nothing to time apart


def test_mps_throughput_benchmark_runs_n_concurrent_functions(session):
    result = report(session / "mps.log")
    (row,) = result["runs"]  # a CPU has no MPS: the time-sliced run only
    assert row["functions"] == 2 and row["sharing"] == "time-slicing"
    assert row["images"] > 0 and len(row["per_function_images_per_s"]) == 2
    assert result["mps_over_time_slicing"] == {} and result["goal_mps_ge_2x_at_n4"] is None


def test_loading_benchmark_times_allocation_and_pinning_apart(session):
    torch_run = json.loads((session / "model_loading_smoke_torch.json").read_text())
    (row,) = torch_run["models"]["resnet50"]
    assert {"plain_s", "pipelined_s", "copy_s", "compute_s", "alloc_s", "pin_s"} <= set(row)
    assert torch_run["figures_are"].startswith("CPU ONLY")
    onnx_run = json.loads((session / "model_loading_smoke_onnx.json").read_text())
    assert onnx_run["models"]["resnet50"][0]["format"] == "onnx"


def test_a_bench_action_without_cuda_fails_instead_of_reporting_a_cpu_figure(tmp_path):
    """The process backend passes the environment it is given, no more: an action whose torch or
    onnxruntime finds no CUDA there must fail, not be timed on the CPU under the GPU's name."""
    import onnxruntime
    import torch
    from gpu_support import ONNX_ACTION, TORCH_ACTION, require_cuda
    from onnx import TensorProto, helper

    if torch.cuda.is_available() or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is here: the actions would run on it")
    namespace: dict = {}
    exec(TORCH_ACTION, namespace)  # noqa: S102 - the benchmark's own action
    with pytest.raises(RuntimeError, match="CUDA is not available .* figures would be the CPU's"):
        namespace["main"]({"weights": str(tmp_path / "unused.pt"), "device": "cuda"})
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 224, 224])])
    model = tmp_path / "m.onnx"
    model.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
                      .SerializeToString())
    namespace = {}
    exec(ONNX_ACTION, namespace)  # noqa: S102
    with pytest.raises(RuntimeError, match="runs this model on CPUExecutionProvider, not CUDA"):
        namespace["main"]({"weights": str(model), "device": "cuda"})
    assert namespace["main"]({"weights": str(model), "device": "cpu"})["providers"] == ["CPUExecutionProvider"]
    # and the bench checks what came back
    with pytest.raises(RuntimeError, match="did not run on CUDA"):
        require_cuda({"device": "cpu", "phases": {}}, smoke=False)
    with pytest.raises(RuntimeError, match="did not run on CUDA"):
        require_cuda({"providers": ["CPUExecutionProvider"]}, smoke=False)
    require_cuda({"device": "cuda"}, smoke=False)
    require_cuda({"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}, smoke=False)
