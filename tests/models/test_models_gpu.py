"""On a GPU: pipelined and partitioned loading on CUDA compute what plain loading computes,
copies run on a side stream, and the measured costs are usable. Skipped (with the reason)
where no NVIDIA GPU is present; run them on the GPU machine: ``pytest tests/models -m gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_zoo import unit_count
from owruntime.models import ModelCache, choose_cut, load
from owruntime.models.copier import StreamCopier
from owruntime.models.devices import measure_h2d_bandwidth, parse_device
from owruntime.resident import Registry

pytestmark = pytest.mark.gpu
MODELS = ["resnet", "encoder", "minilm"]


def _cuda(tree):
    return tuple(t.cuda() for t in tree)


def _plain(spec, batch):
    m = load(spec.make(), weights=spec.weights, device="cuda:0", mode="plain", cache=None)
    try:
        return m(*_cuda(spec.inputs(batch)))
    finally:
        m.close()


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", MODELS)
def test_torch_pipelined_on_cuda_matches_plain_on_cuda(zoo, name, batch):
    spec = zoo[name]
    expected = _plain(spec, batch)
    model = load(spec.make(), weights=spec.weights, device="cuda:0", mode="pipelined", cache=None)
    try:
        assert isinstance(model._copier, StreamCopier)
        assert model._copier.stream != torch.cuda.current_stream()  # copies on a side stream
        assert all(isinstance(h, torch.cuda.Event) for h in model._handles)
        assert all(t.host.is_pinned() for t in model.host.tensors)
        assert model.host.pinned is not None and model.host.pinned.is_pinned()  # one pinned buffer
        got = model(*spec.inputs(batch))  # CPU inputs: moved by the model
        assert got.device.type == "cuda"
        torch.cuda.synchronize()
        assert all(h.query() for h in model._handles)
        again = model(*_cuda(spec.inputs(batch)))
    finally:
        model.close()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", MODELS)
def test_torch_partitioned_on_cuda_matches_plain(zoo, name, batch):
    spec = zoo[name]
    expected = _plain(spec, batch)
    module = spec.make()
    model = load(module, weights=spec.weights, device="cuda:0", mode="pipelined",
                 partition=unit_count(module) // 2, cache=None)
    try:
        got = model(*spec.inputs(batch))  # first half on the CPU, second on the GPU
        assert got.device.type == "cuda"
        assert all(p.device.type == "cuda" for p in module.parameters())  # all copied after
        again = model(*spec.inputs(batch))
    finally:
        model.close()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, expected, rtol=1e-4, atol=1e-4)


def test_measured_costs_drive_the_partition(zoo):
    spec = zoo["minilm"]
    bandwidth = measure_h2d_bandwidth(parse_device("cuda:0"))
    assert bandwidth > 1e9  # any PCIe link does more than 1 GB/s pinned
    model = load(spec.make(), weights=spec.weights, device="cuda:0", cache=None)
    cost = model.measure(*spec.inputs(1), batch_size=1, bandwidth=bandwidth)
    model.close()
    assert len(cost.stages) == len(model.host.units) and sorted(cost.order) == list(range(len(cost.order)))
    assert sum(s.cpu_s for s in cost.stages) > 0 and sum(s.device_s for s in cost.stages) > 0
    plan = choose_cut(cost)
    expected = _plain(spec, 1)
    again = load(spec.make(), weights=spec.weights, device="cuda:0", partition=cost, cache=None)
    assert again.cut == plan.cut and again.order == list(cost.order)
    torch.testing.assert_close(again(*spec.inputs(1)), expected, rtol=1e-4, atol=1e-4)
    again.close()


def test_resident_registry_reports_gpu_bytes(zoo, tmp_path):
    spec = zoo["resnet"]
    registry = Registry()
    cache = ModelCache(registry)
    model = load(spec.make(), weights=spec.weights, device="cuda:0", cache=cache, cache_dir=tmp_path)
    [resident] = registry.models()
    assert resident.device == "cuda:0"
    assert resident.bytes == sum(v.nbytes for v in model._values) > 0
    before = torch.cuda.memory_allocated()
    cache.clear()
    assert registry.models() == [] and torch.cuda.memory_allocated() < before


def _onnx_cuda_or_skip():
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without CUDAExecutionProvider (install onnxruntime-gpu)")


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", MODELS)
def test_onnx_pipelined_on_cuda_matches_plain(zoo, name, batch, split_cache):
    _onnx_cuda_or_skip()
    spec = zoo[name]
    inputs = tuple(t.numpy() for t in spec.inputs(batch))
    plain = load(spec.onnx, device="cuda:0", mode="plain", cache=None)
    expected = plain(*inputs)[0]
    plain.close()
    for partition in (None, 1):
        m = load(spec.onnx, device="cuda:0", mode="pipelined", partition=partition, cache=None,
                 cache_dir=split_cache, stages=4)
        got = [m(*inputs)[0]]
        m.wait_loaded()
        got.append(m(*inputs)[0])
        assert all(s is not None for s in m._device)
        m.close()
        for g in got:
            np.testing.assert_allclose(g, expected, rtol=1e-3, atol=1e-4)


def test_compute_is_enqueued_while_copies_are_still_running():
    """1 GB of weights: the first layer's forward starts (host side) long before the last
    layer's copy has finished, i.e. the pipeline overlaps instead of loading first."""
    from owruntime.models.torch_loader import HostModule, TorchModel
    from torch import nn

    torch.manual_seed(5)
    module = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(16)]).eval()
    x = torch.randn(4, 4096)
    copier = StreamCopier(torch.device("cuda:0"), timing=True)
    model = TorchModel(HostModule(module, pin=True), parse_device("cuda:0"), copier=copier)
    last_done_at_first_layer: list[bool] = []
    module[0].register_forward_pre_hook(
        lambda _m, _a: last_done_at_first_layer.append(model._handles[-1].query()))
    y = model(x)
    assert last_done_at_first_layer == [False]
    assert copier.copy_seconds() > 0
    plain_out = y.clone()
    model.close()
    plain = TorchModel(HostModule(module, pin=True), parse_device("cuda:0"), mode="plain")
    torch.testing.assert_close(plain_out, plain(x), rtol=1e-4, atol=1e-4)
    plain.close()
