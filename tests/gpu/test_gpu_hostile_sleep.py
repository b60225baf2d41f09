"""A tenant who controls their action's code forges what its runtime answers to ``POST /sleep``
and in ``X-OW-Resident`` (issue #27, items 1-3). Process backend (real runtime processes), a
declared GPU (no NVML: the context estimate is the floor of an asleep container's charge).

The invoker bounds what it reads (bytes), believes a report only as far as it can check it
(never below the floor, never above what it admitted, nothing that does not add up), and a
number it cannot use never leaves a container stuck SLEEPING nor breaks ``/metrics``."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from gpu_pool_support import PythonOnly, Recorder, gpu_action, job, wait_until
from owruntime.resident import parse_header

from invoker.containerpool.pool import ContainerPool, PoolConfig
from invoker.containerpool.process import ProcessContainerFactory
from invoker.containerpool.proxy import ContainerProxy, State
from invoker.gpu import metrics
from invoker.gpu.inventory import parse_declared
from invoker.gpu.layer import GpuLayer, GpuSettings

MB = 1024 * 1024
CONTEXT_MB = 50
ADMITTED_MB = 400

# Registers a model (so the pool may put it to sleep) and replaces the runtime's /sleep answer
# with args["sleep"] (a JSON text, or "huge": 64 MB of blanks); args["resident"], when given,
# replaces the X-OW-Resident header of every answer.
FORGER = """
import sys
from owruntime.resident import REGISTRY

def main(args):
    REGISTRY.register("m", "cuda:0", 1000)
    server = sys.modules["owruntime.server"]
    forged = args.get("sleep")
    resident = args.get("resident")
    if resident is not None:
        REGISTRY.header_value = lambda: resident
    if forged is not None:
        def sleep(self, body):
            if forged == "huge":
                return 200, b" " * (64 * 1024 * 1024), b""
            return 200, forged.encode(), b"X-OW-Resident: %s\\r\\n" % REGISTRY.header_value().encode()
        server.App.sleep = sleep
    return {"forged": True}
"""


@pytest.fixture
def pool(tmp_path):
    layer = GpuLayer.start(parse_declared("0:1GiB"),
                           GpuSettings(reserved_mb=0, sleep_context_mb=CONTEXT_MB, prewarm=(), sleep_after_s=0.3),
                           "auto", "nvidia-cuda-mps-control", tmp_path / "mps")
    made = ContainerPool(ProcessContainerFactory(extra_env={"__OW_INVOKER": "hostilesleep"}), PythonOnly(),
                         PoolConfig(user_memory_mb=4096, pause_grace_s=600, idle_timeout_s=600), gpu=layer)
    made.start()
    yield made
    made.shutdown()
    layer.stop()


def forger(memory_mb: int = 256):
    return gpu_action("forger", memory=memory_mb, gpu={"memory": f"{ADMITTED_MB} MB"}, code=FORGER)


def report(freed: object, host_bytes: object = 1024, measured: bool = True) -> str:
    entry = {"key": "m", "device": "cuda:0", "freed": freed, "host_bytes": host_bytes, "measured": measured,
             "seconds": 0}
    return json.dumps({"asleep": [entry], "kept": [], "freed": {"cuda:0": freed}, "host_bytes": host_bytes,
                       "seconds": 0})


def only(pool: ContainerPool) -> ContainerProxy:
    (proxy,) = [p for p in pool._containers if p.action is not None]
    return proxy


def charge(pool: ContainerPool, proxy: ContainerProxy) -> int:
    with pool._lock:
        return pool.gpu_placer.ledger.charge(proxy).memory_mb


def sleep_ends(pool: ContainerPool, sink: Recorder, args: dict, memory_mb: int = 256) -> ContainerProxy:
    """Runs the forger, then waits until its sleep has been booked, one way or the other."""
    sink.result(_run(pool, job(forger(memory_mb), sink, args)))
    proxy = only(pool)
    wait_until(lambda: pool.counts.gpu_sleeps + pool.counts.gpu_sleep_failures >= 1, 30, what="the sleep booked")
    wait_until(lambda: proxy.state is not State.SLEEPING, 10, what="out of SLEEPING")
    return proxy


def _run(pool: ContainerPool, j):
    pool.run(j)
    return j


def assert_ignored(pool: ContainerPool, proxy: ContainerProxy) -> None:
    """Counted awake, its whole admission still charged, its next call runs."""
    assert proxy.state is State.READY and pool.counts.gpu_sleep_failures == 1 and pool.counts.gpu_sleeps == 0
    assert charge(pool, proxy) == ADMITTED_MB
    assert pool.gpu_placer.asleep_host.used_mb == 0
    sink = Recorder()
    assert sink.result(_run(pool, job(forger(), sink)), timeout_s=30) == {"forged": True}


# ----------------------------------------------------------------------------- item 1: bytes


def test_a_huge_sleep_answer_is_read_only_up_to_the_cap(pool):
    sink = Recorder()
    tracemalloc.start()
    try:
        proxy = sleep_ends(pool, sink, {"sleep": "huge"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 * MB, f"the invoker held {peak / MB:.0f} MB for a 64 MB /sleep answer"
    assert_ignored(pool, proxy)


# ----------------------------------------------------------------------------- item 2: trust


def test_a_forged_freed_everything_report_charges_at_least_the_context_estimate(pool):
    proxy = sleep_ends(pool, Recorder(), {"sleep": report(ADMITTED_MB * MB)})
    assert proxy.state is State.ASLEEP
    # Not 0: a declared GPU cannot check the report. The floor: the context estimate and the
    # 1000-byte model the runtime still lists awake on the GPU.
    assert charge(pool, proxy) == CONTEXT_MB + 1
    assert proxy.sleep.held_mb == CONTEXT_MB + 1 and not proxy.sleep.measured


@pytest.mark.parametrize("forged", [
    report(2000 * MB),  # freed more than it was admitted with
    report(100 * MB, host_bytes=9 * 1024 * MB),  # a host size beyond its own memory limit (256 MB)
    report(-100 * MB),  # negative
    report(100 * MB, host_bytes=-1),
    report(1.5 * MB),  # not an integer
    report(100 * MB, host_bytes=1e3),
    report(True),
], ids=["freed-over-admitted", "host-over-limit", "negative-freed", "negative-host", "float-freed", "float-host",
        "bool-freed"])
def test_a_report_that_does_not_add_up_is_ignored(pool, forged):
    assert_ignored(pool, sleep_ends(pool, Recorder(), {"sleep": forged}))


def test_the_host_budget_charge_of_an_asleep_container_is_bounded_by_its_memory_limit(pool):
    # The report is plausible (100 MB host copy, under the 256 MB limit) but the X-OW-Resident
    # header that comes with it lists a 9 GB asleep model.
    resident = json.dumps({"models": [{"key": "k", "device": "cuda:0", "bytes": 1000}], "asleep": [{"key": "m", "device": "cuda:0", "bytes": MB,
                                                     "host_bytes": 9 * 1024 * MB, "freed": MB}]})
    proxy = sleep_ends(pool, Recorder(), {"sleep": report(100 * MB, host_bytes=100 * MB), "resident": resident})
    assert proxy.state is State.ASLEEP
    assert pool.gpu_placer.asleep_host.reserved_mb(proxy) <= 256


# ----------------------------------------------------------------------------- item 3: numbers


@pytest.mark.parametrize("number", ["1" + "0" * 400, "NaN", "Infinity", "-Infinity", "1e400"])
def test_an_unusable_number_in_a_sleep_report_never_leaves_it_sleeping(pool, number):
    forged = report(100 * MB).replace('"host_bytes": 1024', f'"host_bytes": {number}')
    assert number in forged
    assert_ignored(pool, sleep_ends(pool, Recorder(), {"sleep": forged}))


HUGE = "1" + "0" * 400


@pytest.mark.parametrize("resident", [
    '{"models":[{"key":"m","device":"cuda:0","bytes":HUGE}],"held":{"cuda:0":HUGE}}'.replace("HUGE", HUGE),
    ('{"models":[{"key":"m","device":"cuda:0","bytes":1}],'
     '"asleep":[{"key":"a","device":"cuda:0","bytes":HUGE,"host_bytes":HUGE,"freed":1}]}').replace("HUGE", HUGE),
], ids=["awake", "asleep"])
def test_metrics_render_whatever_a_container_reported(pool, resident):
    sink = Recorder()
    sink.result(_run(pool, job(forger(), sink, {"resident": resident})))
    text = metrics.render(pool.gpu_snapshot())
    assert "owgpu_gpu_resident_model_bytes" in text
    json.dumps(pool.gpu_snapshot(), allow_nan=False)  # /gpus too


@pytest.mark.parametrize("value", [
    '{"models":[{"key":"m","device":"cuda:0","bytes":%s}]}' % ("1" + "0" * 400),
    '{"models":[{"key":"m","device":"cuda:0","bytes":-1}]}',
    '{"models":[{"key":"m","device":"cuda:0","bytes":1.5}]}',
    '{"models":[{"key":"m","device":"cuda:0","bytes":NaN}]}',
    '{"models":[{"key":"m","device":"cuda:0","bytes":true}]}',
    '{"models":[],"held":{"cuda:0":Infinity}}',
    '{"models":[],"asleep":[{"key":"a","device":"cuda:0","bytes":1,"host_bytes":1e400,"freed":1}]}',
    '{"models":[],"asleep":[{"key":"a","device":"cuda:0","bytes":1,"host_bytes":1,"freed":-1}]}',
])
def test_resident_header_numbers_are_bounded_at_parse(value):
    residency = parse_header(value)
    for model in (*residency.models, *residency.asleep):
        for n in (model.bytes, getattr(model, "host_bytes", 0), getattr(model, "freed", 0)):
            assert type(n) is int and 0 <= n < 2**63
    assert all(type(n) is int and 0 <= n < 2**63 for n in residency.held.values())


def test_whatever_booking_a_sleep_raises_the_container_leaves_sleeping(pool, monkeypatch):
    # Any error left in the arithmetic: the container is removed (what it holds is unknown),
    # never left SLEEPING, where no janitor and no job would ever reach it again.
    def broken(*args, **kwargs):
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr("invoker.containerpool.gpu_placement.host_mb", broken)
    sink = Recorder()
    sink.result(_run(pool, job(forger(), sink, {"sleep": report(100 * MB)})))
    proxy = only(pool)
    wait_until(lambda: proxy.state is not State.SLEEPING and proxy.state is not State.READY, 30,
               what="the sleep booked")
    wait_until(lambda: proxy not in pool._containers, 10, what="removed")
    assert sink.result(_run(pool, job(forger(), sink)), timeout_s=30) == {"forged": True}
