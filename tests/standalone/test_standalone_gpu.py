"""On a machine with an NVIDIA GPU: start-up says -gpu kinds run on the GPU, and a
``python:3-gpu`` action sees CUDA (where the installed torch is a CUDA build)."""

from __future__ import annotations

import pytest
import requests
from standalone_support import Standalone

GPU_ACTION = '''
def main(args):
    import torch
    return {"cuda": torch.cuda.is_available(),
            "name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
'''


@pytest.mark.gpu
def test_start_up_reports_the_gpu(standalone: Standalone) -> None:
    gpus = next(line for line in standalone.output if line.strip().startswith("GPUs:"))
    kinds = next(line for line in standalone.output if line.strip().startswith("kinds:"))
    assert "NVIDIA GPU(s)" in gpus
    assert "python:3-gpu: GPU" in kinds


@pytest.mark.gpu
def test_gpu_action_sees_cuda(standalone: Standalone) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("the installed torch is a CPU build: install the CUDA build to run GPU actions")
    put = requests.put(standalone.api("actions/cuda-check"), json={"exec": {"kind": "python:3-gpu", "code": GPU_ACTION}},
                       auth=standalone.auth, timeout=30)
    assert put.status_code == 200
    answer = requests.post(standalone.api("actions/cuda-check"), params={"blocking": "true", "result": "true"},
                           json={}, auth=standalone.auth, timeout=120)
    assert answer.status_code == 200 and answer.json()["cuda"] is True
