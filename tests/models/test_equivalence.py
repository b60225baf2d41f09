"""Pipelined and partitioned loading compute what plain loading computes (CPU, in CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_zoo import unit_count
from owruntime.models import CostModel, StageCost, choose_cut, load

MODELS = ["resnet", "encoder", "minilm"]
BATCHES = [1, 8]


def _torch_plain(spec, batch: int) -> torch.Tensor:
    model = load(spec.make(), weights=spec.weights, mode="plain", cache=None)
    try:
        return model(*spec.inputs(batch))
    finally:
        model.close()


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", MODELS)
def test_torch_pipelined_matches_plain(zoo, name, batch):
    spec = zoo[name]
    expected = _torch_plain(spec, batch)
    model = load(spec.make(), weights=spec.weights, device="cpu", mode="pipelined", cache=None)
    try:
        assert model._hooks, "pipelined loading registers one pre-hook per weight-owning module"
        first = model(*spec.inputs(batch))
        assert not model._hooks and not model._pending  # the first call cleans up after itself
        assert model._waited == set(range(len(model.host.units)))
        second = model(*spec.inputs(batch))
    finally:
        model.close()
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", MODELS)
def test_torch_partitioned_matches_plain(zoo, name, batch):
    spec = zoo[name]
    expected = _torch_plain(spec, batch)
    module = spec.make()
    cut = unit_count(module) // 2
    model = load(module, weights=spec.weights, mode="pipelined", partition=cut, cache=None)
    try:
        assert len(model.cpu_units) == cut
        # before the first call the CPU stages hold the host weights themselves, the others
        # their (pending) copies
        assert _held(model) == [
            model.host.tensors[i].host.data_ptr() if t.unit in model.cpu_units
            else model._values[i].data_ptr() for i, t in enumerate(model.host.tensors)
        ]
        first = model(*spec.inputs(batch))
        second = model(*spec.inputs(batch))
        assert _held(model) == [v.data_ptr() for v in model._values]  # all copies after
    finally:
        model.close()
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, expected, rtol=1e-5, atol=1e-5)


def _held(model) -> list[int]:
    """Where each weight the module uses lives now (one entry per staged tensor)."""
    out = []
    for t in model.host.tensors:
        slot = t.slots[0]
        attrs = slot.module._parameters if slot.is_param else slot.module._buffers
        out.append(attrs[slot.name].data_ptr())
    return out


def _np(inputs: tuple) -> tuple:
    return tuple(t.numpy() for t in inputs)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", MODELS)
def test_onnx_pipelined_and_partitioned_match_plain(zoo, name, batch, split_cache):
    spec = zoo[name]
    inputs = _np(spec.inputs(batch))
    plain = load(spec.onnx, mode="plain", cache=None)
    expected = plain(*inputs)[0]
    plain.close()
    pipelined = load(spec.onnx, mode="pipelined", cache=None, cache_dir=split_cache, stages=4)
    n = len(pipelined.split.stages)
    assert n >= 3, f"{name}: expected the graph to be cut into stages, got {n}"
    got = [pipelined(*inputs)[0], pipelined(*inputs)[0]]
    pipelined.close()
    # partitioned from a cost model: a slow link and a fast CPU put the first stages on the CPU
    cost = CostModel(tuple(StageCost(s.nbytes, 1e-4, 1e-5) for s in pipelined.split.stages),
                     bandwidth=1e6, batch_size=batch)
    plan = choose_cut(cost)
    assert 0 < plan.cut
    partitioned = load(spec.onnx, mode="pipelined", partition=cost, cache=None,
                       cache_dir=split_cache, stages=4)
    assert partitioned.split_reused and partitioned.cut == plan.cut
    got += [partitioned(*inputs)[0]]
    partitioned.wait_loaded()
    got += [partitioned(*inputs)[0]]  # now every stage on its "device" session
    assert all(s is not None for s in partitioned._device)
    partitioned.close()
    for g in got:
        np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-5)


def test_torch_and_onnx_minilm_agree(zoo):
    """The real model, both formats: the same sentence embeddings."""
    spec = zoo["minilm"]
    inputs = spec.inputs(8)
    t = load(spec.make(), weights=spec.weights, mode="pipelined", cache=None)
    o = load(spec.onnx, mode="plain", cache=None)
    try:
        a, b = t(*inputs).numpy(), o(*_np(inputs))[0]
    finally:
        t.close()
        o.close()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    sims = a @ a.T  # a sanity check that these are real embeddings: unit norm, distinct
    np.testing.assert_allclose(np.diag(sims), 1.0, atol=1e-5)
    assert sims[0, 1] > sims[0, 2]  # the two "A man is ..." sentences are closer
