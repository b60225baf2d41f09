"""The README tables of ``bench/results/cluster_sim.json``: ``python -m sim.report [file]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent / "bench" / "results" / "cluster_sim.json"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def markdown(report: dict) -> str:
    lines = ["| scenario | policy | calls | p50 | p99 | cold-start share | SLO met | GPU memory committed "
             "(resident) | wall s | events/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for scenario, by_policy in report["results"].items():
        for policy, r in by_policy.items():
            minutes = (r.get("duration_s") or 3513) / 60
            lines.append(
                f"| {r['gpus']} GPUs ({r['nodes']} nodes), {r['offered_per_s']:g}/s, {minutes:.0f} min"
                f"{', ' + scenario.lstrip('0123456789-') if not scenario.isdigit() else ''} | {policy} | "
                f"{r['completed']:,} | {r['p50_ms']:,.0f} ms | {r['p99_ms']:,.0f} ms | {_pct(r['cold_start_share'])} | "
                f"{_pct(r['slo_attainment'])} | {_pct(r['gpu_memory_committed'])} "
                f"({_pct(r['gpu_memory_resident']) if 'gpu_memory_resident' in r else 'n/a'}) | "
                f"{r['wall_seconds']:,.0f} | {r['events_per_second']:,} |")
    out = "\n".join(lines)
    if report.get("gpus_needed"):
        rows = ["| offered load of | policy | SLO met on 0.5N / N / 2N / 4N GPUs | GPUs needed |", "|---|---|---|---|"]
        for nominal, ladder in report["gpus_needed"].items():
            rungs = ladder["slo_attainment_by_gpus"]
            sizes = sorted(rungs, key=int)
            for policy, needed in ladder["gpus_needed"].items():
                met = " / ".join(f"{_pct(rungs[s][policy])} ({s})" for s in sizes)
                shown = needed if needed is not None else f"> {sizes[-2]} (still rising at {sizes[-1]})"
                rows.append(f"| {nominal} GPUs ({ladder['offered_per_s']:g}/s) | {policy} | {met} | {shown} |")
        out += "\n\n" + "\n".join(rows)
    costs = ["| cost | value | source |", "|---|---|---|"]
    for row in report["cost_table"]:
        value = row["value"]
        shown = f"{value / 1e9:g} GB/s" if row["unit"] == "B/s" else f"{value:g} {row['unit']}"
        costs.append(f"| `{row['name']}` | {shown} | {row['source']} |")
    return out + "\n\n" + "\n".join(costs)


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else DEFAULT).read_text())))
