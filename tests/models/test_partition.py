"""The CPU/device split is chosen from measured costs: checked here with injected numbers."""

from __future__ import annotations

import logging

import pytest
from owruntime.models import CostModel, StageCost, choose_cut, load

MB = 1e6


def test_slow_link_puts_a_heavy_cheap_first_stage_on_the_cpu():
    # an embedding-like first stage: many bytes, little compute; then three compute stages
    stages = (StageCost(100 * MB, 1e-3, 1e-4),) + (StageCost(10 * MB, 50e-3, 1e-3),) * 3
    plan = choose_cut(CostModel(stages, bandwidth=10e9))
    assert plan.cut == 1
    # CPU runs stage 0 (1 ms) while stages 1-3 arrive at 1, 2, 3 ms; each takes 1 ms after
    assert plan.estimate_s == pytest.approx(4e-3)
    assert plan.estimates[0] == pytest.approx(10e-3 + 1e-3 + 1e-3 + 1e-3 + 1e-3)
    assert plan.estimates[4] == pytest.approx(151e-3)


def test_fast_link_keeps_everything_on_the_device():
    stages = (StageCost(100 * MB, 50e-3, 1e-4),) * 4  # copy 2 ms a stage, CPU 50 ms
    assert choose_cut(CostModel(stages, bandwidth=50e9)).cut == 0


def test_small_batch_on_a_slow_link_stays_on_the_cpu():
    stages = (StageCost(50 * MB, 2e-3, 2e-4),) * 4
    plan = choose_cut(CostModel(stages, bandwidth=1e9, batch_size=1))
    assert plan.cut == 4 and plan.estimate_s == pytest.approx(8e-3)
    # the same model at a batch where a CPU stage takes longer than copying it: the device
    big = (StageCost(50 * MB, 200e-3, 1e-3),) * 4
    assert choose_cut(CostModel(big, bandwidth=1e9, batch_size=64)).cut == 0


def test_the_activation_copy_at_the_boundary_is_counted():
    stages = (StageCost(100 * MB, 1e-3, 1e-4, out_bytes=int(50 * MB)), StageCost(10 * MB, 50e-3, 1e-3))
    # with the cut after stage 0, its 50 MB output crosses the link (5 ms) before stage 1 runs
    assert choose_cut(CostModel(stages, bandwidth=10e9)).estimates[1] == pytest.approx(
        max(1e-3 + 5e-3, 1e-3) + 1e-3)


def test_the_choice_is_explained_in_one_debug_line(zoo, caplog, tmp_path):
    spec = zoo["resnet"]
    model = load(spec.onnx, mode="pipelined", cache=None, cache_dir=tmp_path, stages=3)
    n = len(model.split.stages)
    model.close()
    cost = CostModel(tuple(StageCost(s.nbytes, 1e-4, 1e-5) for s in model.split.stages),
                     bandwidth=1e5, batch_size=1)
    with caplog.at_level(logging.DEBUG, logger="owruntime.models"):
        load(spec.onnx, mode="pipelined", partition=cost, cache=None, cache_dir=tmp_path,
             stages=3).close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("partition:")]
    assert len(lines) == 1
    assert f"cut={choose_cut(cost).cut}/{n}" in lines[0] and "GB/s" in lines[0]


def test_a_stored_onnx_profile_chooses_the_cut_of_later_loads(zoo, tmp_path):
    from owruntime.models import store_profile
    from owruntime.models.digest import file_digest
    from owruntime.models.profiles import profile_path, read_profile

    spec = zoo["encoder"]
    x = spec.inputs(1)[0].numpy()
    model = load(spec.onnx, mode="pipelined", cache=None, cache_dir=tmp_path)
    assert model.cut == 0  # nothing measured yet
    # a simulated 0.1 MB/s link: copying any stage costs more than computing it on the CPU
    cost = store_profile(model, x, batch_size=1, bandwidth=1e5)
    model.close()
    assert len(cost.stages) == len(model.split.stages)
    assert all(s.cpu_s > 0 and s.device_s > 0 and s.nbytes > 0 for s in cost.stages)
    assert read_profile(profile_path(tmp_path, file_digest(spec.onnx), model.device, 1)) == cost
    again = load(spec.onnx, mode="pipelined", cache=None, cache_dir=tmp_path, batch_size=1)
    assert again.cut == choose_cut(cost).cut > 0
    again.close()
    other = load(spec.onnx, mode="pipelined", cache=None, cache_dir=tmp_path, batch_size=8)
    assert other.cut == 0  # no profile for batch 8
    other.close()


def test_torch_costs_are_measured_per_module_in_execution_order(zoo, tmp_path):
    import torch
    from owruntime.models import store_profile

    spec = zoo["resnet"]
    x = spec.inputs(1)
    model = load(spec.make(), weights=spec.weights, mode="pipelined", cache=None,
                 cache_dir=tmp_path)
    expected = model(*x)
    cost = store_profile(model, *x, batch_size=1, bandwidth=1e6)
    model.close()
    n = len(model.host.units)
    assert len(cost.stages) == n and sorted(cost.order) == list(range(n))
    assert cost.order[0] == 0  # the stem's conv runs first
    assert sum(s.cpu_s for s in cost.stages) > 0
    assert [s.nbytes for s in cost.stages] == [model.host.units[u].nbytes for u in cost.order]
    plan = choose_cut(cost)
    given = load(spec.make(), weights=spec.weights, mode="pipelined", partition=cost, cache=None)
    stored = load(spec.make(), weights=spec.weights, mode="pipelined", cache=None,
                  cache_dir=tmp_path, batch_size=1)  # the stored profile, found by the weights
    for again in (given, stored):
        assert again.cut == plan.cut and again.order == list(cost.order)
        torch.testing.assert_close(again(*x), expected)
        again.close()
    with pytest.raises(ValueError, match="no profile key"):
        store_profile(load(spec.make(), mode="pipelined", cache=None), *x, batch_size=1,
                      bandwidth=1e6)
