"""GPU placement and admission end to end through the pool: process backend (real runtime
processes), a declared GPU inventory (no GPU is touched; CUDA_VISIBLE_DEVICES and the MPS
variables are only observed in the runtime's environment)."""

from __future__ import annotations

import os
import threading
import time

import pytest
from gpu_pool_support import PROBE, GpuWatch, PythonOnly, Recorder, gpu_action, job, wait_until
from pool_support import make_action

from invoker.containerpool.pool import ContainerPool, PoolConfig
from invoker.containerpool.process import ProcessContainerFactory
from invoker.gpu.inventory import parse_declared
from invoker.gpu.layer import GpuLayer, GpuSettings
from invoker.manifest import StemCell


@pytest.fixture
def gpu_pool(tmp_path):
    pools: list[tuple[ContainerPool, GpuLayer]] = []

    def make(gpus: str = "0:1GiB", mps: str = "auto", control: str = "nvidia-cuda-mps-control",
             user_memory_mb: int = 8192, factory: ProcessContainerFactory | None = None, **settings) -> ContainerPool:
        settings.setdefault("reserved_mb", 0)
        layer = GpuLayer.start(parse_declared(gpus), GpuSettings(**settings), mps, control, tmp_path / "mps")
        factory = factory or ProcessContainerFactory(extra_env={"__OW_INVOKER": "gpupooltest"})
        pool = ContainerPool(factory, PythonOnly(), PoolConfig(user_memory_mb=user_memory_mb), gpu=layer)
        pool.start()
        pools.append((pool, layer))
        return pool

    yield make
    for pool, layer in pools:
        pool.shutdown()
        layer.stop()


def test_a_warm_container_holding_the_model_on_a_gpu_is_preferred(gpu_pool):
    pool = gpu_pool("0:8GiB")
    sink = Recorder()
    action = gpu_action("model", gpu={"memory": "1 GB"})
    # Two containers of the action: the first loads a model and finishes first, so the
    # second is the most recently used one (the one plain warm reuse would pick).
    loader, other = job(action, sink, {"sleep": 0.2, "load": "resnet50"}), job(action, sink, {"sleep": 1.0})
    pool.run(loader)
    pool.run(other)
    holder = sink.result(loader)["pid"]
    assert sink.result(other)["pid"] != holder
    assert pool.counts.cold_starts == 2
    for _ in range(3):
        assert sink.result(_run(pool, job(action, sink)))["pid"] == holder
    snapshot = pool.gpu_snapshot()
    assert snapshot["gpus"][0]["resident_models"] == ["resnet50"]
    assert snapshot["gpus"][0]["resident_bytes"] == 1000


def _run(pool, j):
    pool.run(j)
    return j


def test_gpu_memory_is_never_overcommitted_jobs_wait_and_drain(gpu_pool):
    pool = gpu_pool("0:1GiB")
    watch = GpuWatch(pool)
    sink = Recorder()
    first = job(gpu_action("first", gpu={"memory": "600 MB"}), sink, {"sleep": 1.0})
    second = job(gpu_action("second", gpu={"memory": "600 MB"}), sink)
    pool.run(first)
    wait_until(lambda: pool.gpu_snapshot()["gpus"][0]["active"] == 1, what="first running")
    pool.run(second)
    assert pool.buffered == 1  # 600 + 600 MB > 1 GiB: it waits
    result = sink.result(second)
    sink.result(first)
    watch.stop()
    assert watch.violations == []
    assert watch.worst["0"] == 600
    assert pool.counts.gpu_waits >= 1 and pool.counts.gpu_evictions == 1  # the idle first container made room
    assert result["gpu"] == "0"
    (proxy,) = [p for p in pool._containers if p.gpu is not None]
    assert proxy.action.name == "second" and pool.buffered == 0


def test_requests_no_gpu_can_admit_are_refused_with_a_clear_error(gpu_pool):
    pool = gpu_pool("0:1GiB,1:2GiB")
    sink = Recorder()
    too_big = job(gpu_action("big", gpu={"memory": "3 GB"}), sink)
    pool.run(too_big)
    activation = sink.wait_for(too_big)
    assert activation.response.status_code == 2
    assert "exceeds what any GPU of this invoker can admit (2048 MB)" in activation.response.result["error"]
    bad = job(gpu_action("bad", gpu={"sm": 150}), sink)
    pool.run(bad)
    activation = sink.wait_for(bad)
    assert activation.response.status_code == 2
    assert activation.response.result["error"].startswith("The action's GPU request is invalid")
    assert pool.counts.cold_starts == 0 and pool.counts.gpu_refused == 1
    # The default request is the action's memory limit.
    default = job(gpu_action("default", memory=3072), sink)
    pool.run(default)
    assert sink.wait_for(default).response.status_code == 2


def test_idle_warm_gpu_containers_are_evicted_least_recently_used_first(gpu_pool):
    pool = gpu_pool("0:1GiB")
    sink = Recorder()
    a, b, c = (gpu_action(n, gpu={"memory": "400 MB"}) for n in ("a", "b", "c"))
    for action in (a, b, a, c):
        sink.result(_run(pool, job(action, sink)))
    names = {p.action.name for p in pool._containers if p.gpu is not None}
    assert names == {"a", "c"}  # b, the least recently used, went
    assert pool.counts.gpu_evictions == 1
    assert pool.gpu_snapshot()["gpus"][0]["committed_mb"] == 800


def test_cold_starts_go_to_the_gpu_with_most_free_memory_then_least_load(gpu_pool):
    pool = gpu_pool("0:2GiB,1:3GiB")
    sink = Recorder()
    x = job(gpu_action("x", gpu={"memory": "1 GB"}), sink, {"sleep": 1.0})
    pool.run(x)
    wait_until(lambda: pool.gpu_snapshot()["gpus"][1]["active"] == 1, what="x running on GPU 1")
    y = job(gpu_action("y", gpu={"memory": "1 GB"}), sink, {"sleep": 1.0})
    pool.run(y)  # 2048 MB free on both: the one without load
    z = job(gpu_action("z", gpu={"memory": "1536 MB"}), sink)
    pool.run(z)  # GPU 0 has 1024 MB left, GPU 1 2048 MB
    assert [sink.result(j)["gpu"] for j in (x, y, z)] == ["1", "0", "1"]


def test_cpu_actions_keep_their_behaviour_next_to_the_gpu_layer(gpu_pool):
    pool = gpu_pool("0:1GiB")
    sink = Recorder()
    result = sink.result(_run(pool, job(gpu_action("cpu", memory=2048, kind="python:3"), sink)))
    assert result["gpu"] is None and result["env"] == {}
    assert pool.gpu_snapshot()["gpus"][0]["containers"] == []


def test_an_action_annotated_invoker_resources_gpu_is_gpu_work_whatever_its_kind(gpu_pool):
    # The controller patch routes it to a GPU invoker (the FPC scheduler's annotation); landing
    # there, it must get a GPU too, not run as CPU work on a GPU node (seen with the real
    # controller). Blackbox images have no -gpu kind: the annotation is their only way.
    pool = gpu_pool("0:1GiB")
    sink = Recorder()
    action = make_action("annotated", memory=256, code=PROBE, kind="python:3",
                         annotations=[{"key": "invoker-resources", "value": ["gpu"]}])
    result = sink.result(_run(pool, job(action, sink)))
    assert result["gpu"] == "0"
    assert len(pool.gpu_snapshot()["gpus"][0]["containers"]) == 1
    other = make_action("other-resource", memory=256, code=PROBE, kind="python:3",
                        annotations=[{"key": "invoker-resources", "value": ["ssd"]}])
    assert sink.result(_run(pool, job(other, sink)))["gpu"] is None


def test_time_slicing_is_the_fallback_and_says_why(gpu_pool):
    pool = gpu_pool("0:1GiB", mps="auto")
    sink = Recorder()
    result = sink.result(_run(pool, job(gpu_action("ts", gpu={"memory": "512 MB"}), sink)))
    assert result["env"] == {}  # no MPS client variables
    snapshot = pool.gpu_snapshot()
    assert snapshot["sharing"]["mode"] == "time-slicing"
    assert "declared, not detected" in snapshot["sharing"]["reason"]
    assert snapshot["inventory"]["source"] == "declared" and snapshot["gpus"][0]["mps"] is False


def test_gpu_containers_get_their_mps_limits_from_the_request(gpu_pool, fake_mps_control, tmp_path):
    # The control program is a FAKE (see fake_mps_control.py); --gpu-mps on makes the
    # invoker use it with a declared inventory.
    pool = gpu_pool("0:8GiB", mps="on", control=str(fake_mps_control))
    sink = Recorder()
    explicit = sink.result(_run(pool, job(gpu_action("mps", gpu={"memory": "600 MB", "sm": 30}), sink)))
    assert explicit["env"] == {
        "CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "mps" / "pipe"),
        "CUDA_MPS_LOG_DIRECTORY": str(tmp_path / "mps" / "log"),
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "30",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=600MB",
    }
    derived = sink.result(_run(pool, job(gpu_action("derived", memory=2048), sink)))
    assert derived["env"]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=2048MB"
    assert derived["env"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"  # 2 of 8 GiB
    snapshot = pool.gpu_snapshot()
    assert snapshot["sharing"]["mode"] == "mps" and snapshot["gpus"][0]["mps"] is True
    sms = sorted(c["sm_percent"] for c in snapshot["gpus"][0]["containers"])
    assert sms == [25, 30]


# Holds GPU memory the way torch's caching allocator reports it, through a FAKE torch module
# (this CPU test has no CUDA); the runtime's real reporting code reads it.
HOLDER = """
import sys, types

def main(args):
    held = int(args["hold_mb"]) * 2**20
    cuda = types.SimpleNamespace(is_initialized=lambda: True, device_count=lambda: 1, memory_reserved=lambda i: held)
    sys.modules["torch"] = types.SimpleNamespace(cuda=cuda)
    return {}
"""


def test_what_a_container_holds_on_its_gpu_is_reported_next_to_its_request(gpu_pool):
    from invoker.gpu import metrics

    pool = gpu_pool("0:4GiB")
    sink = Recorder()
    action = gpu_action("holder", gpu={"memory": "600 MB"}, code=HOLDER)
    sink.result(_run(pool, job(action, sink, {"hold_mb": 512})))
    (gpu0,) = pool.gpu_snapshot()["gpus"]
    (container,) = gpu0["containers"]
    assert (container["held_bytes"], container["over_request"]) == (512 * 2**20, False)
    assert (gpu0["held_bytes"], gpu0["over_request"]) == (512 * 2**20, 0)
    sink.result(_run(pool, job(action, sink, {"hold_mb": 900})))  # more than the 600 MB it was admitted with
    snapshot = pool.gpu_snapshot()
    (container,) = snapshot["gpus"][0]["containers"]
    assert container["held_bytes"] == 900 * 2**20 and container["over_request"] is True
    lines = set(metrics.render(snapshot).splitlines())
    assert f'owgpu_gpu_framework_held_bytes{{gpu="0",uuid=""}} {900 * 2**20}' in lines
    assert 'owgpu_gpu_containers_over_request{gpu="0",uuid=""} 1' in lines


def test_an_mps_gpu_never_has_more_containers_than_mps_client_slots(gpu_pool, fake_mps_control):
    # MPS (a FAKE control program, fake_mps_control.py) with 2 client slots: memory for 80
    # containers of 100 MB, room for 2; the third waits for the least recently used to go.
    pool = gpu_pool("0:8GiB", mps="on", control=str(fake_mps_control), mps_max_clients=2)
    sink = Recorder()
    a, b, c = (gpu_action(n, gpu={"memory": "100 MB"}) for n in ("a", "b", "c"))
    for action in (a, b, a):
        sink.result(_run(pool, job(action, sink)))
    busy = job(b, sink, {"sleep": 1.0})
    pool.run(busy)  # b is busy: only a can make room
    sink.result(_run(pool, job(c, sink)))
    sink.result(busy)
    names = {p.action.name for p in pool._containers if p.gpu is not None}
    assert names == {"b", "c"} and pool.counts.gpu_evictions == 1 and pool.counts.gpu_waits >= 1
    gpu0 = pool.gpu_snapshot()["gpus"][0]
    assert gpu0["mps_client_slots"] == 2 and len(gpu0["containers"]) == 2 and gpu0["committed_mb"] == 200


class SpecsSeen(ProcessContainerFactory):
    """The process backend, keeping every ContainerSpec the pool asked it for."""

    def __init__(self) -> None:
        super().__init__(extra_env={"__OW_INVOKER": "gpupooltest"})
        self.specs: list = []

    def create(self, spec):
        self.specs.append(spec)
        return super().create(spec)


def test_gpu_containers_are_asked_to_run_as_the_mps_user_with_the_mps_directories(gpu_pool, fake_mps_control,
                                                                                 tmp_path):
    # A FAKE control program (fake_mps_control.py). The uid is this process's own, so the
    # directories need no change; the process backend runs everything as that user anyway.
    uid = os.geteuid()
    seen = SpecsSeen()
    pool = gpu_pool("0:8GiB", mps="on", control=str(fake_mps_control), factory=seen, mps_client_uid=uid)
    sink = Recorder()
    sink.result(_run(pool, job(gpu_action("mpsuser", gpu={"memory": "600 MB"}), sink)))
    sink.result(_run(pool, job(gpu_action("cpu", kind="python:3"), sink)))
    gpu_spec, cpu_spec = seen.specs
    assert gpu_spec.user == f"{uid}:{uid}"
    assert gpu_spec.mounts == (str(tmp_path / "mps" / "pipe"), str(tmp_path / "mps" / "log"))
    assert cpu_spec.user is None and cpu_spec.mounts == () and cpu_spec.gpu is None


def test_gpu_stem_cells_are_prewarmed_per_gpu_claimed_and_replenished(gpu_pool):
    pool = gpu_pool("0:4GiB,1:4GiB", stem_cells=(StemCell("python:3-gpu", 256, 1),), prewarm=("torch",))

    def stems() -> list:
        with pool._lock:
            return [p for p in pool._containers if p.is_prewarm and p.gpu is not None]

    wait_until(lambda: len(stems()) == 2, timeout_s=120, what="a stem cell on each GPU")
    assert sorted(p.gpu.gpu for p in stems()) == ["0", "1"]
    assert pool.gpu_snapshot()["gpus"][0]["committed_mb"] == 256  # a stem cell holds its GPU memory
    sink = Recorder()
    result = sink.result(_run(pool, job(gpu_action("warmish", memory=256), sink)))
    assert pool.counts.prewarm_starts == 1 and pool.counts.cold_starts == 0
    assert result["torch_loaded"] is True  # imported before the stem cell was claimed
    assert result["env"] == {"OW_GPU_PREWARM": "torch"}
    wait_until(lambda: len(stems()) == 2, timeout_s=120, what="the claimed stem cell replaced")
    # A stem cell's MPS limits were fixed when it was created: another request cannot use it.
    sink.result(_run(pool, job(gpu_action("other-sm", memory=256, gpu={"sm": 50}), sink)))
    assert pool.counts.cold_starts == 1 and pool.counts.prewarm_starts == 1


def test_concurrent_burst_drains_without_overcommit(gpu_pool):
    pool = gpu_pool("0:1GiB,1:1GiB")
    watch = GpuWatch(pool)
    sink = Recorder()
    jobs = [job(gpu_action(f"burst{i}", gpu={"memory": "400 MB"}), sink, {"sleep": 0.3}) for i in range(8)]
    threads = [threading.Thread(target=pool.run, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = [sink.result(j) for j in jobs]
    watch.stop()
    assert watch.violations == []
    assert max(watch.worst.values()) <= 800
    assert sorted({r["gpu"] for r in results}) == ["0", "1"]
    time.sleep(0)  # keep the pool alive until every result is in


def test_idle_stem_cells_of_another_class_give_way_to_a_waiting_job(gpu_pool):
    pool = gpu_pool("0:1GiB", stem_cells=(StemCell("python:3-gpu", 256, 2),), prewarm=())
    wait_until(lambda: sum(p.is_prewarm for p in pool._containers) == 2, what="two stem cells")
    sink = Recorder()
    result = sink.result(_run(pool, job(gpu_action("wide", gpu={"memory": "800 MB"}), sink)))
    assert result["gpu"] == "0"
    assert pool.counts.gpu_evictions == 2 and pool.counts.prewarm_starts == 0
    # No room for a stem cell next to the 800 MB container: none is started.
    time.sleep(0.5)
    assert not any(p.is_prewarm for p in pool._containers)
    assert pool.gpu_snapshot()["gpus"][0]["committed_mb"] == 800
