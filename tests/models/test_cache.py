"""Resident models: one per (key, device), registered for the invoker, unregistered on eviction."""

from __future__ import annotations

import threading

import torch
from owruntime.models import ModelCache, load
from owruntime.models.digest import file_digest
from owruntime.resident import Registry


def test_same_key_same_object_and_registered(zoo, tmp_path):
    spec = zoo["resnet"]
    registry = Registry()
    cache = ModelCache(registry)
    a = load(spec.onnx, mode="pipelined", cache=cache, cache_dir=tmp_path)
    b = load(spec.onnx, mode="plain", cache=cache, cache_dir=tmp_path)  # mode: only how to load
    assert a is b
    [resident] = registry.models()
    assert resident.key == file_digest(spec.onnx) and resident.device == "cpu"
    assert resident.bytes == a.nbytes > 0
    assert '"device":"cpu"' in registry.header_value()
    assert cache.evict(resident.key) == 1
    assert registry.models() == [] and cache.keys() == []
    c = load(spec.onnx, mode="pipelined", cache=cache, cache_dir=tmp_path)
    assert c is not a  # loaded again after eviction
    cache.clear()


def test_torch_module_key_follows_the_weights(zoo, tmp_path):
    spec = zoo["encoder"]
    registry = Registry()
    cache = ModelCache(registry)
    a = load(spec.make(), weights=spec.weights, cache=cache, cache_dir=tmp_path)
    b = load(spec.make(), weights=spec.weights, cache=cache, cache_dir=tmp_path)
    assert a is b
    [resident] = registry.models()
    assert resident.key.endswith(file_digest(spec.weights))
    assert resident.bytes == sum(t.host.nbytes for t in a.host.tensors)
    x = spec.inputs(1)[0]
    assert torch.isfinite(a(x)).all()
    cache.clear()
    assert registry.models() == []


def test_over_budget_evicts_the_least_recently_used(zoo, tmp_path):
    registry = Registry()
    res, enc = zoo["resnet"], zoo["encoder"]
    size = load(res.onnx, mode="plain", cache=None).nbytes
    cache = ModelCache(registry, max_bytes=size + 1)
    first = load(res.onnx, mode="plain", cache=cache, cache_dir=tmp_path)
    load(enc.onnx, mode="plain", cache=cache, cache_dir=tmp_path)
    keys = [m.key for m in registry.models()]
    assert keys == [file_digest(enc.onnx)]  # the resnet went, and left the registry
    assert first._plain is None  # closed: its session (and device memory) released


def test_concurrent_loads_of_one_key_load_once():
    cache = ModelCache(Registry())
    calls = []
    gate = threading.Event()

    class Dummy:
        nbytes = 10

        def close(self) -> None:
            pass

    def slow_load() -> Dummy:
        calls.append(1)
        gate.wait(5)
        return Dummy()

    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get_or_load("k", "cpu", slow_load)))
               for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(g) for g in got}) == 1
