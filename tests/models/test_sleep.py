"""Sleep and wake (CPU, in CI): a resident model gives its copy back, keeps its weights in host
memory, and its next call loads it again the pipelined way with the same results.

On the CPU the "device" copy of a pipelined model is a second host copy, made by the
ThreadCopier: these copies are host-to-host (a stand-in for the host-to-device link, which only
a GPU has), so the memory a sleep frees here is host memory, counted exactly.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from owruntime.models import ModelCache, load
from owruntime.models.copier import ThreadCopier
from owruntime.models.sleep import sleep_cache
from owruntime.models.torch_loader import ALIGN
from owruntime.resident import Registry, parse_header
from torch import nn

MODELS = ["resnet", "encoder", "minilm"]


def _cache() -> tuple[ModelCache, Registry]:
    registry = Registry()
    return ModelCache(registry), registry


def _on_host(model) -> bool:
    """Every weight the module uses is its staged host tensor (no device copy left)."""
    for t in model.host.tensors:
        for slot in t.slots:
            attrs = slot.module._parameters if slot.is_param else slot.module._buffers
            if attrs[slot.name].data_ptr() != t.host.data_ptr():
                return False
    return True


@pytest.mark.parametrize("name", MODELS)
def test_torch_model_sleeps_and_wakes_with_the_same_results(zoo, name, tmp_path):
    spec = zoo[name]
    cache, registry = _cache()
    model = load(spec.make(), weights=spec.weights, device="cpu", mode="pipelined", key=name,
                 cache=cache, cache_dir=tmp_path)
    x = spec.inputs(2)
    before = model(*x)
    nbytes = model.nbytes
    [storage] = {v.untyped_storage().data_ptr(): v.untyped_storage().nbytes() for v in model._values}.values()
    assert nbytes <= storage < nbytes + ALIGN * len(model._values)  # the copy is one allocation
    [slept], kept = sleep_cache(cache)
    assert kept == [] and slept.key == name and model.asleep
    # host-to-host: the dropped copy, alignment included, is exactly what the sleep freed
    assert slept.report.freed == storage and slept.report.host_bytes == nbytes and slept.report.measured
    assert model.nbytes == 0 and _on_host(model) and model._values == []
    assert registry.models() == []
    [asleep] = registry.asleep()
    assert (asleep.key, asleep.bytes, asleep.freed) == (name, nbytes, storage)
    model.wake()  # what a call does first: the pipelined load, one copy per unit
    assert not model.asleep and isinstance(model._copier, ThreadCopier)
    assert model._hooks and model._first  # the first call waits per unit again
    assert [m.key for m in registry.models()] == [name] and registry.asleep() == []
    after = model(*x)
    assert not model._hooks and not _on_host(model)
    assert torch.equal(before, after)
    assert load(spec.make(), weights=spec.weights, key=name, cache=cache, cache_dir=tmp_path) is model
    cache.clear()


@pytest.mark.parametrize("name", MODELS)
def test_onnx_model_sleeps_and_wakes_with_the_same_results(zoo, name, split_cache):
    spec = zoo[name]
    cache, registry = _cache()
    model = load(spec.onnx, device="cpu", mode="pipelined", cache=cache, cache_dir=split_cache)
    x = tuple(t.numpy() for t in spec.inputs(2))
    before = model(*x)[0]
    [slept], _ = sleep_cache(cache)
    stages = len(model.split.stages)
    assert model.asleep and model._device == [None] * stages and model._cpu == [None] * stages
    kept = sum(model.split.stage_path(k).stat().st_size for k in range(stages))
    assert slept.report.host_bytes == kept == sum(len(b) for b in model._blobs)  # the stage models' bytes
    assert not slept.report.measured  # a CPU session's memory: the initializers' size, an estimate
    [asleep] = registry.asleep()
    assert asleep.freed == slept.report.freed > 0 and registry.models() == []
    after = model(*x)[0]
    model.wait_loaded()
    assert all(s is not None for s in model._device) and model._blobs is None  # bytes let go once built
    assert registry.asleep() == [] and registry.models()[0].key == asleep.key
    np.testing.assert_array_equal(before, after)
    cache.clear()


def test_plain_onnx_model_is_rebuilt_from_its_file(zoo):
    spec = zoo["resnet"]
    cache, registry = _cache()
    model = load(spec.onnx, device="cpu", mode="plain", cache=cache)
    x = spec.inputs(1)[0].numpy()
    before = model(x)[0]
    [slept], _ = sleep_cache(cache)
    assert model._plain is None and slept.report.host_bytes == 0
    np.testing.assert_array_equal(before, model(x)[0])
    assert model._plain is not None
    cache.clear()


class Counting(nn.Module):
    """Changes its own buffer on every call (a running statistic, a step count)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return self.fc(x) + self.calls


def test_a_buffer_the_module_changed_survives_the_sleep():
    model = load(Counting(), device="cpu", mode="pipelined", cache=None)
    x = torch.ones(1, 4)
    for _ in range(3):
        model(x)
    model.sleep()
    assert model.host.module.calls.item() == 3  # written back to the host copy
    out = model(x)
    assert model.host.module.calls.item() == 4
    torch.testing.assert_close(out, model.host.module.fc(x) + 4)
    model.close()


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        assert self.release.wait(30)
        return self.fc(x)


def test_a_model_in_use_stays_awake():
    cache, registry = _cache()
    module = Gate()
    model = load(module, device="cpu", mode="pipelined", key="gate", cache=cache)
    module.release.set()
    model(torch.ones(1, 2))  # the first call, which waits for the copies, is behind us
    module.release.clear()
    module.entered.clear()
    out: list = []
    call = threading.Thread(target=lambda: out.append(model(torch.ones(1, 2))))
    call.start()
    try:
        assert module.entered.wait(30)
        slept, [kept] = sleep_cache(cache)
        assert slept == [] and "in progress" in kept.reason
        assert not model.asleep and [m.key for m in registry.models()] == ["gate"]
    finally:
        module.release.set()
        call.join(30)
    assert len(out) == 1
    [slept], _ = sleep_cache(cache)
    assert model.asleep and slept.report.freed > 0
    cache.clear()


def test_an_asleep_model_evicted_leaves_the_report_and_closes(zoo, tmp_path):
    spec = zoo["encoder"]
    cache, registry = _cache()
    model = load(spec.make(), weights=spec.weights, device="cpu", mode="pipelined", key="enc",
                 cache=cache, cache_dir=tmp_path)
    model(*spec.inputs(1))
    first = model.sleep()
    assert model.sleep() is first  # asleep already: the same report, nothing done twice
    assert cache.evict("enc") == 1
    assert registry.asleep() == [] and registry.models() == []
    assert model.registration is None and model.host.loaded is None


def test_the_header_lists_asleep_models_apart_from_the_resident_ones():
    registry = Registry(held=lambda: {})
    registry.register("a", "cuda:0", 100)
    registry.register("b", "cuda:0", 200)
    registry.mark_asleep("b", "cuda:0", host_bytes=200, freed=190, measured=True)
    registry.mark_asleep("c", "cuda:1", host_bytes=50, freed=60, measured=False)
    value = registry.header_value()
    raw = json.loads(value)
    # An invoker that reads only "models" never counts an asleep model as on the GPU.
    assert raw["models"] == [{"key": "a", "device": "cuda:0", "bytes": 100}]
    assert raw["asleep"][0] == {"key": "b", "device": "cuda:0", "bytes": 200, "host_bytes": 200, "freed": 190}
    assert raw["asleep"][1]["measured"] is False
    parsed = parse_header(value)
    assert [m.key for m in parsed.models] == ["a"]
    assert [(m.key, m.bytes, m.freed, m.measured) for m in parsed.asleep] == [("b", 200, 190, True), ("c", 0, 60, False)]
    # a header from a runtime without sleep parses as before
    old = parse_header('{"models":[{"key":"a","device":"cuda:0","bytes":1}],"held":{"cuda:0":5}}')
    assert old.asleep == () and old.held == {"cuda:0": 5} and old.models[0].bytes == 1
    assert parse_header('{"models":[],"asleep":[{"key":"x"}]}').models == ()  # malformed: empty
    registry.register("b", "cuda:0", 200)  # woken
    raw = json.loads(registry.header_value())
    assert [m["key"] for m in raw["models"]] == ["a", "b"] and [m["key"] for m in raw["asleep"]] == ["c"]
    registry.unregister("c")
    assert "asleep" not in json.loads(registry.header_value())


def test_an_onnx_model_whose_stage_files_are_gone_stays_awake(zoo, tmp_path):
    import shutil

    spec = zoo["resnet"]
    cache, registry = _cache()
    model = load(spec.onnx, device="cpu", mode="pipelined", cache=cache, cache_dir=tmp_path / "splits")
    x = spec.inputs(1)[0].numpy()
    before = model(x)[0]
    model.wait_loaded()
    shutil.rmtree(model.split.directory)  # what a wake-up would rebuild from
    slept, [kept] = sleep_cache(cache)
    assert slept == [] and "its sleep failed: FileNotFoundError" in kept.reason
    assert not model.asleep and registry.asleep() == [] and len(registry.models()) == 1
    np.testing.assert_array_equal(model(x)[0], before)  # still awake and whole
    cache.clear()


def test_the_wake_computes_while_later_weights_still_arrive():
    """After a sleep, through a slow host-to-host link (a stand-in for the host-device one): the
    first layer runs on its own weights while the last layer's are still in flight."""
    torch.manual_seed(3)
    module = nn.Sequential(*[nn.Sequential(nn.Linear(256, 256), nn.Tanh()) for _ in range(6)]).eval()
    x = torch.randn(4, 256)
    model = load(module, device="cpu", mode="pipelined", cache=None)
    expected = model(x)
    model.sleep()
    model.wake(copier=ThreadCopier(bandwidth=256 * 257 * 4 / 0.1))  # 0.1 s per layer
    seen: list[tuple[bool, bool]] = []  # (own weights there, last layer's weights there)
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    for i, lin in enumerate(linears):
        def probe(_m, _a, i=i):
            seen.append((model._handles[i].is_set(), model._handles[-1].is_set()))
        lin.register_forward_pre_hook(probe)  # after the wake's own hook: sees its wait
    torch.testing.assert_close(model(x), expected)
    assert all(own for own, _ in seen)
    assert seen[0] == (True, False), "the first layer should run while the last is in flight"
    model.close()
