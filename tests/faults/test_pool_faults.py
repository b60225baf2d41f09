"""The container pool under faults: a container engine that goes away and comes back, a cold
start that fails with an unexpected exception, action documents with limits out of bounds,
GPU jobs waiting beside CPU jobs, and a pause racing a run.

Real parts: a podman Docker-API service of the test's own (killed and restarted, so the shared
one is left alone), real runtime processes (process backend), a declared GPU inventory (no GPU
is touched)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import uuid

import pytest
from fault_support import OwnPodmanService
from pool_support import PythonOnly, Recorder, job, make_action
from services import RUNTIME_IMAGE

from invoker.containerpool.pool import ContainerPool, ImageResolver, PoolConfig
from invoker.containerpool.process import ProcessContainerFactory
from invoker.entities import WHISK_ERROR, Messages, WhiskAction
from invoker.gpu.inventory import parse_declared
from invoker.gpu.layer import GpuLayer, GpuSettings

# Runs until the test creates the file named by ``gate``: a job that holds its resources
# exactly as long as the test needs, with no timing guess.
GATED = """
import os, time
def main(args):
    while args.get("gate") and not os.path.exists(args["gate"]):
        time.sleep(0.02)
    return {"pid": os.getpid()}
"""


def wait_until(condition, timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def run(pool: ContainerPool, j):
    pool.run(j)
    return j


def owners_are_the_live_containers(pool: ContainerPool) -> bool:
    """Once the pool is idle, memory is held by its containers and by nothing else."""
    snapshot = pool.snapshot()
    return snapshot["memory_owners"] == len(snapshot["containers"])


# ----------------------------------------------------------------------------- engine outage


class RuntimeImage(ImageResolver):
    def image_for(self, kind: str) -> str:
        if not kind.startswith("python"):
            raise KeyError(kind)
        return RUNTIME_IMAGE


@pytest.fixture
def own_engine(docker_client, tmp_path):
    import docker

    if shutil.which("podman") is None:
        pytest.skip("the engine at DOCKER_HOST is not podman: no second API service to kill and restart")
    service = OwnPodmanService(tmp_path)
    service.start()
    client = docker.DockerClient(base_url=service.url, timeout=60)
    yield service, client
    client.close()
    service.stop()


def test_engine_stopped_mid_run_and_started_again_cold_starts_fail_and_memory_comes_back(own_engine):
    from invoker.containerpool.docker import DockerContainerFactory

    service, client = own_engine
    factory = DockerContainerFactory(f"pf{uuid.uuid4().hex[:6]}", client=client)
    pool = ContainerPool(factory, RuntimeImage(), PoolConfig(user_memory_mb=512, container_prefix=factory.name_prefix))
    pool.start()
    sink = Recorder()
    try:
        # The engine goes away while an activation runs in a container it created.
        inflight = run(pool, job(make_action("inflight", memory=256), sink, {"sleep": 3}))
        wait_until(lambda: any(" running " in c for c in pool.snapshot()["containers"]), 120, "the run in flight")
        service.stop()
        # Three cold starts of 256 MB in a 512 MB pool while the engine is gone: each is answered
        # with a whisk error, and none keeps its reservation (a leak would leave the third waiting).
        down = [run(pool, job(make_action(f"down{i}", memory=256), sink)) for i in range(3)]
        for j in down:
            activation = sink.wait_for(j, 120)
            assert activation.response.status_code == WHISK_ERROR
            assert activation.response.result == {"error": Messages.resource_error}
        assert pool.buffered == 0
        assert pool.free_memory_mb >= 256  # at most the in-flight container's 256 MB stays taken
        sink.wait_for(inflight, 120)  # it ends once, whatever the engine's absence did to it
        service.start()
        assert sink.result(run(pool, job(make_action("after", memory=256), sink)), 120)["ok"]
        assert len(sink.results) == 5  # one end per activation
        wait_until(lambda: owners_are_the_live_containers(pool), what="memory held only by containers")
    finally:
        if service.process is None:
            service.start()  # so that shutdown can remove the containers
        pool.shutdown()


def engine_containers(client, prefix: str) -> dict[str, str]:
    """Id → name of the containers the engine holds for the pool with ``prefix``, running or not."""
    from invoker.containerpool.docker import LABEL_INVOKER

    # The low-level list: it inspects nothing, so a container removed meanwhile is no error.
    listed = client.api.containers(all=True, filters={"label": f"{LABEL_INVOKER}={prefix}"})
    return {c["Id"][:12]: c["Names"][0].lstrip("/") for c in listed}


def engine_networks(client, prefix: str) -> set[str]:
    return {n.name for n in client.networks.list() if n.name.startswith(f"{prefix}_")}


def pool_containers(pool: ContainerPool) -> set[str]:
    return {entry.split()[1] for entry in pool.snapshot()["containers"]}  # "<ContainerProxy ID ..."


def test_containers_discarded_while_the_engine_is_away_are_removed_once_it_is_back(own_engine):
    """With the API gone, the pool can no longer follow its warm containers (their log streams
    end) and discards them, but the engine keeps them running (conmon): each must still be
    removed, with its network, once the engine answers again, not left running until the
    invoker restarts."""
    from invoker.containerpool.docker import DockerContainerFactory

    service, client = own_engine
    factory = DockerContainerFactory(f"pf{uuid.uuid4().hex[:6]}", client=client)
    pool = ContainerPool(factory, RuntimeImage(), PoolConfig(user_memory_mb=512, container_prefix=factory.name_prefix))
    pool.start()
    sink = Recorder()
    try:
        action = make_action("warm", memory=256)
        assert sink.result(run(pool, job(action, sink)), 120)["ok"]
        before = engine_containers(client, factory.name_prefix)
        assert len(before) == 1
        service.stop()
        # The warm container cannot be followed any more: discarded, and the cold start
        # meant to replace it fails.
        down = sink.wait_for(run(pool, job(action, sink)), 120)
        assert down.response.status_code == WHISK_ERROR
        service.start()
        assert sink.result(run(pool, job(action, sink)), 120)["ok"]
        wait_until(lambda: set(engine_containers(client, factory.name_prefix)) == pool_containers(pool), 30,
                   "the engine to hold only the pool's containers")
        assert not set(before) & set(engine_containers(client, factory.name_prefix))
        # A container's network of its own (podman) goes with it.
        live = set(engine_containers(client, factory.name_prefix).values())
        assert engine_networks(client, factory.name_prefix) <= live
    finally:
        if service.process is None:
            service.start()
        pool.shutdown()


# ----------------------------------------------------------------------------- GPU layer


@pytest.fixture
def gpu_pool(tmp_path):
    made: list[tuple[ContainerPool, GpuLayer]] = []

    def make(gpus: str = "0:1GiB", user_memory_mb: int = 4096, factory=None) -> ContainerPool:
        layer = GpuLayer.start(parse_declared(gpus), GpuSettings(reserved_mb=0), "off",
                               "nvidia-cuda-mps-control", tmp_path / "mps")
        factory = factory or ProcessContainerFactory(extra_env={"__OW_INVOKER": "poolfaults"})
        pool = ContainerPool(factory, PythonOnly(), PoolConfig(user_memory_mb=user_memory_mb), gpu=layer)
        pool.start()
        made.append((pool, layer))
        return pool

    yield make
    for pool, layer in made:
        pool.shutdown()
        layer.stop()


def gpu_action(name: str, gpu_memory: str, memory: int = 256) -> WhiskAction:
    return make_action(name, memory=memory, code=GATED, kind="python:3-gpu",
                       annotations=[{"key": "gpu", "value": {"memory": gpu_memory}}])


class EngineSocketGone(ProcessContainerFactory):
    """Its first ``create`` fails the way a vanished engine socket does: an ``OSError``, not a
    ``ContainerError`` (the docker SDK lets ``requests``' connection errors through)."""

    def __init__(self) -> None:
        super().__init__(extra_env={"__OW_INVOKER": "poolfaults"})
        self.failures = 1

    def create(self, spec):
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        return super().create(spec)


def test_any_cold_start_exception_releases_host_and_gpu_memory(gpu_pool):
    pool = gpu_pool("0:1GiB", user_memory_mb=512, factory=EngineSocketGone())
    sink = Recorder()
    failed = sink.wait_for(run(pool, job(gpu_action("g", "800 MB", memory=512), sink)))
    assert failed.response.status_code == WHISK_ERROR
    assert failed.response.result == {"error": Messages.resource_error}
    assert pool.free_memory_mb == 512
    assert pool.gpu_snapshot()["gpus"][0]["committed_mb"] == 0
    # Both reservations are back: the same job fits again.
    assert sink.result(run(pool, job(gpu_action("g", "800 MB", memory=512), sink)))["pid"] > 0
    wait_until(lambda: owners_are_the_live_containers(pool), what="memory held only by containers")


def test_a_job_waiting_for_gpu_memory_does_not_hold_up_cpu_work(gpu_pool, tmp_path):
    pool = gpu_pool("0:1GiB", user_memory_mb=4096)
    sink = Recorder()
    gate = tmp_path / "gate"
    first = run(pool, job(gpu_action("first", "600 MB"), sink, {"gate": str(gate)}))
    wait_until(lambda: pool.gpu_snapshot()["gpus"][0]["active"] == 1, what="first GPU job running")
    second = run(pool, job(gpu_action("second", "600 MB"), sink, {"gate": str(gate)}))
    assert pool.buffered == 1  # 600 + 600 MB > 1 GiB: it waits for GPU memory
    cpu = run(pool, job(make_action("cpu", code=GATED), sink))
    assert sink.result(cpu, 60)["pid"] > 0  # host memory is plenty: CPU work runs now
    assert second.msg.activation_id not in sink.results
    gate.touch()
    assert sink.result(first)["pid"] > 0 and sink.result(second)["pid"] > 0


# ----------------------------------------------------------------------------- validation


@pytest.fixture
def cpu_pool():
    pool = ContainerPool(ProcessContainerFactory(extra_env={"__OW_INVOKER": "poolfaults"}), PythonOnly(),
                         PoolConfig(user_memory_mb=1024))
    pool.start()
    yield pool
    pool.shutdown()


@pytest.mark.parametrize(("limits", "error"), [
    ({"memory": 0}, "requirement failed: memory 0 MB below allowed threshold of 128 MB"),
    ({"memory": -512}, "requirement failed: memory -512 MB below allowed threshold of 128 MB"),
    ({"timeout": 50}, "requirement failed: duration 50 milliseconds below allowed threshold of 100 milliseconds"),
    ({"timeout": 300_001},
     "requirement failed: duration 300001 milliseconds exceeds allowed threshold of 300000 milliseconds"),
    ({"logs": -1}, "requirement failed: log size -1 MB below allowed threshold of 0 MB"),
    ({"concurrency": 0}, "requirement failed: concurrency 0 below allowed threshold of 1"),
])
def test_limits_out_of_bounds_are_refused_with_openwhisk_text(cpu_pool, limits, error):
    sink = Recorder()
    refused = sink.wait_for(run(cpu_pool, job(make_action("bad", code=GATED, **limits), sink)))
    assert refused.response.status_code == WHISK_ERROR
    assert refused.response.result == {"error": error}
    assert cpu_pool.counts.cold_starts == 0  # no container, and memory untouched (a negative one inflated it)
    assert cpu_pool.free_memory_mb == 1024
    assert len(sink.results) == 1


def test_code_larger_than_the_exec_limit_is_refused():
    from invoker.entities import LimitBounds

    pool = ContainerPool(ProcessContainerFactory(extra_env={"__OW_INVOKER": "poolfaults"}), PythonOnly(),
                         PoolConfig(user_memory_mb=1024, bounds=LimitBounds(exec_size_bytes=64)))
    pool.start()
    try:
        sink = Recorder()
        code = GATED  # longer than 64 bytes
        refused = sink.wait_for(run(pool, job(make_action("big", code=code), sink)))
        assert refused.response.status_code == WHISK_ERROR
        size = len(code.encode())
        assert refused.response.result == {"error": f"exec larger than allowed: {size} > 64 bytes."}
        assert pool.counts.cold_starts == 0
    finally:
        pool.shutdown()


def test_limit_bounds_are_read_as_openwhisk_configures_them():
    from invoker.config import load_config

    bounds = load_config([], env={"CONFIG_whisk_memory_max": "512 m", "CONFIG_whisk_timeLimit_max": "10 minutes",
                                  "CONFIG_whisk_concurrencyLimit_max": "1"}).limit_bounds()
    limits = make_action("big", code=GATED, memory=1024).limits
    assert bounds.violation(limits, None) == "requirement failed: memory 1024 MB exceeds allowed threshold of 512 MB"
    assert bounds.violation(make_action("long", code=GATED, timeout=600_000).limits, None) is None
    assert bounds.violation(make_action("many", code=GATED, concurrency=2).limits, None) == (
        "requirement failed: concurrency 2 exceeds allowed threshold of 1")


# ----------------------------------------------------------------------------- pause and run


class StoppingFactory(ProcessContainerFactory):
    """Process containers that really pause (SIGSTOP/SIGCONT, what the cgroup freezer does to a
    container). The test holds ``suspend`` open after the stop, so a run can be placed on the
    container while its pause is under way."""

    def __init__(self) -> None:
        super().__init__(extra_env={"__OW_INVOKER": "poolfaults"})
        self.pausing = threading.Event()
        self.release = threading.Event()

    def create(self, spec):
        container = super().create(spec)

        def suspend() -> None:
            os.killpg(container.process.pid, signal.SIGSTOP)
            self.pausing.set()
            self.release.wait(30)

        def resume() -> None:
            os.killpg(container.process.pid, signal.SIGCONT)

        container.suspend = suspend
        container.resume = resume
        return container


def test_a_run_placed_while_the_container_is_being_paused_resumes_it():
    factory = StoppingFactory()
    pool = ContainerPool(factory, PythonOnly(), PoolConfig(user_memory_mb=1024, pause_grace_s=0.3))
    pool.start()
    try:
        sink = Recorder()
        action = make_action("paused", code=GATED, timeout=5000)
        first = sink.result(run(pool, job(action, sink)))
        assert factory.pausing.wait(30), "the janitor never paused the idle container"
        second = run(pool, job(action, sink))  # warm placement on the container being paused
        time.sleep(0.3)  # let the run reach the container before the pause completes
        factory.release.set()
        assert sink.result(second, 30)["pid"] == first["pid"]  # resumed, not timed out
        assert pool.counts.warm_starts == 1
    finally:
        factory.release.set()
        pool.shutdown()
