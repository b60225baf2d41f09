"""Device names (``"cpu"``, ``"cuda"``, ``"cuda:N"``) checked against what this process has."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import DeviceUnavailableError

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" | "cuda"
    index: int  # 0 for the CPU

    @property
    def name(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"


def parse_device(device: str) -> Device:
    """``"cuda"`` means ``"cuda:0"``; anything but cpu/cuda[:N] is refused."""
    m = _DEVICE.match(device.strip().lower()) if isinstance(device, str) else None
    if m is None:
        raise DeviceUnavailableError(
            f"unknown device {device!r}: the model library runs on 'cpu' or 'cuda[:N]'"
        )
    if m.group(1) == "cpu":
        if m.group(2) not in (None, "0"):
            raise DeviceUnavailableError(f"unknown device {device!r}: the CPU is 'cpu'")
        return Device("cpu", 0)
    return Device("cuda", int(m.group(2) or 0))


def check_torch_device(device: Device) -> None:
    """Raise unless torch can use ``device`` here."""
    if not device.is_cuda:
        return
    import torch

    if not torch.cuda.is_available():
        build = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise DeviceUnavailableError(f"device {device.name!r} is not available: {build}")
    if device.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(
            f"device {device.name!r} is not available: "
            f"{torch.cuda.device_count()} GPU(s) visible"
        )


# The CUDA provider's defaults do not suit a cold start under an MPS memory cap (only a GPU can
# show the difference; onnxruntime's CUDA EP documentation describes both options):
# * cudnn_conv_algo_search EXHAUSTIVE (default) benchmarks every cuDNN algorithm of every conv
#   on the first run, seconds on the path a cold start is measured on; HEURISTIC asks cuDNN's
#   heuristics instead, at most a few percent slower per conv.
# * arena_extend_strategy kNextPowerOfTwo (default) grows each session's arena by doubling;
#   with one session per pipeline stage that can hold up to twice each stage's memory, out of
#   the action's CUDA_MPS_PINNED_DEVICE_MEM_LIMIT. kSameAsRequested grows it by what is asked.
CUDA_PROVIDER_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}


def onnx_providers(device: Device) -> list[str | tuple[str, dict]]:
    """The onnxruntime execution providers for ``device``; raise where CUDA is missing."""
    import onnxruntime as ort

    if not device.is_cuda:
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise DeviceUnavailableError(
            f"device {device.name!r} is not available to onnxruntime: "
            "CUDAExecutionProvider missing (install onnxruntime-gpu)"
        )
    import importlib.util

    if importlib.util.find_spec("torch") is not None:  # without torch, ORT reports a bad index
        check_torch_device(device)
    return [("CUDAExecutionProvider", CUDA_PROVIDER_OPTIONS | {"device_id": device.index}),
            "CPUExecutionProvider"]



def measure_h2d_bandwidth(device: Device, nbytes: int = 64 << 20, repeat: int = 5) -> float:
    """Pinned host-to-device bandwidth in bytes/s, best of ``repeat`` copies (needs torch)."""
    import time

    import torch

    check_torch_device(device)
    if not device.is_cuda:
        return float("inf")  # nothing to copy: CPU "device" weights are the host weights
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device.name)
    stream = torch.cuda.Stream(device.name)
    best = float("inf")
    with torch.cuda.stream(stream):
        dst.copy_(src, non_blocking=True)  # warm-up
        stream.synchronize()
        for _ in range(repeat):
            t0 = time.perf_counter()
            dst.copy_(src, non_blocking=True)
            stream.synchronize()
            best = min(best, time.perf_counter() - t0)
    return nbytes / best
