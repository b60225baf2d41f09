"""GPU sharing behind one interface per device (``invoker.gpu.sharing``), devices keyed by
their UUID where they have one."""

from __future__ import annotations

from gpu_pool_support import PythonOnly

from invoker.containerpool.pool import ContainerPool, PoolConfig
from invoker.containerpool.process import ProcessContainerFactory
from invoker.gpu.inventory import GpuDevice, Inventory
from invoker.gpu.layer import GpuLayer, GpuPlacement, GpuSettings
from invoker.gpu.mps import MpsDaemon, SharingStatus
from invoker.gpu.sharing import MpsSharing, TimeSlicing

QUIET = {"mps_check_interval_s": 0}


def two_uuid_gpus() -> Inventory:
    return Inventory((GpuDevice(0, 1000, uuid="GPU-aaaa"), GpuDevice(1, 2000, uuid="GPU-bbbb")), "nvml")


def test_each_device_has_its_sharing_mode_by_key(tmp_path):
    daemon = MpsDaemon("unused", tmp_path / "pipe", tmp_path / "log")
    layer = GpuLayer(two_uuid_gpus(), SharingStatus(True, "ok", ("GPU-aaaa",)),
                     GpuSettings(mps_client_uid=10001, mps_max_clients=7, **QUIET), daemon)
    assert isinstance(layer.devices["GPU-aaaa"], MpsSharing) and isinstance(layer.devices["GPU-bbbb"], TimeSlicing)
    assert layer.client_limits() == {"GPU-aaaa": 7}  # a time-sliced GPU has no client limit
    mps_env = layer.container_env(GpuPlacement("GPU-aaaa", 512, 25), stem_cell=False)
    assert mps_env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=512MB" and mps_env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    assert layer.container_env(GpuPlacement("GPU-bbbb", 512, 25), stem_cell=False) == {}
    assert (layer.container_user("GPU-aaaa"), layer.container_user("GPU-bbbb")) == ("10001:10001", None)
    assert layer.mounts("GPU-bbbb") == ()


def test_an_mps_device_stops_admitting_while_its_daemon_is_down_a_time_sliced_one_does_not(tmp_path):
    daemon = MpsDaemon("unused", tmp_path / "pipe", tmp_path / "log")
    layer = GpuLayer(two_uuid_gpus(), SharingStatus(True, "ok", ("GPU-aaaa",)), GpuSettings(**QUIET), daemon)
    assert not layer.paused("GPU-aaaa") and layer.admitting()
    layer.daemon_up = False
    assert layer.paused("GPU-aaaa") and not layer.paused("GPU-bbbb") and layer.admitting()


def test_the_pool_places_and_names_gpus_by_uuid():
    layer = GpuLayer(two_uuid_gpus(), SharingStatus(False, "off"), GpuSettings(**QUIET))
    pool = ContainerPool(ProcessContainerFactory(), PythonOnly(), PoolConfig(user_memory_mb=4096), gpu=layer)
    placer = pool.gpu_placer
    assert list(placer.ledger.devices) == ["GPU-aaaa", "GPU-bbbb"]
    placement = placer.placement("GPU-bbbb", placer.request(_action()))
    spec = pool.spec("python:3-gpu", 256, "x", placement)
    assert spec.gpu == "GPU-bbbb"  # what the engine is asked for: the UUID, stable across reboots
    snapshot = pool.gpu_snapshot()
    assert [g["key"] for g in snapshot["gpus"]] == ["GPU-aaaa", "GPU-bbbb"]
    assert [g["sharing"] for g in snapshot["gpus"]] == ["time-slicing", "time-slicing"]
    pool.shutdown()


def _action():
    from gpu_pool_support import gpu_action

    return gpu_action("m", 256)
