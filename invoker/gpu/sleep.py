"""GPU sleep, the invoker half (issue #20): what a sleeping container still holds.

The runtime half is ``POST /sleep`` (runtimes/python/README.md, "GPU sleep"). Asleep, a
container keeps its process, its CUDA context (with MPS: its client connection, so its slot)
and the models it could not put to sleep; everything else it was admitted with is free for
others.

The report comes from the tenant's own process, so it is believed only as far as the invoker
can check it (issue #27). A report that does not add up (``implausible``: freed more than the
container was admitted with, a host copy bigger than its own memory limit) is ignored: the
container counts as awake, its charge unchanged. Otherwise its GPU charge shrinks to:

* measured: its admitted memory minus the device memory the sleep reports it freed on a CUDA
  device (torch's allocator, exactly; ONNX, the device's used memory);
* otherwise (no CUDA device freed anything, e.g. on a CPU, or ``freed`` is an estimate):
  the floor,

never below the floor and never above what it was admitted with. The floor is what the
invoker itself can vouch for: NVML's reading of the container's own use where one is given
(``measured_mb``), else ``context_mb``, the configured estimate of one CUDA context, plus the
models the runtime still lists on a CUDA device. A declared GPU has no NVML: the estimate
applies. Pure functions: the pool calls them under its lock.
"""

from __future__ import annotations

from owruntime.resident import Residency

from invoker.containerpool.container import SleepReport

MB = 1024 * 1024


def _ceil_mb(nbytes: int) -> int:
    return -(-nbytes // MB)  # integer arithmetic: a reported size never meets a float


def implausible(report: SleepReport, admitted_mb: int, memory_limit_mb: int) -> str | None:
    """Why ``report`` cannot be true of a container admitted with ``admitted_mb`` on its GPU and
    limited to ``memory_limit_mb`` of host memory; None when it adds up."""
    freed_gpu = report.freed_on_gpu()
    if freed_gpu > admitted_mb * MB:
        return f"freed {_ceil_mb(freed_gpu)} MB on its GPU, admitted with {admitted_mb} MB"
    freed_host = sum(n for device, n in report.freed.items() if not device.startswith("cuda"))
    for what, nbytes in (("a host copy of", report.host_bytes), ("freed host memory of", freed_host)):
        if nbytes > memory_limit_mb * MB:
            return f"{what} {_ceil_mb(nbytes)} MB, over its memory limit of {memory_limit_mb} MB"
    return None


def asleep_charge_mb(admitted_mb: int, report: SleepReport, residency: Residency, context_mb: int,
                     measured_mb: int | None = None) -> tuple[int, bool]:
    """What a container still holds on its GPU after ``report``'s sleep, in MB (rounded up),
    and whether that was measured (True) or estimated from ``context_mb`` (False). Between the
    floor (``measured_mb``, NVML's reading of its use, else the estimate) and ``admitted_mb``."""
    if measured_mb is not None:
        floor = measured_mb
    else:
        awake = sum(m.bytes for m in residency.models if m.device.startswith("cuda"))
        floor = context_mb + _ceil_mb(awake)
    floor = min(admitted_mb, floor)
    freed = report.freed_on_gpu()
    if freed > 0 and report.measured:
        held = admitted_mb - freed // MB  # freed rounded down: what is left, rounded up
        if held > floor:
            return min(admitted_mb, held), True
    return floor, measured_mb is not None


def expected_charge_mb(admitted_mb: int, context_mb: int) -> int:
    """What a container is expected to keep once a sleep under way ends: its context. The rest
    counts as on its way (a waiting job waits for it instead of evicting more)."""
    return min(admitted_mb, context_mb)


def host_mb(report: SleepReport, residency: Residency | None = None, memory_limit_mb: int | None = None) -> int:
    """Host memory the asleep models hold, in MB (rounded up; at least 1, a reservation): all the
    runtime lists asleep after the sleep (a model the last call did not use was still asleep
    from the sleep before, and is not in this report), else what the report says. Never more
    than the container's ``memory_limit_mb``: its memory limit is all it can hold."""
    listed = sum(m.host_bytes for m in residency.asleep) if residency is not None else 0
    held = max(1, _ceil_mb(max(listed, report.host_bytes)))
    return held if memory_limit_mb is None else min(held, max(1, memory_limit_mb))
