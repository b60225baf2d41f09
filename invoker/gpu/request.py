"""An action's GPU request: how much GPU memory it may use and which share of the SMs.

The request is the action annotation ``gpu``, a JSON object::

    {"memory": "4 GB", "sm": 25}

* ``memory`` — GPU memory the action's container may allocate (CUDA context included):
  a size (``"4 GB"``, ``"4096 MB"``, ``"1.5 GiB"``) or a number of megabytes. It is what
  the invoker admits against the GPU and what MPS enforces
  (``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``). Default: the action's memory limit
  (``limits.memory``), the one size an OpenWhisk user already sets.
* ``sm`` — percentage of the GPU's streaming multiprocessors the container may use
  (``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``), 1–100. Default: the request's share of the
  GPU's memory, rounded up, at least ``MIN_SM_PERCENT`` — as NVIDIA's device plugin
  derives both from one replica count.

Units: ``K``/``M``/``G`` with or without ``B`` or ``iB`` are binary (1 GB = 1024 MB), as
in OpenWhisk's own ``ByteSize``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from invoker.errors import GpuRequestError

ANNOTATION = "gpu"
MIN_SM_PERCENT = 10
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)
_FACTOR_MB = {"": 1 / 1024**2, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}


def parse_size_mb(value: Any, bare_unit: str = "M") -> int:
    """``"4 GB"``, ``"80GiB"``, ``"512m"``, ``4096`` → megabytes. A bare number is in
    ``bare_unit`` (megabytes unless told)."""
    if isinstance(value, bool):
        raise GpuRequestError(f"not a size: {value!r}")
    if isinstance(value, int | float):
        value = f"{value}{bare_unit}"
    if not isinstance(value, str):
        raise GpuRequestError(f"not a size: {value!r}")
    match = _SIZE.fullmatch(value)
    if match is None:
        raise GpuRequestError(f"not a size: {value!r} (write e.g. \"4 GB\" or \"512 MB\")")
    number, unit = float(match.group(1)), match.group(2).upper()
    if not unit and not value.strip().upper().endswith("B"):
        unit = bare_unit
    return int(number * _FACTOR_MB[unit])


@dataclass(frozen=True)
class GpuRequest:
    """What one container of the action needs from its GPU. ``sm_percent`` None: not
    given, derived from the GPU it lands on (``sm_on``)."""

    memory_mb: int
    sm_percent: int | None = None

    def sm_on(self, gpu_memory_mb: int) -> int:
        if self.sm_percent is not None:
            return self.sm_percent
        share = math.ceil(100 * self.memory_mb / max(gpu_memory_mb, 1))
        return max(MIN_SM_PERCENT, min(100, share))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"memory": f"{self.memory_mb} MB"}
        if self.sm_percent is not None:
            out["sm"] = self.sm_percent
        return out


def parse_request(annotation: Any, memory_limit_mb: int) -> GpuRequest:
    """The request of an action from its ``gpu`` annotation (None: all defaults)."""
    if annotation is None or annotation is True:
        return GpuRequest(memory_mb=memory_limit_mb)
    if not isinstance(annotation, dict):
        raise GpuRequestError(
            f'the "gpu" annotation must be an object like {{"memory": "4 GB", "sm": 25}}, not {annotation!r}'
        )
    unknown = set(annotation) - {"memory", "sm"}
    if unknown:
        raise GpuRequestError(f'the "gpu" annotation has unknown fields {sorted(unknown)}: use "memory" and "sm"')
    memory = memory_limit_mb
    if annotation.get("memory") is not None:
        memory = parse_size_mb(annotation["memory"])
        if memory < 1:
            raise GpuRequestError(f'"gpu" memory must be at least 1 MB, not {annotation["memory"]!r}')
    sm = annotation.get("sm")
    if sm is not None:
        if isinstance(sm, bool) or not isinstance(sm, int | float) or not 1 <= sm <= 100:
            raise GpuRequestError(f'"gpu" sm must be a percentage from 1 to 100, not {sm!r}')
        sm = int(sm)
    return GpuRequest(memory_mb=memory, sm_percent=sm)


RESOURCES_ANNOTATION = "invoker-resources"
GPU_TAG = "gpu"


def is_gpu_kind(kind: str) -> bool:
    """A GPU kind (``python:3-gpu``), as in the manifest."""
    return kind.strip().lower().endswith("-gpu")


def needs_gpu(kind: str, invoker_resources: Any) -> bool:
    """Whether an action is GPU work: a GPU kind, or an ``invoker-resources`` annotation (the
    FPC scheduler's, a list of strings) naming ``gpu``. The controller patch routes by the same
    rule (``GpuRouting.requiresGpu``), so what lands on a GPU invoker gets a GPU."""
    if is_gpu_kind(kind):
        return True
    return isinstance(invoker_resources, list) and GPU_TAG in invoker_resources
