"""GPU sleep, the invoker half (issue #20): what a sleeping container still holds.

The runtime half is ``POST /sleep`` (runtimes/python/README.md, "GPU sleep"). Asleep, a
container keeps its process, its CUDA context (with MPS: its client connection, so its slot)
and the models it could not put to sleep; everything else it was admitted with is free for
others. Its GPU charge shrinks to:

* measured: its admitted memory minus the device memory the sleep reports it freed on a CUDA
  device (torch's allocator, exactly; ONNX, the device's used memory). With MPS the client's
  allocations are capped at its admission (``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``), so what is
  left bounds its context and kept models, per client, if the context counts against that cap
  (not measured yet: bench/gpu_sleep_pool.py measures it on a GPU);
* otherwise (no CUDA device freed anything, e.g. on a CPU, or ``freed`` is an estimate):
  ``context_mb``, the configured estimate of one CUDA context, plus the models the runtime
  still lists on a CUDA device.

Never more than it was admitted with. Pure functions: the pool calls them under its lock.
"""

from __future__ import annotations

import math

from owruntime.resident import Residency

from invoker.containerpool.container import SleepReport

MB = 1024 * 1024



def asleep_charge_mb(admitted_mb: int, report: SleepReport, residency: Residency, context_mb: int) -> tuple[int, bool]:
    """What a container still holds on its GPU after ``report``'s sleep, in MB (rounded up),
    and whether that was measured (True) or estimated from ``context_mb`` (False)."""
    freed = report.freed_on_gpu()
    if freed > 0 and report.measured:
        held = admitted_mb - freed // MB  # freed rounded down: what is left, rounded up
        if held >= 0:
            return held, True
        # Freed more than it was admitted with (it held over its request): the figure says
        # nothing about what is left; estimate instead.
    awake = sum(m.bytes for m in residency.models if m.device.startswith("cuda"))
    return min(admitted_mb, context_mb + math.ceil(awake / MB)), False


def expected_charge_mb(admitted_mb: int, context_mb: int) -> int:
    """What a container is expected to keep once a sleep under way ends: its context. The rest
    counts as on its way (a waiting job waits for it instead of evicting more)."""
    return min(admitted_mb, context_mb)


def host_mb(report: SleepReport, residency: Residency | None = None) -> int:
    """Host memory the asleep models hold, in MB (rounded up; at least 1, a reservation): all the
    runtime lists asleep after the sleep (a model the last call did not use was still asleep
    from the sleep before, and is not in this report), else what the report says."""
    listed = sum(m.host_bytes for m in residency.asleep) if residency is not None else 0
    return max(1, math.ceil(max(listed, report.host_bytes) / MB))
