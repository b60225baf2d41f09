"""ONNX graphs are cut at narrow points, once: the split is cached by the model's digest."""

from __future__ import annotations

import shutil

import onnx
import pytest
from owruntime.models import load, onnx_split


def test_second_load_reuses_the_cached_split(zoo, tmp_path, monkeypatch):
    spec = zoo["encoder"]
    first = load(spec.onnx, mode="pipelined", cache=None, cache_dir=tmp_path, stages=4)
    assert not first.split_reused
    first.close()

    def no_recompute(*a, **k):
        raise AssertionError("split recomputed although cached")

    monkeypatch.setattr(onnx_split, "plan_cuts", no_recompute)
    monkeypatch.setattr(onnx_split, "read_onnx", no_recompute)
    second = load(spec.onnx, mode="pipelined", cache=None, cache_dir=tmp_path, stages=4)
    assert second.split_reused
    assert second.split.cuts == first.split.cuts
    assert second.split.directory == first.split.directory
    second.close()


def test_other_split_parameters_or_another_file_get_their_own_split(zoo, tmp_path):
    spec = zoo["encoder"]
    a = load(spec.onnx, mode="pipelined", cache=None, cache_dir=tmp_path, stages=4)
    b = load(spec.onnx, mode="pipelined", cache=None, cache_dir=tmp_path, stages=2)
    copy = tmp_path / "other.onnx"
    m = onnx.load(str(spec.onnx))
    m.doc_string = "changed"  # other bytes, other digest
    onnx.save(m, str(copy))
    c = load(copy, mode="pipelined", cache=None, cache_dir=tmp_path, stages=4)
    assert len({a.split.directory, b.split.directory, c.split.directory}) == 3
    assert not c.split_reused and len(b.split.stages) <= 2
    for x in (a, b, c):
        x.close()


@pytest.mark.parametrize("name", ["resnet", "encoder", "minilm"])
def test_stages_are_valid_models_cut_where_few_tensors_cross(zoo, tmp_path, name):
    model = load(zoo[name].onnx, mode="pipelined", cache=None, cache_dir=tmp_path,
                 stages=4, max_crossing=3)
    split = model.split
    model.close()
    assert len(split.stages) >= 3
    for k, stage in enumerate(split.stages):
        onnx.checker.check_model(onnx.load(str(split.stage_path(k))))
        assert len(stage.inputs) <= 3  # what crosses the cut in front of it
    total = sum(s.nbytes for s in split.stages)
    assert total > 0 and max(s.nbytes for s in split.stages) < total  # weights spread out


def test_a_corrupt_cache_entry_is_not_trusted(zoo, tmp_path):
    spec = zoo["resnet"]
    model = load(spec.onnx, mode="pipelined", cache=None, cache_dir=tmp_path, stages=3)
    directory = model.split.directory
    model.close()
    (directory / "split.json").write_text('{"version": 0}')
    again = load(spec.onnx, mode="pipelined", cache=None, cache_dir=tmp_path, stages=3)
    assert not again.split_reused
    again.close()
    shutil.rmtree(directory, ignore_errors=True)
