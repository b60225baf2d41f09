"""The runtime's side of the GPU layer, on a real runtime process: ``X-OW-Resident`` on every
/run answer, and ``GET /ready`` gating a stem cell until its warm-up (``OW_GPU_PREWARM``) ran."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from owruntime.resident import HEADER, parse_header

RUNTIME_SOURCE = Path(__file__).resolve().parents[2] / "runtimes" / "python"

ACTION = """
import sys
WARM_AT_INIT = "slowmod" in sys.modules
from owruntime.resident import REGISTRY

def main(args):
    if args.get("fail"):
        raise RuntimeError("asked to fail")
    if args.get("oom"):  # the words torch uses (this test has no GPU)
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB")
    if args.get("load"):
        REGISTRY.register(args["load"], "cuda:0", 4096)
    if args.get("unload"):
        REGISTRY.unregister(args["unload"])
    return {"warm_at_init": WARM_AT_INIT}
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def runtime(tmp_path):
    procs = []

    def start(env: dict[str, str] | None = None) -> int:
        port = _port()
        (tmp_path / "slowmod.py").write_text("import time\ntime.sleep(1.5)\n")
        full = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{RUNTIME_SOURCE}{os.pathsep}{tmp_path}", **(env or {})}
        procs.append(subprocess.Popen([sys.executable, "-m", "owruntime", "--host", "127.0.0.1", "--port", str(port)],
                                      env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                assert time.monotonic() < deadline, "runtime did not listen"
                time.sleep(0.02)

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        conn.close()


def init(port: int) -> tuple[int, dict, dict]:
    return request(port, "POST", "/init", {"value": {"name": "a", "main": "main", "code": ACTION, "binary": False}})


def test_every_run_answer_reports_the_resident_models(runtime):
    port = runtime()
    assert init(port)[0] == 200
    status, _, headers = request(port, "POST", "/run", {"value": {}})
    assert status == 200 and json.loads(headers[HEADER]) == {"models": []}
    status, _, headers = request(port, "POST", "/run", {"value": {"load": "resnet50"}})
    assert [(m.key, m.device, m.bytes) for m in parse_header(headers[HEADER]).models] == [("resnet50", "cuda:0", 4096)]
    status, body, headers = request(port, "POST", "/run", {"value": {"fail": True}})
    assert "asked to fail" in body["error"]
    assert parse_header(headers[HEADER]).models[0].key == "resnet50"  # an error answer reports too
    status, _, headers = request(port, "POST", "/run", {"value": {"unload": "resnet50"}})
    assert parse_header(headers[HEADER]).models == ()


def test_concurrent_runs_report_too(runtime):
    port = runtime({"__OW_ALLOW_CONCURRENT": "true"})
    init(port)
    _, _, headers = request(port, "POST", "/run", {"value": {"load": "m"}})
    assert parse_header(headers[HEADER]).models[0].key == "m"


def test_ready_waits_for_the_warm_up_and_init_runs_after_it(runtime):
    port = runtime({"OW_GPU_PREWARM": "slowmod,no_such_module"})
    status, body, _ = request(port, "GET", "/ready")
    assert status == 503 and body == {"ready": False, "warming": ["slowmod", "no_such_module"]}
    status, _, _ = init(port)  # queued behind the warm-up
    assert status == 200
    status, body, _ = request(port, "GET", "/ready")
    assert status == 200 and body["ready"] is True
    assert body["prewarm"]["slowmod"]["imported"] is True and body["prewarm"]["slowmod"]["seconds"] >= 1.0
    assert body["prewarm"]["no_such_module"]["imported"] is False
    assert "ModuleNotFoundError" in body["prewarm"]["no_such_module"]["error"]
    _, result, _ = request(port, "POST", "/run", {"value": {}})
    assert result == {"warm_at_init": True}


def test_a_runtime_without_warm_up_is_ready_at_once(runtime):
    port = runtime()
    status, body, _ = request(port, "GET", "/ready")
    assert status == 200 and body == {"ready": True, "prewarm": {}}


def test_onnxruntime_warm_up_session_is_a_valid_model_for_the_installed_runtime():
    """The one-node model the warm-up runs on the CUDA provider must load in this onnxruntime
    (onnx writes IR versions newer than some onnxruntime releases read): it runs, on the GPU
    where there is one and the CUDA provider is installed, else on the CPU fallback."""
    import onnxruntime
    from owruntime.prewarm import _first_cuda_session
    from services import nvidia_gpu_count

    on_gpu = "CUDAExecutionProvider" in onnxruntime.get_available_providers() and nvidia_gpu_count() > 0
    assert _first_cuda_session(onnxruntime) is on_gpu


def test_held_device_memory_is_reported_and_rendered_only_when_it_changes():
    from owruntime.resident import Registry

    held = {"cuda:0": 0}
    renders = []
    registry = Registry(held=lambda: {k: v for k, v in held.items() if v})
    original = registry._render
    registry._render = lambda: renders.append(1) or original()
    assert parse_header(registry.header_value()).held == {}
    held["cuda:0"] = 512 * 2**20
    report = parse_header(registry.header_value())
    assert report.held == {"cuda:0": 512 * 2**20} and report.models == ()
    for _ in range(3):
        registry.header_value()
    assert len(renders) == 1  # rendered once for the change, not per /run
    registry.register("m", "cuda:0", 10)
    assert parse_header(registry.header_value()).models[0].key == "m"
    assert parse_header('{"models": [], "held": ["not", "a", "map"]}').held == {}  # malformed: nothing


def test_held_memory_is_nothing_without_an_initialised_cuda():
    """Here torch is imported but CUDA was never initialised (a CPU, or an action that did not
    touch the GPU): nothing is held and nothing is initialised by asking."""
    import torch
    from owruntime.resident import framework_held_bytes

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        pytest.skip("CUDA already initialised in this test process")
    assert framework_held_bytes() == {}
    assert not torch.cuda.is_initialized()


def test_a_gpu_out_of_memory_error_names_the_actions_mps_limit(runtime):
    port = runtime({"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=1024MB"})
    init(port)
    status, body, _ = request(port, "POST", "/run", {"value": {"oom": True}})
    assert status == 200  # still the contract's application error
    assert body["error"].startswith("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "GPU memory limit of this action: 1024MB (MPS" in body["error"]
    _, body, _ = request(port, "POST", "/run", {"value": {"fail": True}})
    assert body == {"error": "asked to fail"}  # other errors: the exception's text alone


def test_without_mps_the_error_is_the_frameworks_own(runtime):
    port = runtime()
    init(port)
    _, body, _ = request(port, "POST", "/run", {"value": {"oom": True}})
    assert body["error"] == ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                             "79.1 GiB")


@pytest.mark.parametrize("text", [
    # onnxruntime's CUDA arena: the device is not named
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
    "Name:'/conv1/Conv' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:376 void* "
    "onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*, bool, "
    "onnxruntime::WaitNotificationFn) Failed to allocate memory for requested buffer of size 8388608000",
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "CUDA failure 2: out of memory ; GPU=0 ; hostname=h ; expr=cudaMalloc((void**)&p, size);",
    "CUDA out of memory. Tried to allocate 2.00 GiB",
])
def test_the_frameworks_gpu_out_of_memory_texts_are_recognised(text):
    from owruntime.gpu_errors import is_gpu_oom

    assert is_gpu_oom(RuntimeError(text), text)


def test_other_errors_are_not_taken_for_a_gpu_out_of_memory():
    from owruntime.gpu_errors import is_gpu_oom

    for text in ("asked to fail", "CUDA error: an illegal memory access was encountered",
                 "Failed to allocate memory for the file cache"):
        assert not is_gpu_oom(RuntimeError(text), text), text
