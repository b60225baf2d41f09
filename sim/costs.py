"""The one cost table the simulated containers charge, each figure with where it comes from.

Sources are this project's measurements (``bench/results/*.json``, CPU machine, podman) or
public GPU figures, each named in its source text (not measured here). A figure with
neither says ``assumption`` and why: those are the first to replace with a GPU measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

MB = 1024 * 1024
GB = 1024 * MB


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str
    source: str


@dataclass(frozen=True)
class CostTable:
    container_create: Figure = Figure(
        0.2197, "s", "bench/results/container_backends.json: docker create_ms p50 219.7 (podman, 2 cores)")
    runtime_init: Figure = Figure(
        0.1043, "s", "bench/results/container_backends.json: docker init_ms p50 104.3 (/init of an action)")
    run_overhead: Figure = Figure(
        0.00036, "s", "bench/results/container_backends.json: docker warm_run_ms p50 0.361 (/run round trip)")
    resume: Figure = Figure(
        0.0144, "s", "bench/results/container_backends.json: docker resume_and_run_ms p50 14.73 - warm_run 0.36")
    destroy: Figure = Figure(
        0.3742, "s", "bench/results/container_backends.json: docker destroy_ms p50 374.2")
    dispatch_round_trip: Figure = Figure(
        0.01094, "s", "bench/results/invoker_overhead.json: floor_parts_p50_ms.kafka_round_trip 10.94 "
        "(controller -> invoker{N} -> completed{C}; embedded broker)")
    framework_import: Figure = Figure(
        2.386, "s", "bench/results/image_classifier_cpu_1thread.json: torch cold - stem_cell total_s medians "
        "(12.450 - 10.065): what a stem cell has already paid (2 loaded cores)")
    cuda_context: Figure = Figure(
        0.5, "s", "cuInit 'about 500 ms for a normal GPU' (context creation alone 125-150 ms)")
    context_memory_mb: Figure = Figure(
        287, "MB", "CUDA context 287 MB with lazy module loading (pytorch PR #86509)")
    cold_load_bandwidth: Figure = Figure(
        0.51e9, "B/s", "a naive loader end to end, 18 GB bf16 CPU->GPU in 35 s (FLUX.2 on Modal)")
    pinned_h2d_bandwidth: Figure = Figure(
        50e9, "B/s", "~50-55 GB/s practical pinned H2D ceiling per H100/H200 (PCIe 5.0 x16)")
    gpu_memory_mb: Figure = Figure(
        81559, "MB", "assumption: an 80 GB H100, the GPU the host-link figure above is for; 81,559 MiB is "
        "what NVML reports for one (not measured here)")
    mps_server_memory_mb: Figure = Figure(
        418, "MB", "the MPS server process holds ~418 MiB per GPU (nvidia-docker #868)")
    mps_clients: Figure = Figure(
        48, "contexts", "48 MPS client contexts per device (Volta+, up to CUDA 13.0)")
    forward_bandwidth: Figure = Figure(
        2.0e12, "B/s", "assumption, not measured: a memory-bound forward pass reads its weights once at "
        "~2 TB/s (60 % of an H100's HBM3 peak)")
    forward_floor: Figure = Figure(
        0.002, "s", "assumption, not measured: ~2 ms launch-bound floor of a small CNN forward pass")
    workspace_factor: Figure = Figure(
        1.2, "x weights", "assumption: activations and allocator slack 20 % above the weights")

    # ------------------------------------------------------------------ derived costs

    def forward_s(self, model_bytes: int, passes: int) -> float:
        """GPU time of one call at full speed: ``passes`` forward passes of the model."""
        return passes * max(self.forward_floor.value, model_bytes / self.forward_bandwidth.value)

    def warm_run_s(self, model_bytes: int, passes: int) -> float:
        """A warm call inside the invoker: the /run round trip plus the forward passes."""
        return self.run_overhead.value + self.forward_s(model_bytes, passes)

    def warm_latency_s(self, model_bytes: int, passes: int) -> float:
        """A warm call as the caller sees it: dispatch round trip plus the warm run (the SLO base)."""
        return self.dispatch_round_trip.value + self.warm_run_s(model_bytes, passes)

    def warm_up_s(self) -> float:
        """What a GPU stem cell pays before it is ready: framework import and CUDA context."""
        return self.framework_import.value + self.cuda_context.value

    def cold_load_s(self, model_bytes: int) -> float:
        """Weights from storage into GPU memory on a container's first call."""
        return model_bytes / self.cold_load_bandwidth.value

    def wake_from_host_s(self, model_bytes: int) -> float:
        """A model asleep in pinned host memory back on the GPU (GPU sleep): the copy at pinned
        bandwidth. Charged by ``SimContainer.wake`` once the pool can put containers to sleep."""
        return model_bytes / self.pinned_h2d_bandwidth.value

    def gpu_request_mb(self, model_bytes: int) -> int:
        """GPU memory to admit a container of this model for: context plus weights with workspace."""
        need = self.context_memory_mb.value + self.workspace_factor.value * model_bytes / MB
        return int(math.ceil(need))

    def rows(self) -> list[dict]:
        """The table as printed beside the results."""
        return [{"name": f.name, "value": getattr(self, f.name).value, "unit": getattr(self, f.name).unit,
                 "source": getattr(self, f.name).source} for f in fields(self)]
