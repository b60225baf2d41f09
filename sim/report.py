"""The README tables of ``bench/results/cluster_sim.json``: ``python -m sim.report [file] [--membership]``
(the membership-change table alone), or of ``gpu_sleep_density_sim.json`` given as the file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent / "bench" / "results" / "cluster_sim.json"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def markdown(report: dict, membership: bool = False) -> str:
    """The results, GPUs-needed and cost tables; ``membership``: the membership-change table alone."""
    lines = ["| scenario | policy | calls | p50 | p99 | cold-start share | SLO met | GPU memory committed "
             "(resident) | wall s | events/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    changes = []
    for scenario, by_policy in report["results"].items():
        for policy, r in by_policy.items():
            if "after_change" in r:
                changes.append((scenario, policy, r))
                continue
            minutes = (r.get("duration_s") or 3513) / 60
            lines.append(
                f"| {r['gpus']} GPUs ({r['nodes']} nodes), {r['offered_per_s']:g}/s, {minutes:.0f} min"
                f"{', ' + scenario.lstrip('0123456789-') if not scenario.isdigit() else ''}"
                f"{' (before GPU sleep)' if r.get('measured_before_gpu_sleep') else ''} | {policy} | "
                f"{r['completed']:,} | {r['p50_ms']:,.0f} ms | {r['p99_ms']:,.0f} ms | {_pct(r['cold_start_share'])} | "
                f"{_pct(r['slo_attainment'])} | {_pct(r['gpu_memory_committed'])} "
                f"({_pct(r['gpu_memory_resident']) if 'gpu_memory_resident' in r else 'n/a'}) | "
                f"{r['wall_seconds']:,.0f} | {r['events_per_second']:,} |")
    out = "\n".join(lines)
    if changes:
        rows = ["| membership change at minute 30 | policy | calls in the 10 min after | cold-start share: 10 min after "
                "/ whole run | SLO met: 10 min after / whole run | p99: 10 min after / whole run |",
                "|---|---|---|---|---|---|"]
        for _scenario, policy, r in changes:
            w, c = r["after_change"], r.get("membership_change", {})
            what = (f"{c['add_nodes']} nodes join ({r['nodes'] - c['add_nodes']} -> {r['nodes']})" if c.get("add_nodes")
                    else f"invoker {', '.join(map(str, c['fail']))} fails" if c.get("fail") else "none (same run, no change)")
            if r.get("advertise_limit", 32) != 32:
                what += f", {r['advertise_limit']} held models per ping"
            rows.append(f"| {r['gpus']} GPUs, {r['offered_per_s']:g}/s: {what} | {policy} | {w['completed']:,} | "
                        f"{_pct(w['cold_start_share'])} / {_pct(r['cold_start_share'])} | "
                        f"{_pct(w['slo_attainment'])} / {_pct(r['slo_attainment'])} | "
                        f"{w['p99_ms']:,.0f} ms / {r['p99_ms']:,.0f} ms |")
        if membership:
            return "\n".join(rows)
    if membership:
        return ""
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


def density_markdown(report: dict) -> str:
    """The table of ``bench/results/gpu_sleep_density_sim.json``."""
    rows = ["| offered | GPU sleep (host budget) | served without cold start | p50 | p99 | SLO met | sleeps | wakes "
            "| removals for GPU memory | containers peak |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        sleep = f"on ({r['sleep_host_budget_mb'] // 1024} GB)" if r["sleep_on_pressure"] else "off"
        rows.append(f"| {r['offered_per_s']:g}/s | {sleep} | {_pct(r['served_without_cold_start'])} | "
                    f"{r['p50_ms']:,.0f} ms | {r['p99_ms']:,.0f} ms | {_pct(r['slo_attainment'])} | {r['sleeps']:,} | "
                    f"{r['wakes']:,} | {r['removals_for_gpu_memory']:,} | {r['live_containers_peak']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--membership"]
    loaded = json.loads(Path(args[0] if args else DEFAULT).read_text())
    if loaded.get("benchmark") == "gpu_sleep_density_sim":
        print(density_markdown(loaded))
    else:
        print(markdown(loaded, membership="--membership" in sys.argv))
