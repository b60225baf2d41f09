"""Small simulated clusters for tests: synthetic arrivals, no trace file needed."""

from __future__ import annotations

import random

from sim.cluster import Cluster, ClusterConfig, RunResult
from sim.costs import MB, CostTable
from sim.workload import Population, Trace, make_population


def synthetic_trace(n: int = 400, span_s: float = 300.0, seed: int = 3) -> Trace:
    rng = random.Random(seed)
    times = tuple(sorted(rng.uniform(0, span_s) for _ in range(n)))
    return Trace(times, tuple(rng.randint(1, 200) for _ in range(n)), span_s)


def population(n: int = 60, seed: int = 5, max_model_mb: float = 6144.0) -> Population:
    return make_population(n, CostTable(), synthetic_trace(), seed=seed, max_model_mb=max_model_mb)


def poisson(rate: float, duration_s: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    t, out = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return out
        out.append(t)


class Recording(Cluster):
    """A cluster that also keeps every call's latency (tests only: the real one keeps a histogram)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, float, bool]] = []  # (function, latency, paid /init)

    def completed(self, job, activation) -> None:
        entry = self._inflight.get(job.msg.activation_id)
        super().completed(job, activation)
        if entry is not None:
            init = any(key == "initTime" for key, _ in activation.annotations)
            self.calls.append((entry[1].name, self.kernel.now + self.one_way_s - entry[0], init))


def run(gpus: int, policy: str, pop: Population, arrivals, costs: CostTable | None = None,
        **config) -> RunResult:
    cluster = Cluster(ClusterConfig(gpus=gpus, **config), policy, pop, costs or CostTable())
    return cluster.run(iter(arrivals))


__all__ = ["MB", "Recording", "poisson", "population", "run", "synthetic_trace"]
