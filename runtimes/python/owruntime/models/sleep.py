"""Sleep: a resident model gives its device memory back and keeps its weights in host memory.

A sleeping Torch model holds its weights and buffers in the pinned host buffer it was loaded
from; a sleeping ONNX model keeps its stage models' bytes (or, loaded plain, its file). The
process keeps its CUDA context and its imports. The next call of the model wakes it through
the pipelined loader; the object :func:`owruntime.models.load` returned stays the same.

This module has what the Torch and ONNX models share: the report of one sleep, how the device
memory a sleep gave back is measured, and the cache-wide sleep ``POST /sleep`` performs.
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .devices import Device
from .errors import ModelBusyError

if TYPE_CHECKING:
    from ..resident import Registry
    from .cache import ModelCache


@dataclass(frozen=True)
class SleepReport:
    freed: int  # device memory the sleep gave back (bytes)
    host_bytes: int  # host memory that holds the model while it sleeps
    measured: bool  # False: ``freed`` is the model's own size (the device could not be asked)
    seconds: float  # what the sleep took (writing changed buffers back, freeing)


@dataclass(frozen=True)
class Slept:
    key: str
    device: str
    report: SleepReport


@dataclass(frozen=True)
class Kept:
    key: str
    device: str
    reason: str


def _cuda(device: Device):  # noqa: ANN202 - torch.cuda, or None
    """torch.cuda when this process already uses it on a GPU; never imports torch or creates a
    context (asking would cost a context's memory in a process that has none)."""
    torch = sys.modules.get("torch")
    if torch is None or not device.is_cuda:
        return None
    try:
        return torch.cuda if torch.cuda.is_initialized() else None
    except Exception:  # a broken CUDA state: nothing measured
        return None


def allocator_reserved(device: Device) -> int | None:
    """What torch's caching allocator holds on ``device``: exact, this process only."""
    cuda = _cuda(device)
    return int(cuda.memory_reserved(device.index)) if cuda is not None else None


def device_used(device: Device) -> int | None:
    """Device memory in use on the whole GPU (``cudaMemGetInfo``): what ONNX Runtime's arenas
    free shows only here. Device-wide, so another process's allocation in the same instant
    distorts a difference; the invoker takes it as a measurement, not an exact count."""
    cuda = _cuda(device)
    if cuda is None:
        return None
    free, total = cuda.mem_get_info(device.index)
    return int(total - free)


def release_framework_cache(device: Device) -> None:
    """Give what the frameworks cache back to the device (torch's allocator); the CUDA context
    stays. ``gc.collect`` first: a tensor or session in a reference cycle would keep its block
    (on the CPU reference counting frees the host-to-host copies at once)."""
    cuda = _cuda(device)
    if cuda is not None:
        gc.collect()
        cuda.empty_cache()


def clock() -> float:
    return time.perf_counter()


def sleep_cache(cache: ModelCache, device: str | None = None) -> tuple[list[Slept], list[Kept]]:
    """Put every model of ``cache`` (on ``device``, or all) to sleep, one by one; a model in use,
    one that cannot sleep or one whose sleep failed stays awake, with the reason."""
    slept: list[Slept] = []
    kept: list[Kept] = []
    for key, dev in cache.keys():
        if device is not None and dev != device:
            continue
        model = cache.peek(key, dev)
        if model is None:  # evicted meanwhile
            continue
        if not callable(getattr(model, "sleep", None)):
            kept.append(Kept(key, dev, f"a {type(model).__name__} cannot sleep"))
            continue
        try:
            slept.append(Slept(key, dev, model.sleep()))
        except ModelBusyError as e:
            kept.append(Kept(key, dev, str(e)))
        except Exception as e:  # a stage file gone, a failed copy: it stays awake, and says why
            kept.append(Kept(key, dev, f"its sleep failed: {type(e).__name__}: {e}"))
    return slept, kept


def sleep_all(cache: ModelCache, registry: Registry) -> dict:
    """What ``POST /sleep`` does and answers: every model of the process's cache to sleep; the
    models the registry lists that the cache does not hold (an action registered them itself)
    stay as they are, with the reason."""
    start = clock()
    slept, kept = sleep_cache(cache)
    cached = set(cache.keys())
    kept += [Kept(m.key, m.device, "not loaded through owruntime.models: it cannot sleep")
             for m in registry.models() if (m.key, m.device) not in cached]
    freed: dict[str, int] = {}
    for s in slept:
        freed[s.device] = freed.get(s.device, 0) + s.report.freed
    return {
        "asleep": [{"key": s.key, "device": s.device, "freed": s.report.freed,
                    "host_bytes": s.report.host_bytes, "measured": s.report.measured,
                    "seconds": round(s.report.seconds, 6)} for s in slept],
        "kept": [{"key": k.key, "device": k.device, "reason": k.reason} for k in kept],
        "freed": freed,
        "host_bytes": sum(s.report.host_bytes for s in slept),
        "seconds": round(clock() - start, 6),
    }
