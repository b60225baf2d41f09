"""Issue #20's density figure, simulated: one GPU, many functions, GPU sleep on and off.

    python bench/gpu_sleep_density_sim.py [--functions 200] [--rate 0.5 1 2] [--duration 3600]
        [--host-budget-mb 8192 65536] [--out bench/results/gpu_sleep_density_sim.json]

One simulated invoker with one 80 GB GPU (sim/, the real pool and GPU layer on simulated
time) serves ``--functions`` distinct functions, Zipf(1.0) popular, models 5 MB - 6 GB (their
requests, 1-8 GB each, add up to far more than the GPU), arrivals from the Azure LLM trace at
each ``--rate`` in calls/s. The same arrivals (same functions, same times) run with GPU sleep off, then
on with each host budget for asleep models: the share of calls served without a cold start
(/init), p50/p99 latency, SLO attainment, sleeps, wakes, removals. Simulated, not measured on a
GPU: every cost is in the cost table written beside the results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "runtimes" / "python")]

from sim.cluster import Cluster, ClusterConfig  # noqa: E402
from sim.costs import CostTable  # noqa: E402
from sim.workload import arrival_times, load_trace, make_population  # noqa: E402


def run_one(rate: float, sleep: bool, budget_mb: int, args: argparse.Namespace, costs: CostTable, population, trace) -> dict:
    config = ClusterConfig(gpus=1, gpus_per_node=1, host_memory_per_gpu_mb=args.host_memory_mb,
                           sleep_on_pressure=sleep, sleep_host_budget_mb=budget_mb, seed=args.seed)
    result = Cluster(config, "classic", population, costs).run(
        arrival_times(trace, rate, seed=args.seed + 1, duration_s=args.duration))
    s = result.summary()
    out = {"offered_per_s": rate, "sleep_on_pressure": sleep, "sleep_host_budget_mb": budget_mb if sleep else None,
           "calls": s["completed"], "unfinished": s["unfinished"], "errors": s["errors"],
           "served_without_cold_start": round(1 - s["cold_start_share"], 4),
           "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "mean_ms": s["mean_ms"],
           "slo_attainment": s["slo_attainment"],
           "sleeps": s["gpu_sleeps"], "wakes": s["gpu_wakes"], "removals_for_gpu_memory": s["gpu_evictions"],
           "waits_for_gpu_memory": s["gpu_waits"], "containers_created": s["containers_created"],
           "cold_starts": s["cold_starts"], "stem_cell_starts": s["prewarm_starts"], "warm_starts": s["warm_starts"],
           "gpu_memory_committed": s["gpu_memory_committed"], "gpu_memory_resident": s["gpu_memory_resident"],
           "live_containers_peak": s["live_containers_peak"], "wall_seconds": s["wall_seconds"]}
    print(json.dumps(out), flush=True)
    return out


def compulsory_share(rate: float, args: argparse.Namespace, population, trace) -> float:
    """Calls no amount of GPU memory saves from /init: a function's first call, or one more than the
    keep-alive after its previous call (the same draws as the cluster's: its rng, seeded alike)."""
    rng, last, cold, n = random.Random(args.seed), {}, 0, 0
    for t in arrival_times(trace, rate, seed=args.seed + 1, duration_s=args.duration):
        name = population.pick(rng).name
        cold += name not in last or t - last[name] > ClusterConfig.idle_timeout_s
        last[name] = t
        n += 1
    return round(cold / max(1, n), 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=200)
    parser.add_argument("--rate", type=float, nargs="*", default=[0.5, 1.0, 2.0], help="offered calls/s on the one GPU")
    parser.add_argument("--duration", type=float, default=None, help="seconds of trace (default: all of it)")
    parser.add_argument("--max-model-mb", type=float, default=6144.0)
    parser.add_argument("--host-memory-mb", type=int, default=256 * 1024,
                        help="the invoker's user memory (host): large, so that GPU memory is the constraint")
    parser.add_argument("--host-budget-mb", type=int, nargs="*", default=[8192, 65536],
                        help="GpuSettings.sleep_host_budget_mb values to run with sleep on (8192: the default)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_sleep_density_sim.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    costs = CostTable()
    trace = load_trace()
    population = make_population(args.functions, costs, trace, seed=args.seed, max_model_mb=args.max_model_mb)
    requests_mb = sum(f.memory_mb for f in population.functions)
    runs, compulsory = [], {}
    for rate in args.rate:
        compulsory[str(rate)] = compulsory_share(rate, args, population, trace)
        runs.append(run_one(rate, False, 0, args, costs, population, trace))
        runs += [run_one(rate, True, budget, args, costs, population, trace) for budget in args.host_budget_mb]
    report = {
        "benchmark": "gpu_sleep_density_sim",
        "simulated": "simulated, not measured on a GPU: sim/ runs the real ContainerPool and GpuLayer on simulated "
                     "time with simulated containers whose costs are the cost table below",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg()},
        "workload": {"trace": "Azure LLM inference 2023 (code + conv superposed), CC-BY 4.0",
                     "functions": args.functions, "zipf_s": 1.0, "model_mb": [5, args.max_model_mb],
                     "gpu_requests_total_mb": requests_mb, "gpu_memory_mb": costs.gpu_memory_mb.value,
                     "offered_per_s": args.rate, "mps_clients_per_gpu": costs.mps_clients.value, "duration_s": args.duration, "host_memory_mb": args.host_memory_mb,
                     "keep_alive_s": ClusterConfig.idle_timeout_s, "seed": args.seed,
                     "policy": "one invoker (classic routing is moot)"},
        "compulsory_cold_share_by_rate": compulsory,
        "cost_table": costs.rows(),
        "runs": runs,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
