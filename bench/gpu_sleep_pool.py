"""GPU sleep through the pool (#20, the invoker half): what an asleep container still holds on
its GPU, and what a wake costs an activation, end to end.

``--containers`` actions (an encoder of ``--layers`` x 768 wide, random weights, loaded through
``owruntime.models`` on cuda:0, pipelined) each run cold, then resident ``--calls`` times; the
pool's idle timer (``sleep_after_s``) puts them to sleep; each then runs again (the wake). Per
container it records:

* ``admitted_mb``: the GPU request it was admitted with (``--request-mb``);
* ``freed_bytes``: what its ``/sleep`` reports it gave back on the GPU (torch's allocator);
* ``asleep_charge_mb`` and ``measured``: what the ledger still charges it asleep (admitted minus
  freed): with MPS this is the context and whatever else the client keeps, per client;
* ``nvml_used_drop_mb``: NVML's used memory on the GPU before and after the sleeps (device-wide:
  MPS server and other clients included), divided by the containers;
* ``cold_s``, ``resident_s`` (median), ``wake_s``: activation latency from ``pool.run`` to the
  result, so the pool's own work is in it; ``wake_over_resident_s`` what the wake adds;
* ``same_result``: the woken model's answer equals the resident one's (allclose).

    python bench/gpu_sleep_pool.py            # GPU: writes bench/results/gpu_sleep_pool_<gpu>.json
    python bench/gpu_sleep_pool.py --smoke    # CPU: declared GPU, tiny model, records nothing

Not here: the density figure of the issue (200 Zipf-popular functions on one GPU, sleep on vs
off): 200 runtime processes, each with framework imports and a CUDA context, do not start within
a device session's time; it needs the pool driven by the simulator, with these per-container
figures as its costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_support import (  # noqa: E402
    Sink,
    gpu_action,
    inventory,
    machine,
    make_job,
    make_pool,
    require_cuda,
    stop_on_sigterm,
    write_result,
)

from invoker.containerpool.states import State  # noqa: E402
from invoker.gpu.layer import GpuSettings  # noqa: E402

# An ordinary action: loads its model once, keeps it in a global, knows nothing of sleep.
ACTION = """
import torch
from owruntime.models import load

MODELS = {}

def main(args):
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if "m" not in MODELS:
        torch.manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(args["width"], 8, 4 * args["width"], dropout=0.0, batch_first=True)
        module = torch.nn.TransformerEncoder(layer, args["layers"], enable_nested_tensor=False).eval()
        MODELS["m"] = load(module, device=device, mode="pipelined", key=args["key"])
    x = torch.linspace(-1, 1, 8 * 64 * args["width"]).reshape(8, 64, args["width"]).to(device)
    with torch.no_grad():
        y = MODELS["m"](x)
    return {"device": device.split(":")[0], "y": y[0, :4, :8].float().cpu().tolist()}
"""


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def _timed(pool, sink: Sink, action, args: dict) -> tuple[float, dict]:
    job = make_job(action, sink, args)
    started = time.perf_counter()
    pool.run(job)
    activation = sink.wait(job)
    took = time.perf_counter() - started
    if activation.response.status_code != 0:
        raise RuntimeError(f"{action.name}: {activation.response.result}")
    return took, activation.response.result


def _close(a: list, b: list, tol: float = 1e-4) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    return abs(a - b) <= tol * (1 + abs(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU dry run: declared GPU, tiny model, nothing recorded")
    parser.add_argument("--containers", type=int, default=4)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--request-mb", type=int, default=4096)
    parser.add_argument("--mps", default="auto", help="auto, on or off (as --gpu-mps)")
    args = parser.parse_args()
    stop_on_sigterm()
    width = 64 if args.smoke else 768
    layers = 2 if args.smoke else args.layers
    inv = inventory(args.smoke)
    settings = GpuSettings(reserved_mb=512, prewarm=(), sleep_after_s=1.0)
    pool, layer = make_pool(inv, args.mps, settings=settings)
    sink = Sink()
    rows = []
    try:
        actions = [gpu_action(f"sleeper{i}", ACTION, 2048, gpu={"memory": f"{args.request_mb} MB"})
                   for i in range(args.containers)]
        payload = [{"width": width, "layers": layers, "key": f"sleeper{i}"} for i in range(args.containers)]
        cold, resident, answers = {}, {}, {}
        # Cold starts one after the other: the idle timer must not put the first ones to sleep
        # before all have run resident, so the resident calls come right after each cold start.
        for action, call in zip(actions, payload, strict=True):
            cold[action.name], first = _timed(pool, sink, action, call)
            require_cuda(first, args.smoke)
            times = []
            for _ in range(args.calls):
                took, answers[action.name] = _timed(pool, sink, action, call)
                times.append(took)
            resident[action.name] = statistics.median(times)
        used_before = inv.sample().devices[0].memory_used_mb
        proxies = {p.action.name: p for p in pool._containers if p.action is not None}
        _wait(lambda: all(p.state is State.ASLEEP for p in proxies.values()), 60, "all asleep")
        time.sleep(0.5)  # NVML's figure settles after the frees
        used_after = inv.sample().devices[0].memory_used_mb
        snapshot = {c["id"]: c for c in pool.gpu_snapshot()["gpus"][0]["containers"]}
        asleep = {name: (p.sleep, snapshot[p.container.id]) for name, p in proxies.items()}
        for action, call in zip(actions, payload, strict=True):
            wake_s, woken = _timed(pool, sink, action, call)
            record, entry = asleep[action.name]
            rows.append({
                "action": action.name,
                "admitted_mb": args.request_mb,
                "freed_bytes": record.report.freed_on_gpu(),
                "freed_report": record.report.freed,
                "host_bytes": record.report.host_bytes,
                "sleep_s_runtime": record.report.seconds,
                "asleep_charge_mb": record.held_mb,
                "measured": record.measured,
                "model_bytes": sum(m["bytes"] for m in entry["asleep"]),
                "cold_s": round(cold[action.name], 4),
                "resident_s": round(resident[action.name], 4),
                "wake_s": round(wake_s, 4),
                "wake_over_resident_s": round(wake_s - resident[action.name], 4),
                "same_result": _close(woken["y"], answers[action.name]["y"]),
            })
        drop = None if used_before is None or used_after is None else (used_before - used_after) / len(rows)
        stats = pool.gpu_snapshot()["stats"]
        result = {
            "machine": machine(inv),
            "sharing": layer.sharing_json(),
            "model": {"layers": layers, "width": width},
            "containers": rows,
            "nvml_used_before_mb": used_before, "nvml_used_after_mb": used_after,
            "nvml_used_drop_mb_per_container": drop,
            "median_asleep_charge_mb": statistics.median(r["asleep_charge_mb"] for r in rows),
            "median_wake_over_resident_s": statistics.median(r["wake_over_resident_s"] for r in rows),
            "all_same_result": all(r["same_result"] for r in rows),
            "pool": {k: stats[k] for k in ("gpu_sleeps", "gpu_wakes", "gpu_sleep_failures", "cold_starts")},
        }
        slug = "".join(c if c.isalnum() else "-" for c in inv.devices[0].name.lower()).strip("-")
        write_result(f"gpu_sleep_pool_{slug}", result, args.smoke)
    finally:
        pool.shutdown()
        layer.stop()


if __name__ == "__main__":
    main()
