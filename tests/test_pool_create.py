"""Members a front end creates before any activation (FPC's ``ContainerCreationMessage``):
``ContainerPool.create``, ``run_on`` and ``delete`` on the process backend."""

from __future__ import annotations

import time

import pytest
from pool_support import PythonOnly, Recorder, job, make_action

from invoker.containerpool.activation import InitContext
from invoker.containerpool.creation import InitFailed, LimitsRefused, MemberGone, NoRoom
from invoker.containerpool.pool import ContainerPool, PoolConfig
from invoker.containerpool.process import ProcessContainerFactory
from invoker.containerpool.states import State
from invoker.manifest import StemCell

ENV = "import os\ndef main(args):\n    return {'model': os.environ.get('MODEL'), 'ns': os.environ.get('__OW_NAMESPACE')}\n"


@pytest.fixture
def pool_factory():
    pools: list[ContainerPool] = []

    def make(**config) -> ContainerPool:
        pool = ContainerPool(ProcessContainerFactory(extra_env={"__OW_INVOKER": "pooltest"}), PythonOnly(),
                             PoolConfig(**config))
        pool.start(janitor=False)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.shutdown()


def init_for(action, env=None) -> InitContext:
    return InitContext(action, "guest", transaction_id="t" * 32, init_env=env or {})


def test_created_member_is_initialised_runs_fetched_jobs_and_is_never_reused_or_idled(pool_factory):
    pool = pool_factory(user_memory_mb=1024, idle_timeout_s=0.0, pause_grace_s=0.0)
    action = make_action("env", code=ENV)
    proxy = pool.create(action, "guest", init_for(action, {"MODEL": "resnet"}))
    assert proxy.initialized and proxy.pinned and proxy.state is State.READY
    assert pool.free_memory_mb == 1024 - 256 and pool.counts.cold_starts == 1
    sink = Recorder()
    for _ in range(2):
        j = job(action, sink)
        assert pool.run_on(proxy, j) is True
        assert sink.result(j) == {"model": "resnet", "ns": "guest"}  # initArgs set at creation
    pool.tick()  # idle past every deadline: a created member stays until deleted
    assert pool.members == [proxy] and proxy.state is State.READY
    # The classic path never takes it: a pushed job of the same action gets its own container.
    pushed = job(action, sink)
    pool.run(pushed)
    sink.result(pushed)
    assert pool.counts.cold_starts == 2 and pool.counts.warm_starts == 0
    pool.delete(proxy)
    assert proxy not in pool.members
    with pytest.raises(MemberGone):
        pool.run_on(proxy, job(action, sink))


def test_a_creation_that_does_not_fit_is_refused_and_leaves_nothing(pool_factory):
    pool = pool_factory(user_memory_mb=512)
    first = make_action("big", memory=384)
    pool.create(first, "guest", init_for(first))
    second = make_action("other", memory=256)
    with pytest.raises(NoRoom):
        pool.create(second, "guest", init_for(second))
    assert len(pool.members) == 1 and pool.free_memory_mb == 128
    with pytest.raises(NoRoom):  # larger than the whole pool
        huge = make_action("huge", memory=1024)
        pool.create(huge, "guest", init_for(huge))


def test_limits_out_of_bounds_are_refused(pool_factory):
    pool = pool_factory(user_memory_mb=1024)
    tiny = make_action("tiny", memory=16)  # below the 128 MB minimum
    with pytest.raises(LimitsRefused):
        pool.create(tiny, "guest", init_for(tiny))
    assert pool.members == []


def test_a_failed_init_removes_the_member_and_gives_its_memory_back(pool_factory):
    pool = pool_factory(user_memory_mb=1024)
    broken = make_action("broken", code="def main(args):\n    return {\n")
    with pytest.raises(InitFailed) as raised:
        pool.create(broken, "guest", init_for(broken))
    assert raised.value.response.status_code == 2  # a developer error
    assert pool.free_memory_mb == 1024 and pool.members == []


def test_a_creation_takes_a_fitting_stem_cell(pool_factory):
    pool = pool_factory(user_memory_mb=1024, stem_cells=(StemCell("python:3", 256, 1),))
    assert pool.counts.prewarm_starts == 0 and len(pool.members) == 1
    action = make_action("warm", code=ENV)
    proxy = pool.create(action, "guest", init_for(action))
    assert pool.counts.prewarm_starts == 1 and pool.counts.cold_starts == 0
    sink = Recorder()
    j = job(action, sink)
    pool.run_on(proxy, j)
    assert sink.result(j)["ns"] == "guest"


def test_delete_while_running_removes_it_once_the_run_ends(pool_factory):
    import threading

    pool = pool_factory(user_memory_mb=1024)
    action = make_action("slow")
    proxy = pool.create(action, "guest", init_for(action))
    sink = Recorder()
    j = job(action, sink, {"sleep": 0.5})
    runner = threading.Thread(target=pool.run_on, args=(proxy, j))
    runner.start()
    while proxy.active == 0:
        pass
    pool.delete(proxy)
    runner.join(30)
    assert sink.result(j) == {"ok": True}  # it finished its activation
    assert proxy not in pool.members and pool.free_memory_mb == 1024


def test_a_gpu_creation_is_admitted_by_gpu_memory_and_refused_when_the_gpus_are_full(tmp_path):
    from invoker.gpu.inventory import parse_declared
    from invoker.gpu.layer import GpuLayer, GpuSettings

    layer = GpuLayer.start(parse_declared("0:2GiB"), GpuSettings(reserved_mb=0, stem_cells=(), mps_check_interval_s=0),
                           "off", mps_dir=tmp_path)
    pool = ContainerPool(ProcessContainerFactory(extra_env={"__OW_INVOKER": "pooltest"}), PythonOnly(),
                         PoolConfig(user_memory_mb=4096), layer)
    pool.start(janitor=False)
    try:
        action = make_action("infer", memory=1024, kind="python:3-gpu")
        first = pool.create(action, "guest", init_for(action))
        assert first.gpu is not None and first.gpu.gpu == "0"
        second = pool.create(action, "guest", init_for(action))  # 2 GiB: two of 1 GiB
        with pytest.raises(NoRoom, match="GPU"):
            pool.create(action, "guest", init_for(action))
        assert pool.free_memory_mb == 4096 - 2048  # host memory: only what was admitted
        pool.delete(second)
        deadline = time.monotonic() + 20
        while True:  # its GPU memory counts as used until its container is gone
            try:
                third = pool.create(action, "guest", init_for(action))
                break
            except NoRoom:
                assert time.monotonic() < deadline, "the deleted container's GPU memory never came back"
                time.sleep(0.05)
        assert third.gpu.gpu == "0"
        too_big = make_action("huge", memory=4096, kind="python:3-gpu")
        with pytest.raises(NoRoom):  # larger than every GPU
            pool.create(too_big, "guest", init_for(too_big))
    finally:
        pool.shutdown()
        layer.stop()


def test_a_gpu_creation_takes_a_gpu_stem_cell_on_its_gpu(tmp_path):
    from invoker.gpu.inventory import parse_declared
    from invoker.gpu.layer import GpuLayer, GpuSettings

    cell = StemCell("python:3-gpu", 1024, 1)
    layer = GpuLayer.start(parse_declared("0:4GiB"), GpuSettings(reserved_mb=0, stem_cells=(cell,),
                                                                 mps_check_interval_s=0), "off", mps_dir=tmp_path)
    pool = ContainerPool(ProcessContainerFactory(extra_env={"__OW_INVOKER": "pooltest"}), PythonOnly(),
                         PoolConfig(user_memory_mb=4096), layer)
    pool.start(janitor=False)
    try:
        deadline = time.monotonic() + 30
        while not any(p.is_prewarm and p.state is State.STARTED for p in pool.members):
            assert time.monotonic() < deadline, "the GPU stem cell never started"
            time.sleep(0.05)
        (stem,) = pool.members
        action = make_action("infer", memory=1024, kind="python:3-gpu", code=ENV)
        proxy = pool.create(action, "guest", init_for(action, {"MODEL": "bert"}))
        assert proxy is stem and proxy.pinned and proxy.gpu.gpu == "0"
        assert pool.counts.prewarm_starts == 1 and pool.counts.cold_starts == 0
        sink = Recorder()
        j = job(action, sink)
        assert pool.run_on(proxy, j) and sink.result(j)["model"] == "bert"
    finally:
        pool.shutdown()
        layer.stop()
