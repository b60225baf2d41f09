"""Per-policy results in bounded memory: a log-bucketed latency histogram (percentiles to
within 1 %), counters, and time-averaged GPU memory, never one record per call."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

_LOW_S = 1e-4
_RATIO = 1.01
_LOG_RATIO = math.log(_RATIO)
_BINS = int(math.log(1e4 / _LOW_S) / _LOG_RATIO) + 2


@dataclass
class LatencyHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * _BINS)
    n: int = 0
    total_s: float = 0.0
    max_s: float = 0.0

    def add(self, seconds: float) -> None:
        index = 0 if seconds <= _LOW_S else min(_BINS - 1, int(math.log(seconds / _LOW_S) / _LOG_RATIO) + 1)
        self.counts[index] += 1
        self.n += 1
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)

    def percentile(self, q: float) -> float:
        """The upper edge of the bucket holding the q-quantile (at most 1 % above the true value)."""
        if self.n == 0:
            return float("nan")
        rank = max(1, math.ceil(q / 100 * self.n))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(self.max_s, _LOW_S * _RATIO**index)
        return self.max_s


@dataclass
class PolicyStats:
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    arrivals: int = 0
    completed: int = 0
    duplicates: int = 0
    failed: int = 0  # activations that did not succeed (status != 0)
    paid_init: int = 0  # calls that ran /init: a new container or a stem cell
    slo_met: int = 0
    forced: int = 0  # the controller found no invoker with room (OpenWhisk's overload path)
    gpu_memory_samples: int = 0
    gpu_committed_sum: float = 0.0  # committed / capacity, summed over samples
    gpu_resident_sum: float = 0.0  # resident model bytes / capacity, summed over samples
    live_containers_peak: int = 0

    def sample_gpu(self, committed_fraction: float, resident_fraction: float, live: int) -> None:
        self.gpu_memory_samples += 1
        self.gpu_committed_sum += committed_fraction
        self.gpu_resident_sum += resident_fraction
        self.live_containers_peak = max(self.live_containers_peak, live)
