"""Warm-up of a GPU stem cell before it is ready: import the frameworks, create the CUDA
context and run a first matmul and conv (cuBLAS, cuDNN), so an action's cold start on it pays
only for ``/init`` and its model.

``OW_GPU_PREWARM=torch,onnxruntime`` names what to warm (the invoker sets it on GPU
stem cells). The server answers ``GET /ready`` with 503 until the warm-up has finished,
then with 200 and the report this module builds (what was imported, whether CUDA came
up, how long each step took). A failed step is reported, not fatal: the container
stays usable, it is only less warm.
"""

from __future__ import annotations

import importlib
import os
import time

ENV = "OW_GPU_PREWARM"


def requested(environ=os.environ) -> list[str]:
    return [m.strip() for m in environ.get(ENV, "").split(",") if m.strip()]


def _torch() -> dict:
    import torch

    entry: dict = {"version": torch.__version__, "cuda": bool(torch.cuda.is_available())}
    if entry["cuda"]:
        start = time.perf_counter()
        torch.zeros(1, device="cuda")  # creates the primary context, which onnxruntime's CUDA EP shares
        torch.cuda.synchronize()
        entry["context_s"] = round(time.perf_counter() - start, 4)
        entry["device"] = torch.cuda.get_device_name(0)
        # A context is not yet a warm GPU: cuBLAS and cuDNN create their handles, and CUDA loads
        # kernels lazily (CUDA_MODULE_LOADING=LAZY), at the first matmul and conv; without this
        # the action's first call on a "warm" stem cell pays them (only a GPU can show it).
        start = time.perf_counter()
        a = torch.ones(64, 64, device="cuda")
        torch.mm(a, a)
        x = torch.ones(1, 8, 16, 16, device="cuda")
        torch.nn.functional.conv2d(x, torch.ones(8, 8, 3, 3, device="cuda"), padding=1)
        torch.cuda.synchronize()
        entry["kernels_s"] = round(time.perf_counter() - start, 4)
    return entry


def _onnxruntime() -> dict:
    import onnxruntime

    entry: dict = {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}
    if "CUDAExecutionProvider" in entry["providers"]:
        # Loading the CUDA provider library (with cuBLAS and cuDNN) and making its first session
        # is most of ONNX Runtime's GPU start-up: pay it here with a one-node model.
        start = time.perf_counter()
        try:
            entry["cuda_ep"] = _first_cuda_session(onnxruntime)
        except Exception as error:  # reported, not fatal
            entry["cuda_ep"] = False
            entry["cuda_ep_error"] = f"{type(error).__name__}: {error}"
        entry["cuda_ep_s"] = round(time.perf_counter() - start, 4)
    return entry


def _first_cuda_session(onnxruntime) -> bool:
    import numpy as np
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "prewarm", [x], [y])
    # IR 9 with opset 17: what every onnxruntime of the last years reads (onnx writes newer).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
    session.run(None, {"x": np.ones(1, dtype=np.float32)})
    return session.get_providers()[0] == "CUDAExecutionProvider"


_WARMERS = {"torch": _torch, "onnxruntime": _onnxruntime}


def warm_up(modules: list[str]) -> dict:
    report: dict = {}
    for name in modules:
        start = time.perf_counter()
        try:
            entry = _WARMERS[name]() if name in _WARMERS else {"version": getattr(importlib.import_module(name), "__version__", None)}
            entry["imported"] = True
        except Exception as error:  # reported, not fatal: see the module docstring
            entry = {"imported": False, "error": f"{type(error).__name__}: {error}"}
        entry["seconds"] = round(time.perf_counter() - start, 4)
        report[name] = entry
    return report
