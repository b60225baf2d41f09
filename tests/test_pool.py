"""The container pool on the process backend: warm reuse, memory accounting, the
run buffer, eviction, concurrency and idle removal (``ContainerPool.scala``)."""

from __future__ import annotations

import time

import pytest
from pool_support import PythonOnly, Recorder, job, make_action

from invoker.containerpool.pool import ContainerPool, PoolConfig
from invoker.containerpool.process import ProcessContainerFactory
from invoker.embedded.controller import new_identity
from invoker.manifest import StemCell


@pytest.fixture
def pool_factory():
    pools: list[ContainerPool] = []

    def make(**config) -> ContainerPool:
        pool = ContainerPool(ProcessContainerFactory(extra_env={"__OW_INVOKER": "pooltest"}), PythonOnly(),
                             PoolConfig(**config))
        pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.shutdown()


def test_warm_container_is_reused_per_namespace_and_action(pool_factory):
    pool = pool_factory(user_memory_mb=1024)
    sink = Recorder()
    action = make_action("a")
    for i in range(3):
        pool.run(job(action, sink))
        sink.wait(i + 1)
    assert pool.counts.cold_starts == 1 and pool.counts.warm_starts == 2
    # Another invoking namespace never shares the container.
    pool.run(job(action, sink, user=new_identity("other")))
    sink.wait(4)
    assert pool.counts.cold_starts == 2


def test_changed_action_revision_gets_a_new_container(pool_factory):
    pool = pool_factory(user_memory_mb=1024)
    sink = Recorder()
    pool.run(job(make_action("a", rev="1-a"), sink))
    sink.wait(1)
    pool.run(job(make_action("a", rev="2-b"), sink))
    sink.wait(2)
    assert pool.counts.cold_starts == 2


def test_memory_is_never_overcommitted_and_the_buffer_drains(pool_factory):
    pool = pool_factory(user_memory_mb=512)
    sink = Recorder()
    actions = [make_action(f"m{i}", memory=256) for i in range(4)]
    for action in actions:
        pool.run(job(action, sink, {"sleep": 0.5}))
    time.sleep(0.2)
    snapshot = pool.snapshot()
    assert snapshot["used_mb"] <= 512
    assert snapshot["buffered"] == 2  # two fit, two wait
    sink.wait(4)
    assert all(a.response.status_code == 0 for a in sink.results.values())
    assert pool.snapshot()["used_mb"] <= 512


def test_idle_warm_containers_are_evicted_lru_to_make_room(pool_factory):
    pool = pool_factory(user_memory_mb=512)
    sink = Recorder()
    first, second, third = (make_action(n, memory=256) for n in ("first", "second", "third"))
    pool.run(job(first, sink))
    sink.wait(1)
    pool.run(job(second, sink))
    sink.wait(2)
    pool.run(job(first, sink))  # first is now the most recently used
    sink.wait(3)
    pool.run(job(third, sink))
    sink.wait(4)
    names = {p.action.name for p in pool._containers}
    assert names == {"first", "third"}  # second, the least recently used, went


def test_head_of_line_buffering_does_not_starve_a_big_action(pool_factory):
    pool = pool_factory(user_memory_mb=512)
    sink = Recorder()
    small, big = make_action("small", memory=256), make_action("big", memory=512)
    pool.run(job(small, sink, {"sleep": 0.5}))
    big_job = job(big, sink)
    pool.run(big_job)
    later = job(make_action("small2", memory=256), sink)
    pool.run(later)
    sink.wait(3)
    order = list(sink.results)
    assert order.index(big_job.msg.activation_id) < order.index(later.msg.activation_id)


def test_action_bigger_than_the_pool_fails_fast(pool_factory):
    pool = pool_factory(user_memory_mb=256)
    sink = Recorder()
    pool.run(job(make_action("huge", memory=512), sink))
    sink.wait(1)
    (activation,) = sink.results.values()
    assert activation.response.status_code == 3
    assert activation.response.result == {"error": "Failed to provision resources to run the action."}


def test_intra_container_concurrency_shares_one_container(pool_factory):
    pool = pool_factory(user_memory_mb=256)
    sink = Recorder()
    action = make_action("conc", memory=256, concurrency=4)
    # The first run initialises; then four overlapping runs fit in the one container.
    pool.run(job(action, sink))
    sink.wait(1)
    for _ in range(4):
        pool.run(job(action, sink, {"sleep": 0.3}))
    sink.wait(5)
    assert pool.counts.cold_starts == 1
    assert len(pool._containers) == 1


def test_idle_containers_are_removed_after_the_idle_timeout(pool_factory):
    pool = pool_factory(user_memory_mb=512, pause_grace_s=0.2, idle_timeout_s=1.0)
    sink = Recorder()
    pool.run(job(make_action("idle"), sink))
    sink.wait(1)
    (proxy,) = pool._containers
    deadline = time.monotonic() + 10
    while pool._containers and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pool._containers
    # Destroyed by an executor task once it has left the pool: wait for that, not for a race.
    while proxy.container.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not proxy.container.is_alive()


def test_stem_cells_are_started_used_and_replenished(pool_factory):
    pool = pool_factory(user_memory_mb=1024, stem_cells=(StemCell("python:3", 256, 1),))
    deadline = time.monotonic() + 10
    while not any(p.is_prewarm for p in pool._containers) and time.monotonic() < deadline:
        time.sleep(0.05)
    stem = next(p for p in pool._containers if p.is_prewarm)
    sink = Recorder()
    pool.run(job(make_action("uses-stem"), sink))
    sink.wait(1)
    assert pool.counts.prewarm_starts == 1 and pool.counts.cold_starts == 0
    assert stem.action is not None and stem.action.name == "uses-stem"
    deadline = time.monotonic() + 10
    while not any(p.is_prewarm for p in pool._containers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(p.is_prewarm for p in pool._containers), "the stem cell was not replaced"


def test_idle_stem_cells_give_way_to_a_job_waiting_for_host_memory(pool_factory):
    # Stem cells of another memory size fill the pool: the job must not wait behind them for good
    # (stem cells never idle out). Found by the cluster simulator (tests/sim).
    pool = pool_factory(user_memory_mb=512, stem_cells=(StemCell("python:3", 256, 2),))
    deadline = time.monotonic() + 10
    while sum(p.is_prewarm for p in pool._containers) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(p.is_prewarm for p in pool._containers) == 2
    sink = Recorder()
    pool.run(job(make_action("big", memory=384), sink))
    sink.wait(1, timeout_s=20)
    (activation,) = sink.results.values()
    assert activation.response.status_code == 0, activation.response
    assert pool.counts.cold_starts == 1 and pool.free_memory_mb >= 0


def test_unrunnable_kind_is_a_provisioning_error(pool_factory):
    pool = pool_factory(user_memory_mb=512)
    sink = Recorder()
    pool.run(job(make_action("node", kind="nodejs:20", code="function main(){}"), sink))
    sink.wait(1)
    (activation,) = sink.results.values()
    assert activation.response.status_code == 3
