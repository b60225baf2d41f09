"""A/B of the warm path: ``bench/invoker_overhead.py`` of two trees, alternating, in one sitting.

Each tree runs its own bench (so a change to the bench itself is measured too), A then B,
``--rounds`` times; the result keeps every run and the medians, and B's medians over A's.

Run: ``.venv/bin/python bench/invoker_overhead_ab.py --base /path/to/old/checkout [--rounds 3]``
(``git worktree add --detach ../base <commit>`` makes one). Writes
``bench/results/invoker_overhead_ab_<label>.json`` with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("burst_per_second", "process_cpu_ms_per_activation", "overhead_ratio_p50",
           "publish_to_ack_p50_ms", "publish_to_ack_p99_ms")


def run_once(tree: Path, samples: int, burst: int) -> dict[str, float]:
    out = "ab_run.json"
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run([sys.executable, str(tree / "bench" / "invoker_overhead.py"), "--samples", str(samples),
                    "--burst", str(burst), "--out", out], cwd=tree, env=env, check=True, capture_output=True)
    path = tree / "bench" / "results" / out
    d = json.loads(path.read_text())
    path.unlink()
    return {
        "burst_per_second": round(d["burst"]["per_second"], 1),
        "process_cpu_ms_per_activation": round(d["burst"]["process_cpu_ms_per_activation"], 3),
        "overhead_ratio_p50": round(d["overhead_ratio_p50"], 3),
        "publish_to_ack_p50_ms": round(d["invoker_publish_to_ack_ms"]["p50"], 2),
        "publish_to_ack_p99_ms": round(d["invoker_publish_to_ack_ms"]["p99"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the A tree (a checkout of the old commit)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--label", default="latest")
    args = parser.parse_args()
    trees = {"base": args.base.resolve(), "main": ROOT}
    runs: dict[str, dict[str, list[float]]] = {name: {f: [] for f in FIGURES} for name in trees}
    loads = []
    for i in range(args.rounds):
        order = ("base", "main") if i % 2 == 0 else ("main", "base")  # neither always goes first
        for name in order:
            for figure, value in run_once(trees[name], args.samples, args.burst).items():
                runs[name][figure].append(value)
            loads.append(os.getloadavg()[0])
            print(name, {f: v[-1] for f, v in runs[name].items()}, flush=True)
    medians = {name: {f: statistics.median(v) for f, v in figures.items()} for name, figures in runs.items()}
    result = {
        "what": f"bench/invoker_overhead.py --samples {args.samples} --burst {args.burst}, each tree's own bench, "
                f"{args.rounds} rounds alternating which goes first, one sitting",
        "base": {**runs["base"], "medians": medians["base"]},
        "main": {**runs["main"], "medians": medians["main"]},
        "main_over_base": {f: round(medians["main"][f] / medians["base"][f], 3) for f in FIGURES},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_1min_after_runs": [round(x, 2) for x in loads]},
    }
    out = ROOT / "bench" / "results" / f"invoker_overhead_ab_{args.label}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["main_over_base"]))


if __name__ == "__main__":
    main()
