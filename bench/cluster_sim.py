"""The three controller policies side by side on a simulated GPU cluster running the real pool.

    python bench/cluster_sim.py --gpus 10 100 1000 [--rate-per-gpu 0.5] [--duration 3600]
        [--ladder 10] [--out bench/results/cluster_sim.json]

For each cluster size N: offered load = N x ``--rate-per-gpu`` calls/s from the Azure LLM
trace (sim/workload.py), 2,000 functions (Zipf 1.0, models 5 MB - 6 GB), each policy run on the
same arrivals. ``--ladder N``: the same offered load as size N run on 0.5N, N, 2N, 4N GPUs, for
"GPUs needed". The cost table is written beside the results. Needs the trace
(``$SIM_TRACE_DIR``; sim/README.md says where to get it) and ``greenlet`` (extra ``sim``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "runtimes" / "python")]

from sim.cluster import Cluster, ClusterConfig, MembershipChange  # noqa: E402
from sim.costs import CostTable  # noqa: E402
from sim.policies import POLICIES  # noqa: E402
from sim.workload import arrival_times, load_trace, make_population  # noqa: E402

LADDER = (0.5, 1, 2, 4)


def run_one(gpus: int, policy: str, rate: float, duration: float | None, args: argparse.Namespace,
            costs: CostTable, population, trace) -> dict:
    config = ClusterConfig(gpus=gpus, gpus_per_node=args.gpus_per_node, slo_factor=args.slo_factor, seed=args.seed,
                           host_memory_per_gpu_mb=args.slots_per_gpu_mb, advertise_limit=args.advertise_limit)
    cluster = Cluster(config, policy, population, costs)
    change = None
    if args.change_at is not None:
        change = MembershipChange(at_s=args.change_at, add_nodes=args.add_nodes, fail=tuple(args.fail))
        cluster.change_at(change)
    result = cluster.run(arrival_times(trace, rate, seed=args.seed + 1, duration_s=duration))
    out = result.summary()
    out["offered_per_s"] = rate
    out["duration_s"] = duration
    out["slots_per_gpu_mb"] = args.slots_per_gpu_mb
    out["advertise_limit"] = args.advertise_limit
    if change is not None:
        out["membership_change"] = {"at_s": change.at_s, "add_nodes": change.add_nodes, "fail": list(change.fail),
                                    "window_s": change.window_s, "nodes_after": len(cluster.invokers)}
    # The process's peak so far: runs are sequential in one process, so a run after a larger one shows that one's.
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({k: out.get(k) for k in ("policy", "gpus", "completed", "p50_ms", "p99_ms", "cold_start_share",
                                              "slo_attainment", "gpu_memory_committed", "wall_seconds",
                                              "events_per_second", "max_rss_mb", "after_change")}), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="*", default=[10, 100])
    parser.add_argument("--policies", nargs="*", default=list(POLICIES))
    parser.add_argument("--rate-per-gpu", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=None, help="seconds of trace (default: all of it)")
    parser.add_argument("--duration-for", type=str, nargs="*", default=[],
                        help="per-size durations, e.g. 1000=600: a shorter slice for the largest cluster")
    parser.add_argument("--ladder", type=int, nargs="*", default=[], help="sizes whose load is run at 0.5-4x the GPUs")
    parser.add_argument("--functions", type=int, default=2000)
    parser.add_argument("--slots-per-gpu-mb", type=int, default=ClusterConfig.host_memory_per_gpu_mb,
                        help="invoker user memory per GPU: the controller's slots (default: the GPU's memory)")
    parser.add_argument("--label", default="", help="suffix of the result keys (another scenario, same sizes)")
    parser.add_argument("--change-at", type=float, default=None,
                        help="seconds of trace at which the invokers change (--add-nodes, --fail)")
    parser.add_argument("--add-nodes", type=int, default=0, help="nodes joining at --change-at (N changes)")
    parser.add_argument("--fail", type=int, nargs="*", default=[], help="invoker indexes failing at --change-at")
    parser.add_argument("--advertise-limit", type=int, default=ClusterConfig.advertise_limit,
                        help="held-model digests per ping (locality; the invoker's MAX_HELD)")
    parser.add_argument("--gpus-per-node", type=int, default=4)
    parser.add_argument("--slo-factor", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cluster_sim.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the pools log every eviction at INFO

    costs = CostTable()
    trace = load_trace()
    population = make_population(args.functions, costs, trace, seed=args.seed)
    durations = {int(k): float(v) for k, v in (item.split("=") for item in args.duration_for)}
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    results = {str(k): v for k, v in previous.get("results", {}).items()}
    ladders = dict(previous.get("gpus_needed", {}))
    for gpus in args.gpus:
        duration = durations.get(gpus, args.duration)
        results[f"{gpus}{args.label}"] = {policy: run_one(gpus, policy, gpus * args.rate_per_gpu, duration, args, costs,
                                              population, trace) for policy in args.policies}
    for nominal in args.ladder:
        rate = nominal * args.rate_per_gpu
        duration = durations.get(nominal, args.duration)
        rungs = {}
        for factor in LADDER:
            size = max(1, round(nominal * factor))
            rungs[str(size)] = {p: run_one(size, p, rate, duration, args, costs, population, trace)["slo_attainment"]
                                for p in args.policies}
        ladders[f"{nominal}{args.label}"] = {"offered_per_s": rate, "slo_attainment_by_gpus": rungs,
                                 "gpus_needed": _needed(rungs, args.policies)}
    report = {
        "benchmark": "cluster_sim",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "workload": {"trace": "Azure LLM inference 2023 (code + conv superposed), CC-BY 4.0",
                     "functions": args.functions, "zipf_s": 1.0, "model_mb": [5, 6144],
                     "rate_per_gpu": args.rate_per_gpu, "durations_s": {str(g): durations.get(g, args.duration)
                                                                        for g in args.gpus},
                     "slo": f"latency <= {args.slo_factor} x the function's warm latency",
                     "gpus_per_node": args.gpus_per_node, "seed": args.seed},
        "gpus_needed_rule": ("smallest rung of 0.5N, N, 2N, 4N GPUs (same offered load) whose SLO attainment is "
                             "within 1 % of the 4N rung's: the 4N rung's misses are compulsory (first calls, "
                             "calls after the 10-minute keep-alive), no GPU count removes them; null: only the "
                             "4N rung itself qualifies, attainment still rising (more than 2N needed)"),
        "cost_table": costs.rows(),
        "results": results,
        "gpus_needed": ladders,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def _needed(rungs: dict[str, dict[str, float]], policies: list[str]) -> dict[str, int | None]:
    sizes = sorted(rungs, key=int)
    out: dict[str, int | None] = {}
    for policy in policies:
        ceiling = rungs[sizes[-1]][policy]
        found = next(int(s) for s in sizes if rungs[s][policy] >= 0.99 * ceiling)
        # Only the top rung: attainment still rising, the ladder did not find the plateau.
        out[policy] = None if found == int(sizes[-1]) else found
    return out


if __name__ == "__main__":
    sys.exit(main())
