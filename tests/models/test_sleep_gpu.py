"""On a GPU: a sleep gives the model's device memory back (measured), the weights wait in pinned
host memory, and the next call wakes the model through the side stream with the same results.
Skipped where no NVIDIA GPU is present (``pytest tests/models -m gpu`` on the GPU machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from owruntime.models import ModelCache, load
from owruntime.models.copier import StreamCopier
from owruntime.models.sleep import sleep_cache
from owruntime.resident import Registry

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["resnet", "encoder"])
def test_torch_sleep_frees_the_device_copy_and_wakes_pipelined(zoo, name, tmp_path):
    spec = zoo[name]
    registry = Registry()
    cache = ModelCache(registry)
    model = load(spec.make(), weights=spec.weights, device="cuda:0", key=name, cache=cache, cache_dir=tmp_path)
    x = tuple(t.cuda() for t in spec.inputs(4))
    before = model(*x)
    torch.cuda.synchronize()
    nbytes, allocated = model.nbytes, torch.cuda.memory_allocated()
    [slept], kept = sleep_cache(cache)
    assert kept == [] and slept.report.measured
    assert slept.report.freed >= 0.9 * nbytes  # the goal: >= 90 % of the model's memory
    assert allocated - torch.cuda.memory_allocated() >= nbytes
    assert all(t.host.is_pinned() for t in model.host.tensors)
    assert registry.asleep()[0].freed == slept.report.freed and registry.models() == []
    model.wake()
    assert isinstance(model._copier, StreamCopier) and model._hooks  # the pipelined loader
    after = model(*x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    cache.clear()


def test_onnx_sleep_releases_the_sessions_and_wakes_them(zoo, split_cache):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here")
    torch.zeros(1, device="cuda")  # torch's CUDA in the process: the sleep can ask the device
    spec = zoo["resnet"]
    cache = ModelCache(Registry())
    model = load(spec.onnx, device="cuda:0", cache=cache, cache_dir=split_cache)
    x = spec.inputs(4)[0].numpy()
    before = model(x)[0]
    model.wait_loaded()
    [slept], _ = sleep_cache(cache)
    assert slept.report.measured and slept.report.freed > 0
    assert model._device == [None] * len(model.split.stages)
    np.testing.assert_allclose(model(x)[0], before, rtol=1e-5, atol=1e-5)
    cache.clear()
