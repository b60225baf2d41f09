"""On a GPU machine with MPS (marker ``gpu``; the ``tests`` step of bench/gpu_session.sh runs them): a client
cannot raise its memory limit past the daemon's ceiling; a client works with the pipe directory
read-only and cannot delete the control pipe; admission stops while a real daemon is down.
Clients here are plain processes (the GPU machine has no container engine); the read-only
mount is made with a mount namespace of their own (root only)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "gpu"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from gpu_pool_support import PythonOnly, Recorder, gpu_action, job  # noqa: E402

from invoker.containerpool.pool import ContainerPool, PoolConfig  # noqa: E402
from invoker.containerpool.process import ProcessContainerFactory  # noqa: E402
from invoker.entities import SUCCESS, WHISK_ERROR  # noqa: E402
from invoker.gpu.inventory import detect_nvml  # noqa: E402
from invoker.gpu.layer import GpuLayer, GpuSettings  # noqa: E402
from invoker.gpu.mps import CONTROL_BINARY, MpsDaemon  # noqa: E402

pytestmark = pytest.mark.gpu
CEILING_MB = 2048

# A greedy MPS client: it asks for far more than its ceiling in its own environment.
CLIENT = r"""
import json, os, sys
import torch
out = {"free_mb": torch.cuda.mem_get_info()[0] // 2**20}
try:
    block = torch.empty(4 * 2**30, dtype=torch.uint8, device="cuda")
    out["allocated"] = "4 GiB"
except RuntimeError as error:
    out["allocated"] = "out of memory" if "out of memory" in str(error).lower() else str(error)
if "--unlink" in sys.argv:  # only where the pipe directory is read-only: else it works, and MPS is gone
    try:
        os.unlink(os.path.join(os.environ["CUDA_MPS_PIPE_DIRECTORY"], "control"))
        out["unlink"] = "deleted"
    except OSError as error:
        out["unlink"] = error.strerror
print(json.dumps(out))
"""


def _needs_mps_and_torch() -> None:
    if shutil.which(CONTROL_BINARY) is None:
        pytest.skip(f"{CONTROL_BINARY} is not installed on this GPU machine")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")


@pytest.fixture
def ceiling_layer(tmp_path):
    _needs_mps_and_torch()
    inventory = detect_nvml()
    total = inventory.devices[0].memory_total_mb
    layer = GpuLayer.start(inventory, GpuSettings(reserved_mb=total - CEILING_MB, mps_check_interval_s=0), "on",
                           mps_dir=tmp_path / "mps")
    yield layer
    layer.stop()


def _client(layer: GpuLayer, read_only: bool) -> dict:
    env = {**os.environ, **layer.daemon.env(), "CUDA_VISIBLE_DEVICES": layer.inventory.devices[0].key,
           "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=100G", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "100"}
    command = [sys.executable, "-c", CLIENT] + (["--unlink"] if read_only else [])
    if read_only:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            pytest.skip("a read-only bind mount of the pipe directory needs root and unshare(1)")
        pipe = str(layer.daemon.pipe_dir)
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f'mount --bind "{pipe}" "{pipe}" && mount -o remount,bind,ro "{pipe}" && exec "$@"', "sh",
                   *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_client_cannot_raise_its_memory_limit_past_the_daemons_ceiling(ceiling_layer):
    seen = _client(ceiling_layer, read_only=False)
    assert seen["free_mb"] <= CEILING_MB, seen
    assert seen["allocated"] == "out of memory", seen


def test_a_client_works_with_the_pipe_directory_read_only_and_cannot_delete_the_pipe(ceiling_layer):
    seen = _client(ceiling_layer, read_only=True)
    assert seen["unlink"] == "Read-only file system", seen
    assert seen["free_mb"] <= CEILING_MB, seen  # it is an MPS client: the ceiling applies
    assert (ceiling_layer.daemon.pipe_dir / "control").exists()
    assert ceiling_layer.check_daemon() is True


def test_admission_stops_while_a_real_daemon_is_down_and_resumes(tmp_path):
    _needs_mps_and_torch()
    inventory = detect_nvml()
    # Started here, so the layer adopts it and leaves restarting it to its owner (this test).
    daemon = MpsDaemon(shutil.which(CONTROL_BINARY), tmp_path / "pipe", tmp_path / "log",
                       tuple(d.uuid for d in inventory.devices if not d.mig_enabled))
    daemon.start()
    owner = MpsDaemon(daemon.control, daemon.pipe_dir, daemon.log_dir, daemon.visible_devices)
    owner.started_here = True
    layer = GpuLayer.start(inventory, GpuSettings(mps_check_interval_s=0), "on", mps_dir=tmp_path)
    pool = ContainerPool(ProcessContainerFactory(extra_env={"__OW_INVOKER": "mpsdowngpu"}), PythonOnly(),
                         PoolConfig(user_memory_mb=65536), gpu=layer)
    pool.start()
    sink = Recorder()
    try:
        assert not layer.daemon.started_here
        owner.stop()  # what deleting the control pipe amounts to: no daemon
        assert layer.check_daemon() is False
        refused = job(gpu_action("refused", memory=512), sink)
        pool.run(refused)
        assert sink.wait_for(refused, 30).response.status_code == WHISK_ERROR
        owner.start()
        assert layer.check_daemon() is True
        admitted = job(gpu_action("admitted", memory=512), sink)
        pool.run(admitted)
        assert sink.wait_for(admitted, 300).response.status_code == SUCCESS
    finally:
        pool.shutdown()
        layer.stop()
        if owner.running():
            owner.stop()
