"""GPU sleep, the invoker half (issue #20), end to end through the pool: process backend (real
runtime processes whose actions load a real Torch model through ``owruntime.models.load``), a
declared GPU inventory (no GPU is touched). On the CPU the runtime's "device" copy of a
pipelined Torch model is a second host copy, so a sleep frees host memory (named ``cpu`` in the
report); the GPU charge of an asleep container is then the configured context estimate.

Covered: awake -> asleep -> awake (same result, ``X-OW-Resident`` asleep list, the charge shrinks
then grows), asleep -> removed (idle timeout, host budget least recently used), placement (asleep
with the model before a stem cell or a cold start), pressure puts containers to sleep before
destroying any, MPS client slots stay counted, a wake that has no room makes room without ever
over-committing, a failed sleep leaves the container awake and leaks nothing."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_pool_support import PROBE, GpuWatch, PythonOnly, Recorder, gpu_action, job, wait_until
from owruntime.resident import AsleepModel, Residency, ResidentModel

from invoker.containerpool.container import HttpOutcome, SleepReport
from invoker.containerpool.pool import ContainerPool, PoolConfig
from invoker.containerpool.process import ProcessContainerFactory
from invoker.containerpool.proxy import ContainerProxy, State
from invoker.gpu import metrics
from invoker.gpu.inventory import parse_declared
from invoker.gpu.layer import GpuLayer, GpuSettings
from invoker.gpu.ledger import GpuLedger
from invoker.gpu.sleep import MB, asleep_charge_mb, expected_charge_mb, host_mb, implausible
from invoker.manifest import StemCell

pytest.importorskip("torch")

# An ordinary action: loads its model once through the model loader, keeps it in a global,
# knows nothing of sleep. Deterministic weights, so two containers answer alike.
MODEL = """
import os
import torch
from owruntime.models import load

MODELS = {}

def main(args):
    if "m" not in MODELS:
        torch.manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        module = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        MODELS["m"] = load(module, device="cpu", mode="pipelined", key=args.get("key", "encoder"))
    x = torch.arange(2 * 5 * 32, dtype=torch.float32).reshape(2, 5, 32) / 100
    return {"pid": os.getpid(), "y": MODELS["m"](x).tolist()}
"""

CONTEXT_MB = 50


@pytest.fixture
def sleep_pool(tmp_path):
    pools: list[tuple[ContainerPool, GpuLayer]] = []

    def make(gpus: str = "0:1GiB", mps: str = "auto", control: str = "nvidia-cuda-mps-control",
             pause_grace_s: float = 600, idle_timeout_s: float = 600, **settings) -> ContainerPool:
        settings.setdefault("reserved_mb", 0)
        settings.setdefault("sleep_context_mb", CONTEXT_MB)
        settings.setdefault("prewarm", ())
        layer = GpuLayer.start(parse_declared(gpus), GpuSettings(**settings), mps, control, tmp_path / "mps")
        factory = ProcessContainerFactory(extra_env={"__OW_INVOKER": "gpusleeptest"})
        config = PoolConfig(user_memory_mb=8192, pause_grace_s=pause_grace_s, idle_timeout_s=idle_timeout_s)
        pool = ContainerPool(factory, PythonOnly(), config, gpu=layer)
        pool.start()
        pools.append((pool, layer))
        return pool

    yield make
    for pool, layer in pools:
        pool.shutdown()
        layer.stop()


def model_action(name: str, memory_mb: int = 400):
    return gpu_action(name, gpu={"memory": f"{memory_mb} MB"}, code=MODEL)


def _run(pool: ContainerPool, j):
    pool.run(j)
    return j


def _only(pool: ContainerPool, name: str) -> ContainerProxy:
    (proxy,) = [p for p in pool._containers if p.action is not None and p.action.name == name]
    return proxy


def _charge(pool: ContainerPool, proxy: ContainerProxy) -> int:
    with pool._lock:
        return pool.gpu_placer.ledger.charge(proxy).memory_mb


def _state(pool: ContainerPool, name: str) -> State | None:
    with pool._lock:
        states = [p.state for p in pool._containers if p.action is not None and p.action.name == name]
    return states[0] if states else None


def _no_leaks(pool: ContainerPool) -> None:
    """Once idle, the owners of GPU and host memory are exactly the live containers."""
    wait_until(lambda: pool.gpu_placer.ledger.releasing_mb("0") == 0 and not pool.buffered, 30, what="removals done")
    with pool._lock:
        live = set(pool._containers)
        assert set(pool.gpu_placer.ledger._charges) == live
        assert set(pool._memory.owners()) == live
        asleep = {p for p in live if p.state is State.ASLEEP}
        assert set(pool.gpu_placer.asleep_host.owners()) == asleep


def test_idle_container_sleeps_and_wakes_with_the_same_result(sleep_pool):
    pool = sleep_pool(sleep_after_s=0.5)
    sink = Recorder()
    action = model_action("enc")
    first = sink.result(_run(pool, job(action, sink)), timeout_s=120)
    proxy = _only(pool, "enc")
    assert _charge(pool, proxy) == 400
    assert [m.key for m in proxy.container.residency.models] == ["encoder"]

    wait_until(lambda: _state(pool, "enc") is State.ASLEEP, 30, what="asleep by the idle timer")
    residency = proxy.container.residency
    assert residency.models == () and [m.key for m in residency.asleep] == ["encoder"]
    assert residency.asleep[0].host_bytes > 0
    assert _charge(pool, proxy) == CONTEXT_MB  # on the CPU no CUDA memory is freed: the estimate
    gpu0 = pool.gpu_snapshot()["gpus"][0]
    assert gpu0["free_mb"] == 1024 - CONTEXT_MB and gpu0["asleep_containers"] == 1
    (entry,) = gpu0["containers"]
    assert entry["state"] == "asleep" and entry["charge_mb"] == CONTEXT_MB
    assert entry["sleep_host_bytes"] == residency.asleep[0].host_bytes == gpu0["sleep_host_bytes"]
    assert entry["asleep_charge"] == {"held_mb": CONTEXT_MB, "measured": False}
    text = metrics.render(pool.gpu_snapshot())
    assert "owgpu_gpu_sleeps_total 1" in text
    assert f'owgpu_container_charge_bytes{{gpu="0",container="{entry["metrics_id"]}"}} {CONTEXT_MB * MB}' in text
    assert "guest/enc" not in text and proxy.container.id not in text  # an open scrape names no tenant

    again = sink.result(_run(pool, job(action, sink)))
    assert again == first  # same process, same model object, same numbers
    assert _charge(pool, proxy) == 400  # grown back before its /run
    assert [m.key for m in proxy.container.residency.models] == ["encoder"]
    assert proxy.container.residency.asleep == ()
    assert (pool.counts.gpu_sleeps, pool.counts.gpu_wakes, pool.counts.cold_starts) == (1, 1, 1)
    _no_leaks(pool)


def test_a_paused_container_is_resumed_to_sleep(sleep_pool):
    pool = sleep_pool(pause_grace_s=0.3, sleep_after_s=2.5)
    sink = Recorder()
    action = model_action("enc")
    first = sink.result(_run(pool, job(action, sink)), timeout_s=120)
    proxy = _only(pool, "enc")
    wait_until(lambda: proxy.state is State.PAUSED, 15, what="paused")
    wait_until(lambda: _state(pool, "enc") is State.ASLEEP, 30, what="asleep")
    assert proxy.state is State.ASLEEP  # resumed before its /sleep: a paused one cannot answer
    assert sink.result(_run(pool, job(action, sink))) == first


def test_a_job_for_a_container_going_to_sleep_waits_for_it_and_wakes_it(sleep_pool):
    pool = sleep_pool()
    sink = Recorder()
    action = model_action("enc")
    first = sink.result(_run(pool, job(action, sink)), timeout_s=120)
    proxy = _only(pool, "enc")
    with proxy.pause_lock:  # holds the sleep task before its /sleep
        with pool._lock:
            pool.gpu_placer.start_sleep(proxy)
        assert pool.gpu_placer.ledger.releasing_mb("0") == 400 - CONTEXT_MB  # on its way
        waiting = _run(pool, job(action, sink))
        assert pool.buffered == 1 and proxy.state is State.SLEEPING
    assert sink.result(waiting) == first  # the same process, woken
    assert (pool.counts.gpu_sleeps, pool.counts.gpu_wakes, pool.counts.cold_starts) == (1, 1, 1)
    _no_leaks(pool)


def test_an_asleep_container_is_removed_at_the_idle_timeout(sleep_pool):
    pool = sleep_pool(sleep_after_s=0.3, idle_timeout_s=4)
    sink = Recorder()
    sink.result(_run(pool, job(model_action("enc"), sink)), timeout_s=120)
    wait_until(lambda: _state(pool, "enc") is State.ASLEEP, 30, what="asleep")
    wait_until(lambda: _state(pool, "enc") is None, 30, what="removed")
    _no_leaks(pool)
    assert pool.gpu_placer.ledger.committed_mb("0") == 0 and pool.gpu_placer.asleep_host.used_mb == 0


def test_over_the_host_budget_the_least_recently_used_asleep_container_goes(sleep_pool):
    # Each asleep model holds well under 1 MB of host memory, booked as 1 MB: a budget of 1 MB
    # holds one asleep container.
    pool = sleep_pool("0:2GiB", sleep_after_s=0.3, sleep_host_budget_mb=1)
    sink = Recorder()
    sink.result(_run(pool, job(model_action("old"), sink)), timeout_s=120)
    wait_until(lambda: _state(pool, "old") is State.ASLEEP, 30, what="old asleep")
    sink.result(_run(pool, job(model_action("new"), sink)), timeout_s=120)
    wait_until(lambda: _state(pool, "new") is State.ASLEEP, 30, what="new asleep")
    wait_until(lambda: _state(pool, "old") is None, 10, what="old removed")
    assert pool.counts.gpu_sleep_removals == 1 and pool.gpu_placer.asleep_host.used_mb == 1
    _no_leaks(pool)


def test_asleep_with_the_model_comes_before_a_stem_cell_and_a_cold_start(sleep_pool):
    pool = sleep_pool("0:2GiB", sleep_after_s=0.3, stem_cells=(StemCell("python:3-gpu", 256, 1),))
    sink = Recorder()
    action = gpu_action("enc", memory=256, code=MODEL)  # the stem cell's request class
    wait_until(lambda: any(p.is_prewarm for p in pool._containers), 60, what="stem cell")
    # The stem cell takes the first call (no warm container yet); a new one is started.
    first = sink.result(_run(pool, job(action, sink)), timeout_s=120)
    assert pool.counts.prewarm_starts == 1
    wait_until(lambda: _state(pool, "enc") is State.ASLEEP, 30, what="asleep")
    wait_until(lambda: any(p.is_prewarm for p in pool._containers), 60, what="stem cell again")
    again = sink.result(_run(pool, job(action, sink)))
    assert again == first  # the same process: woken, not a stem cell, not a cold start
    assert (pool.counts.prewarm_starts, pool.counts.cold_starts, pool.counts.gpu_wakes) == (1, 0, 1)


def test_pressure_puts_idle_containers_to_sleep_before_destroying_any(sleep_pool):
    # 1 GiB: two model containers of 400 MB leave 224 MB; a third action of 400 MB makes the
    # least recently used one sleep (it keeps 50 MB), not go.
    pool = sleep_pool("0:1GiB")
    watch = GpuWatch(pool)
    sink = Recorder()
    a, b = model_action("a"), model_action("b")
    result_a = sink.result(_run(pool, job(a, sink)), timeout_s=120)
    result_b = sink.result(_run(pool, job(b, sink)), timeout_s=120)
    sink.result(_run(pool, job(gpu_action("c", gpu={"memory": "400 MB"}), sink)))
    assert pool.counts.gpu_evictions == 0 and pool.counts.gpu_sleeps == 1
    assert _state(pool, "a") is State.ASLEEP and _state(pool, "b") is State.READY
    assert pool.gpu_placer.ledger.committed_mb("0") == CONTEXT_MB + 400 + 400
    # a again: waking needs 350 MB more; b (idle, with a model) sleeps to make room.
    assert sink.result(_run(pool, job(a, sink))) == result_a
    assert _state(pool, "b") is State.ASLEEP and pool.counts.gpu_evictions == 0 and pool.counts.gpu_wakes == 1
    assert sink.result(_run(pool, job(b, sink))) == result_b  # and b wakes a's way: c has no model
    watch.stop()
    assert watch.violations == []
    with pool._lock:
        assert pool.gpu_placer.ledger.committed_mb("0") <= pool.gpu_placer.ledger.capacity_mb("0")
    _no_leaks(pool)


def test_where_sleeps_are_not_enough_a_container_that_cannot_sleep_goes_first(sleep_pool):
    # 1 GiB: an older container without a model (300 MB) and a model container (400 MB). A job
    # of 800 MB: the model container's sleep frees 350 MB, not enough; removing the older one
    # as well is, so the model container sleeps and only the one without a model goes.
    pool = sleep_pool("0:1GiB")
    watch = GpuWatch(pool)
    sink = Recorder()
    sink.result(_run(pool, job(gpu_action("plain", gpu={"memory": "300 MB"}), sink)))
    result = sink.result(_run(pool, job(model_action("m"), sink)), timeout_s=120)
    sink.result(_run(pool, job(gpu_action("big", gpu={"memory": "800 MB"}), sink)))
    assert (pool.counts.gpu_sleeps, pool.counts.gpu_evictions) == (1, 1)
    assert _state(pool, "plain") is None and _state(pool, "m") is State.ASLEEP
    watch.stop()
    assert watch.violations == []
    assert sink.result(_run(pool, job(model_action("m"), sink))) == result  # big made room: removed
    _no_leaks(pool)


def test_mps_client_slots_stay_counted_while_asleep(sleep_pool, fake_mps_control):
    # MPS (a FAKE control program) with 2 client slots and memory to spare: two asleep containers
    # still take both slots, so a third action must remove one; a sleep would not free a slot.
    pool = sleep_pool("0:8GiB", mps="on", control=str(fake_mps_control), mps_max_clients=2, sleep_after_s=0.3)
    sink = Recorder()
    for name in ("a", "b"):
        sink.result(_run(pool, job(model_action(name), sink)), timeout_s=120)
    wait_until(lambda: _state(pool, "a") is State.ASLEEP and _state(pool, "b") is State.ASLEEP, 30,
               what="both asleep")
    assert pool.gpu_placer.ledger.clients("0") == 2 and pool.gpu_placer.ledger.free_clients("0") == 0
    sink.result(_run(pool, job(gpu_action("c", gpu={"memory": "100 MB"}), sink)))
    assert pool.counts.gpu_evictions == 1 and _state(pool, "a") is None  # the least recently used went
    assert pool.gpu_placer.ledger.clients("0") == 2
    _no_leaks(pool)


def test_a_sleep_that_gives_nothing_back_leaves_it_awake_and_it_is_evicted_instead(sleep_pool):
    # PROBE registers a model itself (not through the loader): the runtime keeps it awake.
    pool = sleep_pool("0:1GiB", sleep_after_s=0.3)
    sink = Recorder()
    sink.result(_run(pool, job(gpu_action("own", gpu={"memory": "600 MB"}), sink, {"load": "m"})))
    proxy = _only(pool, "own")
    wait_until(lambda: pool.counts.gpu_sleep_failures == 1, 30, what="a sleep that gave nothing back")
    assert proxy.state is State.READY and proxy.sleepless and _charge(pool, proxy) == 600
    assert [m.key for m in proxy.container.residency.models] == ["m"]
    sink.result(_run(pool, job(gpu_action("next", gpu={"memory": "600 MB"}, code=PROBE), sink)))
    assert pool.counts.gpu_evictions == 1 and _state(pool, "own") is None and pool.counts.gpu_sleeps == 0
    _no_leaks(pool)


def test_a_sleep_that_times_out_counts_as_awake(sleep_pool):
    pool = sleep_pool("0:1GiB", sleep_after_s=0.3, sleep_timeout_s=0.0001)
    sink = Recorder()
    action = model_action("enc")
    first = sink.result(_run(pool, job(action, sink)), timeout_s=120)
    proxy = _only(pool, "enc")
    wait_until(lambda: pool.counts.gpu_sleep_failures == 1, 30, what="the timed-out sleep")
    assert proxy.state is State.READY and _charge(pool, proxy) == 400
    again = sink.result(_run(pool, job(action, sink)))
    # Whether the runtime slept after the invoker gave up is not known: a model called whole
    # rounds differently from its pipelined first call (last float bits), hence the tolerance.
    assert again["pid"] == first["pid"] and np.allclose(again["y"], first["y"], rtol=1e-5, atol=1e-6)
    _no_leaks(pool)


# ----------------------------------------------------------------------------- pure parts


def test_asleep_charge_measured_and_estimated():
    def report(freed: dict, measured: bool = True) -> SleepReport:
        return SleepReport(True, ({"key": "k", "device": "cuda:0", "measured": measured},), (), freed, 10)

    nothing = Residency()
    assert asleep_charge_mb(1000, report({"cuda:0": 900 * MB}), nothing, 50) == (100, True)
    assert asleep_charge_mb(1000, report({"cuda:0": 900 * MB + 1}), nothing, 50) == (100, True)  # rounded up
    # Never below the floor: the context estimate, or NVML's reading of its use where there is one.
    assert asleep_charge_mb(1000, report({"cuda:0": 900 * MB}), nothing, 300) == (300, False)
    assert asleep_charge_mb(1000, report({"cuda:0": 900 * MB}), nothing, 300, measured_mb=250) == (250, True)
    assert asleep_charge_mb(1000, report({"cuda:0": 1000 * MB}), nothing, 300) == (300, False)
    # An estimate of freed, a CPU copy, or more freed than admitted: the context estimate plus the
    # models still awake on a CUDA device, never more than admitted.
    kept = Residency(models=(ResidentModel("x", "cuda:0", 200 * MB), ResidentModel("y", "cpu", 999 * MB)))
    assert asleep_charge_mb(1000, report({"cuda:0": 900 * MB}, measured=False), kept, 300) == (500, False)
    assert asleep_charge_mb(1000, report({"cpu": 900 * MB}), nothing, 300) == (300, False)
    assert asleep_charge_mb(1000, report({"cuda:0": 2000 * MB}), nothing, 300) == (300, False)
    assert asleep_charge_mb(200, report({"cpu": 1}), nothing, 300) == (200, False)
    # A report that does not add up is ignored (the pool keeps it awake).
    assert implausible(report({"cuda:0": 900 * MB}), 1000, 256) is None
    assert "admitted with 1000 MB" in implausible(report({"cuda:0": 1000 * MB + 1}), 1000, 256)
    assert "memory limit of 256 MB" in implausible(report({"cpu": 257 * MB}), 1000, 256)
    assert "memory limit of 256 MB" in implausible(SleepReport(True, host_bytes=256 * MB + 1), 1000, 256)
    assert expected_charge_mb(1000, 300) == 300 and expected_charge_mb(100, 300) == 100
    assert host_mb(SleepReport(True, host_bytes=1)) == 1 and host_mb(SleepReport(True, host_bytes=3 * MB + 1)) == 4
    # A model still asleep from the sleep before (the last call did not use it) counts too.
    earlier = Residency(asleep=(AsleepModel("old", "cuda:0", 9 * MB, 5 * MB, 9 * MB), AsleepModel("new", "cuda:0",
                                                                                             MB, MB, MB)))
    assert host_mb(SleepReport(True, host_bytes=MB), earlier) == 6
    assert host_mb(SleepReport(True, host_bytes=MB), earlier, memory_limit_mb=4) == 4  # all it can hold


def test_sleep_report_parse():
    ok = HttpOutcome(0, 1, status=200, body=b'{"asleep": [{"key": "a", "device": "cuda:0", "freed": 5, '
                     b'"host_bytes": 7, "measured": true}], "kept": [], "freed": {"cuda:0": 5}, '
                     b'"host_bytes": 7, "seconds": 0.1}')
    report = SleepReport.parse(ok)
    assert report.answered and report.slept and report.measured and report.freed_on_gpu() == 5
    assert report.host_bytes == 7
    for outcome in (HttpOutcome(0, 1, timed_out=True), HttpOutcome(0, 1, status=404, body=b"nope"),
                    HttpOutcome(0, 1, status=200, body=b"[1]"), HttpOutcome(0, 1, connection_lost=True)):
        failed = SleepReport.parse(outcome)
        assert not failed.answered and not failed.slept and failed.problem


def test_ledger_counts_a_sleep_under_way_as_on_its_way_and_keeps_the_slot():
    ledger = GpuLedger(parse_declared("0:1GiB"), 0, {"0": 2})
    ledger.commit("a", "0", 600)
    ledger.mark_shrinking("a", 100)
    assert ledger.releasing_mb("0") == 500 and ledger.free_mb("0") == 424 and ledger.releasing_clients("0") == 0
    ledger.resize("a", 100)
    assert ledger.releasing_mb("0") == 0 and ledger.free_mb("0") == 924 and ledger.clients("0") == 1
    assert ledger.can_grow("a", 600) and not ledger.can_grow("a", 1025)
    ledger.mark_shrinking("a", 50)
    ledger.mark_shrinking("a", None)  # the sleep gave nothing back
    assert ledger.releasing_mb("0") == 0 and ledger.committed_mb("0") == 100
