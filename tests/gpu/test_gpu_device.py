"""On a machine with an NVIDIA GPU (marker ``gpu``; skipped with a reason elsewhere): the real
NVML inventory, the real MPS control daemon, GPU runtime processes getting their MPS
environment and limits, a GPU stem cell with its CUDA context, and an action over its MPS
memory limit failing clearly while its neighbour keeps running."""

from __future__ import annotations

import shutil

import pytest
from gpu_pool_support import PythonOnly, Recorder, gpu_action, job, wait_until

from invoker.containerpool.pool import ContainerPool, PoolConfig
from invoker.containerpool.process import ProcessContainerFactory
from invoker.gpu.inventory import detect_nvml, load_inventory
from invoker.gpu.layer import GpuLayer, GpuSettings
from invoker.gpu.mps import CONTROL_BINARY, MpsDaemon
from invoker.manifest import StemCell

pytestmark = pytest.mark.gpu


def _needs_mps() -> None:
    if shutil.which(CONTROL_BINARY) is None:
        pytest.skip(f"{CONTROL_BINARY} is not installed on this GPU machine")


def _needs_cuda_torch() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} has no CUDA here (install a CUDA build on the GPU machine)")


@pytest.fixture
def device_pool(tmp_path):
    made = []

    def make(mps: str = "on", **settings) -> ContainerPool:
        inventory = detect_nvml()
        layer = GpuLayer.start(inventory, GpuSettings(**settings), mps, mps_dir=tmp_path / "mps")
        pool = ContainerPool(ProcessContainerFactory(extra_env={"__OW_INVOKER": "gpudevicetest"}), PythonOnly(),
                             PoolConfig(user_memory_mb=65536), gpu=layer)
        pool.start()
        made.append((pool, layer))
        return pool

    yield make
    for pool, layer in made:
        pool.shutdown()
        layer.stop()


def test_nvml_inventory_is_detected_and_wins_over_a_declaration():
    inventory = detect_nvml()
    assert inventory is not None and inventory.source == "nvml" and inventory.devices
    for device in inventory.devices:
        assert device.uuid and device.uuid.startswith(("GPU-", "MIG-"))
        assert device.memory_total_mb > 1024 and device.memory_used_mb is not None
        assert device.name and device.name != "declared GPU"
    assert "detected by NVML" in inventory.describe()
    assert load_inventory("0:1GiB").source == "nvml"
    sampled = inventory.sample()
    assert [d.uuid for d in sampled.devices] == [d.uuid for d in inventory.devices]


def test_real_mps_daemon_starts_answers_and_stops(tmp_path):
    _needs_mps()
    inventory = detect_nvml()
    daemon = MpsDaemon(shutil.which(CONTROL_BINARY), tmp_path / "pipe", tmp_path / "log",
                       tuple(d.uuid for d in inventory.devices if not d.mig_enabled))
    daemon.start()
    try:
        assert daemon.running() and daemon.started_here
        assert any((tmp_path / "log").iterdir())  # the daemon writes control.log
    finally:
        daemon.stop()
    assert not daemon.running()


PROBE_CUDA = """
import os
def main(args):
    import torch
    free, total = torch.cuda.mem_get_info()
    return {"free_mb": free // 2**20, "total_mb": total // 2**20,
            "env": {k: v for k, v in os.environ.items() if k.startswith("CUDA_")}}
"""


def test_a_gpu_process_runs_as_an_mps_client_with_its_limits(device_pool):
    _needs_mps()
    _needs_cuda_torch()
    pool = device_pool("on")
    sink = Recorder()
    result = sink.result(_run(pool, job(gpu_action("probe", gpu={"memory": "2 GB", "sm": 30}, code=PROBE_CUDA), sink)))
    assert result["env"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "30"
    assert result["env"]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=2048MB"
    # Under MPS, cudaMemGetInfo clips free memory to the pinned limit (NVIDIA's Multi-Process Service documentation).
    assert result["free_mb"] <= 2048 < result["total_mb"]
    assert pool.gpu_snapshot()["sharing"]["mode"] == "mps"


HOG = """
def main(args):
    import torch
    blocks = [torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda") for _ in range(int(args["blocks"]))]
    return {"allocated_mb": 256 * len(blocks)}
"""

NEIGHBOUR = """
import time
def main(args):
    import torch
    x = torch.randn(1024, 1024, device="cuda")
    deadline, n = time.time() + float(args["seconds"]), 0
    while time.time() < deadline:
        x = (x @ x).clamp_(-1, 1)
        n += 1
    torch.cuda.synchronize()
    return {"iterations": n}
"""


def test_an_action_over_its_mps_memory_limit_fails_clearly_and_its_neighbour_keeps_running(device_pool):
    _needs_mps()
    _needs_cuda_torch()
    pool = device_pool("on")
    sink = Recorder()
    neighbour = job(gpu_action("neighbour", gpu={"memory": "2 GB"}, code=NEIGHBOUR), sink, {"seconds": 8})
    pool.run(neighbour)
    wait_until(lambda: pool.gpu_snapshot()["gpus"][0]["active"] >= 1, what="the neighbour running")
    hog = job(gpu_action("hog", gpu={"memory": "1 GB"}, code=HOG), sink, {"blocks": 8})  # 2 GB > 1 GB limit
    pool.run(hog)
    failed = sink.wait_for(hog, 120)
    assert failed.response.status_code != 0
    assert "out of memory" in str(failed.response.result).lower()
    assert "GPU memory limit of this action: 1024MB" in str(failed.response.result)
    assert sink.result(neighbour, 120)["iterations"] > 0


KEEPER = """
import torch
kept = []

def main(args):
    kept.append(torch.empty(int(args["mb"]) * 2**20, dtype=torch.uint8, device="cuda"))
    return {"allocated_mb": sum(t.numel() for t in kept) // 2**20}
"""


def test_what_torch_holds_on_the_gpu_is_reported_and_flagged_over_the_request(device_pool):
    _needs_cuda_torch()
    pool = device_pool("off")  # time-sliced: nothing stops it going over its request
    sink = Recorder()
    action = gpu_action("keeper", gpu={"memory": "1 GB"}, code=KEEPER)
    assert sink.result(_run(pool, job(action, sink, {"mb": 256})))["allocated_mb"] == 256
    (container,) = pool.gpu_snapshot()["gpus"][0]["containers"]
    assert 256 * 2**20 <= container["held_bytes"] < 1000 * 2**20 and container["over_request"] is False
    assert sink.result(_run(pool, job(action, sink, {"mb": 1024})))["allocated_mb"] == 1280
    (container,) = pool.gpu_snapshot()["gpus"][0]["containers"]
    assert container["held_bytes"] >= 1280 * 2**20 and container["over_request"] is True


def test_a_gpu_stem_cell_has_its_cuda_context_before_it_is_claimed(device_pool):
    _needs_cuda_torch()
    pool = device_pool("auto", stem_cells=(StemCell("python:3-gpu", 2048, 1),), prewarm=("torch",))
    wait_until(lambda: any(p.is_prewarm for p in pool._containers), timeout_s=300, what="a GPU stem cell")
    code = "def main(args):\n    import torch\n    return {'initialized': torch.cuda.is_initialized()}\n"
    sink = Recorder()
    result = sink.result(_run(pool, job(gpu_action("ctx", memory=2048, code=code), sink)))
    assert pool.counts.prewarm_starts == 1 and result["initialized"] is True


def _run(pool, j):
    pool.run(j)
    return j
