"""Shared parts of the GPU benchmarks: ResNet-50 (defined here, random weights, no
torchvision), its weight files (Torch state dict, ONNX export), the action code that loads
and runs it with each phase timed, and a small driver around the container pool.

Nothing here produces a figure by itself; ``gpu_coldstart.py`` and ``gpu_mps_throughput.py``
measure, and they record the GPU they ran on. ``--smoke`` runs the same code paths on a CPU
machine (declared inventory, CPU torch) and records nothing.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from invoker.containerpool.activation import Job
from invoker.containerpool.pool import ContainerPool, ImageResolver, PoolConfig
from invoker.containerpool.process import ProcessContainerFactory
from invoker.embedded.controller import new_identity
from invoker.entities import WhiskAction, WhiskActivation, action_document
from invoker.gpu.inventory import Inventory, detect_nvml, parse_declared
from invoker.gpu.layer import GpuLayer, GpuSettings
from invoker.manifest import StemCell
from invoker.messages import (
    ActivationMessage,
    ControllerInstanceId,
    FullyQualifiedEntityName,
    TransactionId,
)

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache"

# ResNet-50 (He et al. 2015, v1.5: stride in the 3x3 conv), written out so the runtime needs no
# torchvision. Built inside a function: importing torch is one of the timed phases.
RESNET50 = '''
def build_resnet50(torch):
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    class ResNet50(nn.Module):
        def __init__(self, classes=1000):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
            blocks, inplanes = [], 64
            for planes, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
                blocks.append(Bottleneck(inplanes, planes, stride, down))
                inplanes = planes * 4
                blocks += [Bottleneck(inplanes, planes) for _ in range(count - 1)]
            self.layers = nn.Sequential(*blocks)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2048, classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))

    return ResNet50()
'''

# One activation: on the first call every phase of getting the model onto the device is
# timed separately; later calls find it resident and time inference only. ``loop_s`` turns
# a call into a throughput run (inferences until the deadline, all functions starting at
# ``start_at``). ``device`` is "cuda" unless a smoke run says "cpu": without CUDA the action
# fails rather than report a CPU figure. ``measure_link`` (a warm call) measures the pinned
# host-to-device bandwidth, the copy term of the cold-start goal.
TORCH_ACTION = RESNET50 + '''
import time
_MODEL = {}

def _sync(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()

def main(args):
    phases = {}
    clock = time.perf_counter
    t = clock()
    import torch
    phases["import_s"] = clock() - t
    device = args.get("device", "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"CUDA is not available to torch {torch.__version__} (CUDA build {torch.version.cuda}) "
                           "in the action's process: its figures would be the CPU's")
    batch = int(args.get("batch", 1))
    cached = "model" in _MODEL
    if not cached:
        t = clock()
        if device == "cuda":
            torch.zeros(1, device="cuda")
            _sync(torch, device)
        phases["cuda_context_s"] = clock() - t
        t = clock()
        state = torch.load(args["weights"], map_location="cpu", weights_only=True)
        model = build_resnet50(torch)
        model.load_state_dict(state)
        model.eval()
        phases["weights_load_s"] = clock() - t
        t = clock()
        model.to(device)
        _sync(torch, device)
        phases["to_device_s"] = clock() - t
        _MODEL["model"] = model
        from owruntime.resident import REGISTRY
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        nbytes += sum(b.numel() * b.element_size() for b in model.buffers())
        REGISTRY.register(args["weights"], "cuda:0" if device == "cuda" else "cpu", nbytes)
        _MODEL["nbytes"] = nbytes
    model = _MODEL["model"]
    link = None
    if args.get("measure_link") and device == "cuda":
        from owruntime.models.devices import measure_h2d_bandwidth, parse_device
        link = measure_h2d_bandwidth(parse_device("cuda:0"), nbytes=64 << 20)
    x = torch.randn(batch, 3, 224, 224, device=device)
    with torch.inference_mode():
        t = clock()
        model(x)
        _sync(torch, device)
        phases["first_inference_s" if not cached else "inference_s"] = clock() - t
        images = 0
        if args.get("loop_s"):
            while time.time() < args.get("start_at", 0):
                time.sleep(0.001)
            t = clock()
            deadline = t + float(args["loop_s"])
            while clock() < deadline:
                model(x)
                _sync(torch, device)
                images += batch
            phases["loop_s"] = clock() - t
    return {"cached": cached, "device": device, "phases": phases, "images": images,
            "weights_bytes": _MODEL["nbytes"], "h2d_pinned_Bps": link,
            "mps": {k: v for k, v in __import__("os").environ.items() if k.startswith("CUDA_MPS_ACTIVE")}}
'''

ONNX_ACTION = '''
import time
_SESSION = {}

def main(args):
    phases = {}
    clock = time.perf_counter
    t = clock()
    import numpy as np
    import onnxruntime as ort
    phases["import_s"] = clock() - t
    cached = "session" in _SESSION
    if not cached:
        t = clock()
        from owruntime.models.devices import CUDA_PROVIDER_OPTIONS
        cuda = args.get("device", "cuda") == "cuda"
        providers = ([("CUDAExecutionProvider", CUDA_PROVIDER_OPTIONS)] if cuda else []) + ["CPUExecutionProvider"]
        # CUDA context (unless a stem cell made it), weights from disk, graph optimisation and
        # the copy to the GPU happen inside the session constructor: onnxruntime does not
        # expose them separately.
        _SESSION["session"] = ort.InferenceSession(args["weights"], providers=providers)
        phases["session_create_s"] = clock() - t
        if cuda and _SESSION["session"].get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"onnxruntime {ort.__version__} runs this model on {_SESSION['session'].get_providers()[0]}, "
                               "not CUDA (CUDA provider missing, or its libraries not found): its figures would be the CPU's")
        from owruntime.resident import REGISTRY
        import os
        on_gpu = _SESSION["session"].get_providers()[0] == "CUDAExecutionProvider"
        REGISTRY.register(args["weights"], "cuda:0" if on_gpu else "cpu", os.path.getsize(args["weights"]))
    session = _SESSION["session"]
    x = np.random.rand(int(args.get("batch", 1)), 3, 224, 224).astype(np.float32)
    t = clock()
    session.run(None, {session.get_inputs()[0].name: x})
    phases["first_inference_s" if not cached else "inference_s"] = clock() - t
    return {"cached": cached, "providers": session.get_providers(), "phases": phases}
'''


def prepare_weights(smoke: bool) -> tuple[Path, Path]:
    """Random ResNet-50 weights as a Torch state dict and as ONNX (made once, cached)."""
    import torch

    CACHE.mkdir(exist_ok=True)
    pt, onnx = CACHE / "resnet50.pt", CACHE / "resnet50.onnx"
    if not pt.exists() or not onnx.exists():
        namespace: dict = {}
        exec(RESNET50, namespace)  # noqa: S102 - our own model definition above
        torch.manual_seed(0)
        model = namespace["build_resnet50"](torch).eval()
        torch.save(model.state_dict(), pt)
        torch.onnx.export(model, torch.randn(1, 3, 224, 224), str(onnx), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)
    return pt, onnx


class PythonOnly(ImageResolver):
    def image_for(self, kind: str) -> str:
        if not kind.startswith("python"):
            raise KeyError(kind)
        return "owruntime"


class Sink:
    def __init__(self) -> None:
        self.done: dict[str, WhiskActivation] = {}
        self.cond = threading.Condition()

    def result_ready(self, job, activation) -> None:
        pass

    def completed(self, job, activation) -> None:
        with self.cond:
            self.done[job.msg.activation_id] = activation
            self.cond.notify_all()

    def wait(self, job: Job, timeout_s: float = 600) -> WhiskActivation:
        with self.cond:
            if not self.cond.wait_for(lambda: job.msg.activation_id in self.done, timeout_s):
                raise TimeoutError(f"activation {job.msg.activation_id} did not finish")
            return self.done[job.msg.activation_id]


_user = new_identity()


def gpu_action(name: str, code: str, memory_mb: int, gpu: dict | None = None) -> WhiskAction:
    doc = action_document("guest", name, "python:3-gpu", None, False)
    doc["limits"].update(memory=memory_mb, timeout=300_000)
    doc["_rev"] = "1-a"
    if gpu is not None:
        doc["annotations"] = [{"key": "gpu", "value": gpu}]
    return WhiskAction.from_document(doc, code)


def make_job(action: WhiskAction, sink: Sink, args: dict) -> Job:
    msg = ActivationMessage(
        transid=TransactionId.new("b" * 32, int(time.time() * 1000)),
        action=FullyQualifiedEntityName("guest", action.name, "0.0.1"),
        revision=action.rev, user=_user, activation_id=f"{time.time_ns():032x}"[-32:],
        root_controller_index=ControllerInstanceId("0"), blocking=True,
    )
    return Job(msg=msg, action=action, arguments=args, init_env={}, sink=sink)


def inventory(smoke: bool) -> Inventory:
    if smoke:
        return parse_declared("0:16GiB")
    detected = detect_nvml()
    if detected is None or not detected.devices:
        raise SystemExit("no GPU detected through NVML: run on a GPU machine, or pass --smoke for a CPU dry run "
                         "(which records no figures)")
    return detected


def make_pool(inv: Inventory, mps: str, stem_cells: tuple[StemCell, ...] = (), mps_dir: Path | None = None,
              user_memory_mb: int = 262_144, settings: GpuSettings | None = None) -> tuple[ContainerPool, GpuLayer]:
    settings = settings or GpuSettings(reserved_mb=512, stem_cells=stem_cells)
    layer = GpuLayer.start(inv, settings, mps, mps_dir=mps_dir or CACHE / "mps")
    # The process backend passes no LD_LIBRARY_PATH of its own; CUDA libraries found through it
    # here must be found by the actions too.
    extra = {"__OW_INVOKER": "gpubench", **({"LD_LIBRARY_PATH": v} if (v := os.environ.get("LD_LIBRARY_PATH")) else {})}
    pool = ContainerPool(ProcessContainerFactory(extra_env=extra), PythonOnly(),
                         PoolConfig(user_memory_mb=user_memory_mb, pause_grace_s=3600, idle_timeout_s=3600), gpu=layer)
    pool.start()
    return pool, layer


def machine(inv: Inventory) -> dict:
    out = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
           "gpus": [d.to_json() for d in inv.devices], "inventory_source": inv.source}
    try:
        import pynvml

        pynvml.nvmlInit()
        out["driver"] = pynvml.nvmlSystemGetDriverVersion()
        pynvml.nvmlShutdown()
    except Exception:  # a smoke run has no driver
        pass
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.version.cuda
    except ImportError:
        pass
    return out


def write_result(name: str, payload: dict, smoke: bool) -> None:
    if smoke:
        print(json.dumps(payload, indent=2))
        print("smoke run on a CPU: nothing recorded")
        return
    RESULTS.mkdir(exist_ok=True)
    payload["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULTS / f'{name}.json'}")


def device_arg(smoke: bool) -> str:
    """What the bench actions are told to run on: CUDA, except in a smoke run on a CPU."""
    return "cpu" if smoke else "cuda"


def require_cuda(result: dict, smoke: bool) -> None:
    """Raise unless the action ran on CUDA (torch's device, or onnxruntime's first provider): a
    benchmark must not record a CPU figure under a GPU's name. A smoke run is on the CPU."""
    if smoke:
        return
    if result.get("device") != "cuda" and (result.get("providers") or [None])[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"the action did not run on CUDA: {result}")


# A bare CUDA client (driver API through ctypes: no framework to import). The first one after
# the MPS control daemon started waits for it to start its server.
CUDA_CLIENT = """
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
rc = cuda.cuInit(0)
device, context = ctypes.c_int(), ctypes.c_void_p()
rc = rc or cuda.cuDeviceGet(ctypes.byref(device), 0)
rc = rc or cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device)
sys.exit(rc)
"""


def mps_server_start(layer: GpuLayer) -> dict | None:
    """Under MPS, start the MPS server before a naive cold start is timed, and time it apart:
    two bare CUDA clients, the first of which waits for the server; None without MPS."""
    if not layer.sharing.mps or layer.daemon is None:
        return None
    env = {**os.environ, **layer.daemon.env()}
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CUDA_CLIENT], env=env, capture_output=True, text=True,
                              timeout=120)
        seconds.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"a CUDA client under MPS failed (CUresult {done.returncode}): {done.stderr[-2000:]}")
    return {"first_client_s": seconds[0], "next_client_s": seconds[1], "server_start_s": seconds[0] - seconds[1]}


def stop_on_sigterm() -> None:
    """SIGTERM (a session step's time limit) ends the run like Ctrl-C: ``finally`` blocks stop the
    pool's runtime processes and the MPS daemon instead of leaving them to the next step."""
    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, stop)
