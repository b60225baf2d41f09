"""The two container backends side by side: what a cold start, a warm run and a
pause/resume cost on each, measured interleaved in one run (this machine is noisy).

Per round and backend: create (``docker run`` of the runtime image / ``Popen`` of the
runtime), ``/init`` until answered (includes the runtime's start-up), the first ``/run``,
``--warm`` more ``/run`` calls, then suspend + resume + one ``/run``, then destroy.
Both backends run the same runtime code; the difference is the container.

Run (needs a Docker API at DOCKER_HOST, e.g. after ``./dev setup``):
``.venv/bin/python bench/container_backends.py [--rounds 20] [--warm 200]``.
Writes ``bench/results/container_backends.json`` with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from invoker.containerpool.container import Container, ContainerFactory, ContainerSpec
from invoker.containerpool.docker import DockerContainerFactory
from invoker.containerpool.process import ProcessContainerFactory

RESULTS = Path(__file__).parent / "results"
IMAGE = "owgpu/action-python-v3:latest"
NOOP = {"name": "noop", "main": "main", "binary": False, "env": {}, "code": "def main(args):\n    return args\n"}


def _docker_host() -> str:
    """``DOCKER_HOST`` with this checkout's path left out: results name no machine's paths."""
    root = str(Path(__file__).resolve().parent.parent)
    return os.environ.get("DOCKER_HOST", "").replace(root, "<checkout>")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def one_round(factory: ContainerFactory, name: str, warm: int) -> dict[str, float | list[float]]:
    spec = ContainerSpec(name=name, kind="python:3", image=IMAGE, memory_mb=256, cpu_shares=256)
    t0 = time.perf_counter()
    container: Container = factory.create(spec)
    created = ms(t0)
    t1 = time.perf_counter()
    assert container.initialize(NOOP, 60).ok
    init = ms(t1)
    t2 = time.perf_counter()
    assert container.run({"value": {"n": 0}}, 30).ok
    first_run = ms(t2)
    warm_runs = []
    for n in range(warm):
        t = time.perf_counter()
        assert container.run({"value": {"n": n}}, 30).ok
        warm_runs.append(ms(t))
    t3 = time.perf_counter()
    container.suspend()
    suspend = ms(t3)
    t4 = time.perf_counter()
    container.resume()
    assert container.run({"value": {"n": -1}}, 30).ok
    resume_and_run = ms(t4)
    t5 = time.perf_counter()
    container.destroy()
    destroy = ms(t5)
    return {"create_ms": created, "init_ms": init, "first_run_ms": first_run,
            "cold_total_ms": created + init + first_run, "warm_run_ms": warm_runs,
            "suspend_ms": suspend, "resume_and_run_ms": resume_and_run, "destroy_ms": destroy}


def summarize(rounds: list[dict]) -> dict:
    out: dict[str, dict[str, float]] = {}
    for key in rounds[0]:
        values = [v for r in rounds for v in (r[key] if isinstance(r[key], list) else [r[key]])]
        out[key] = {"p50": round(statistics.median(values), 3), "p90": round(percentile(values, 0.9), 3),
                    "n": len(values)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "container_backends.json")
    args = parser.parse_args()

    backends: dict[str, ContainerFactory] = {
        "process": ProcessContainerFactory(extra_env={"__OW_INVOKER": "bench"}),
        "docker": DockerContainerFactory("benchbackends"),
    }
    backends["docker"].cleanup()
    samples: dict[str, list[dict]] = {name: [] for name in backends}
    for i in range(args.rounds):  # interleaved, so drift hits both alike
        for name, factory in backends.items():
            samples[name].append(one_round(factory, f"benchbackends_{name}_{i}", args.warm))
    for factory in backends.values():
        factory.close()

    summary = {name: summarize(rounds) for name, rounds in samples.items()}
    ratios = {key: round(summary["docker"][key]["p50"] / summary["process"][key]["p50"], 2)
              for key in ("cold_total_ms", "warm_run_ms", "resume_and_run_ms")
              if summary["process"][key]["p50"] > 0}
    result = {
        "benchmark": "container_backends",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "docker_host": _docker_host()},
        "engine": _engine_name(),
        "rounds": args.rounds, "warm_runs_per_round": args.warm,
        "summary": summary,
        "docker_over_process_p50": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"summary": {b: {k: v["p50"] for k, v in s.items()} for b, s in summary.items()},
                      "docker_over_process_p50": ratios}, indent=2))


def _engine_name() -> str:
    import docker

    client = docker.from_env()
    try:
        version = client.version()
        return f"{version.get('Platform', {}).get('Name', '')} {version.get('Version', '')}".strip()
    finally:
        client.close()


if __name__ == "__main__":
    main()
