"""Bad input: a specific exception type and a message that names the problem."""

from __future__ import annotations

import pytest
import torch
from owruntime.models import (
    DeviceUnavailableError,
    ModelError,
    ModelNotFoundError,
    UnknownModelFormatError,
    load,
)


def test_missing_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found") as e:
        load(tmp_path / "nope.onnx", cache=None)
    assert isinstance(e.value, FileNotFoundError) and "nope.onnx" in str(e.value)
    with pytest.raises(ModelNotFoundError, match="weights file"):
        load(torch.nn.Linear(2, 2), weights=tmp_path / "w.pt", cache=None)


def test_unknown_format(tmp_path):
    txt = tmp_path / "model.txt"
    txt.write_text("hello")
    with pytest.raises(UnknownModelFormatError, match="unknown model format"):
        load(txt, cache=None)
    weights = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), weights)
    with pytest.raises(UnknownModelFormatError, match="pass the module"):
        load(weights, cache=None)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\xffnot a protobuf" * 10)
    for mode in ("plain", "pipelined"):
        with pytest.raises(UnknownModelFormatError, match="not a valid ONNX model"):
            load(bad, mode=mode, cache=None, cache_dir=tmp_path)
    not_weights = tmp_path / "x.pt"
    not_weights.write_text("text")
    with pytest.raises(UnknownModelFormatError, match="not a Torch state dict"):
        load(torch.nn.Linear(2, 2), weights=not_weights, cache=None)
    with pytest.raises(UnknownModelFormatError, match="cannot load a dict"):
        load({"a": 1}, cache=None)
    with pytest.raises(UnknownModelFormatError, match="TorchScript"):
        load(torch.jit.script(torch.nn.Linear(2, 2)), cache=None)


def test_weights_that_do_not_fit_the_module(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), weights)
    with pytest.raises(ModelError, match="do not fit Linear"):
        load(torch.nn.Linear(2, 2), weights=weights, cache=None)


def test_unavailable_or_unknown_device(zoo):
    for device in ("cuda:99", "tpu", "cpu:1"):
        with pytest.raises(DeviceUnavailableError, match=device.split(":")[0]):
            load(torch.nn.Linear(2, 2), device=device, cache=None)
        with pytest.raises(DeviceUnavailableError):
            load(zoo["resnet"].onnx, device=device, cache=None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where no GPU is present")
def test_cuda_without_a_gpu(zoo):
    with pytest.raises(DeviceUnavailableError, match="'cuda:0' is not available"):
        load(torch.nn.Linear(2, 2), device="cuda", cache=None)
    with pytest.raises(DeviceUnavailableError, match="cuda:0"):
        load(zoo["resnet"].onnx, device="cuda:0", cache=None)


def test_bad_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        load(torch.nn.Linear(2, 2), mode="fast", cache=None)


def test_an_onnx_session_that_falls_back_to_the_cpu_is_refused(zoo):
    """onnxruntime runs on the CPU, with a log line only, when the CUDA provider it was given
    cannot start (here: a CPU-only onnxruntime; on a GPU node: missing CUDA/cuDNN libraries)."""
    from owruntime.models.devices import CUDA_PROVIDER_OPTIONS
    from owruntime.models.onnx_loader import _session

    providers = [("CUDAExecutionProvider", {**CUDA_PROVIDER_OPTIONS, "device_id": 0}), "CPUExecutionProvider"]
    with pytest.raises(DeviceUnavailableError, match="could not start CUDAExecutionProvider .*CPUExecutionProvider"):
        _session(zoo["resnet"].onnx, None, providers)
    assert _session(zoo["resnet"].onnx, None, ["CPUExecutionProvider"]).get_providers() == ["CPUExecutionProvider"]
