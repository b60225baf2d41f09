"""What the cluster is asked to do: a seeded function population and arrival times from the
Azure LLM inference trace (2023, CC-BY 4.0; Patel et al., "Splitwise", ISCA'24).

Arrivals: the two trace files (code and conversation, 28,185 requests over ~58.5 min) are
superposed into one base hour. To load a cluster, ``copies`` = offered rate × span / base size
copies of it are superposed, each rotated by its own seeded offset within the span (so bursts of
different copies do not line up), the last copy thinned to the fractional remainder. Each
arrival calls a function drawn by Zipf popularity. Everything streams: memory does not grow with
the number of arrivals.
"""

from __future__ import annotations

import bisect
import csv
import heapq
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sim.costs import MB, CostTable

TRACE_SUBDIR = Path("shared") / "traces" / "azure-llm-inference-2023"
TRACE_FILES = ("AzureLLMInferenceTrace_code.csv", "AzureLLMInferenceTrace_conv.csv")
SIZE_CLASSES_MB = (1024, 2048, 4096, 8192, 16384)  # action memory limits = GPU requests
NAMESPACE = "guest"


@dataclass(frozen=True)
class Function:
    name: str
    model_bytes: int
    passes: int  # forward passes per call (generated tokens of an LLM-like function)
    memory_mb: int  # limits.memory and the GPU request (one size class)
    warm_latency_s: float  # a warm call end to end: the SLO base

    @property
    def fqn(self) -> str:
        """``namespace/name``: what the controller hashes and the locality digest is taken of."""
        return f"{NAMESPACE}/{self.name}"


@dataclass(frozen=True)
class Trace:
    times: tuple[float, ...]  # seconds from the first request, sorted
    generated_tokens: tuple[int, ...]
    span_s: float


def find_trace_dir() -> Path | None:
    """``$SIM_TRACE_DIR``, else ``shared/traces/azure-llm-inference-2023`` beside the checkout
    (``../shared``) or beside its parent (a git worktree one level deeper); None if absent."""
    env = os.environ.get("SIM_TRACE_DIR")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parent.parent
    for base in (root.parent, root.parent.parent):
        if (base / TRACE_SUBDIR / TRACE_FILES[0]).is_file():
            return base / TRACE_SUBDIR
    return None


def load_trace(directory: Path | None = None) -> Trace:
    directory = directory or find_trace_dir()
    if directory is None:
        raise FileNotFoundError(f"no Azure LLM trace: set SIM_TRACE_DIR or put it in ../{TRACE_SUBDIR}")
    rows: list[tuple[datetime, int]] = []
    for name in TRACE_FILES:
        with open(directory / name, newline="") as handle:
            for row in csv.DictReader(handle):
                stamp = row["TIMESTAMP"][:26]  # 7 fractional digits; %f takes 6
                rows.append((datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f"), int(row["GeneratedTokens"])))
    rows.sort()
    first = rows[0][0]
    times = tuple((t - first).total_seconds() for t, _ in rows)
    return Trace(times, tuple(n for _, n in rows), times[-1] + 1e-6)


def size_class(request_mb: int) -> int:
    return next((c for c in SIZE_CLASSES_MB if c >= request_mb), SIZE_CLASSES_MB[-1])


@dataclass(frozen=True)
class Population:
    functions: tuple[Function, ...]
    cumulative: tuple[float, ...]  # Zipf weights, cumulative, normalised to 1

    def pick(self, rng: random.Random) -> Function:
        return self.functions[min(bisect.bisect_left(self.cumulative, rng.random()), len(self.functions) - 1)]


def make_function(name: str, model_bytes: int, passes: int, costs: CostTable) -> Function:
    memory = size_class(costs.gpu_request_mb(model_bytes))
    return Function(name, model_bytes, passes, memory, costs.warm_latency_s(model_bytes, passes))


def make_population(n: int, costs: CostTable, trace: Trace, seed: int, zipf_s: float = 1.0,
                    min_model_mb: float = 5.0, max_model_mb: float = 6144.0,
                    generative_from_mb: float = 1024.0, max_passes: int = 64) -> Population:
    """``n`` functions, model sizes log-uniform from a small CNN (``min_model_mb``) to a few GB;
    functions with a model of ``generative_from_mb`` or more generate tokens: their passes per
    call are one trace request's GeneratedTokens (capped), drawn once per function."""
    rng = random.Random(seed)
    functions = []
    for i in range(n):
        model_bytes = int(math.exp(rng.uniform(math.log(min_model_mb), math.log(max_model_mb))) * MB)
        passes = 1
        if model_bytes >= generative_from_mb * MB:
            passes = max(1, min(max_passes, rng.choice(trace.generated_tokens)))
        functions.append(make_function(f"fn{i:05d}", model_bytes, passes, costs))
    ranks = list(range(1, n + 1))
    rng.shuffle(ranks)  # popularity independent of size
    weights = [1.0 / r**zipf_s for r in ranks]
    total = sum(weights)
    cumulative, acc = [], 0.0
    for w in weights:
        acc += w / total
        cumulative.append(acc)
    return Population(tuple(functions), tuple(cumulative))


def arrival_times(trace: Trace, rate_per_s: float, seed: int, duration_s: float | None = None) -> Iterator[float]:
    """Sorted arrival times for an offered ``rate_per_s`` (see the module docstring), up to
    ``duration_s`` (default: the trace's span)."""
    span = trace.span_s
    end = span if duration_s is None else min(duration_s, span)
    copies = rate_per_s * span / len(trace.times)
    rng = random.Random(seed)
    streams = []
    for k in range(math.ceil(copies)):
        keep = min(1.0, copies - k)
        streams.append(_rotated(trace.times, span, rng.uniform(0, span), keep, random.Random(rng.random())))
    for t in heapq.merge(*streams):
        if t >= end:
            return
        yield t


def _rotated(times: tuple[float, ...], span: float, shift: float, keep: float, rng: random.Random) -> Iterator[float]:
    cut = bisect.bisect_left(times, span - shift)  # times from here on wrap to the start
    for i in range(cut, len(times)):
        if keep >= 1.0 or rng.random() < keep:
            yield times[i] + shift - span
    for i in range(cut):
        if keep >= 1.0 or rng.random() < keep:
            yield times[i] + shift
