"""Throughput of N concurrent functions on one GPU, MPS vs time-slicing, side by side.

N distinct ResNet-50 (Torch) actions, each in its own runtime process on GPU 0, load their
model (warm-up activation), then all start one activation at the same instant that runs
inferences for ``--seconds``; throughput is the images all N finished per second. The same
run is done with the invoker's MPS daemon (each function gets ``CUDA_MPS_*`` limits: GPU
memory ``--gpu-memory``, SM share ``--sm`` or 100/N with ``--partition``) and with MPS off
(time-slicing), for N = 1, 2, 4, 8.

Goal from issue #4: MPS at least 2x the time-sliced throughput at N = 4.

Run on a GPU machine as a user that may start ``nvidia-cuda-mps-control`` (root on the lent
machines): ``.venv/bin/python bench/gpu_mps_throughput.py [--seconds 10] [--batch 8]``.
Writes ``bench/results/gpu_mps_throughput.json`` with the GPU's name. ``--smoke`` runs the code
paths on a CPU (no MPS, tiny run) and records nothing.
"""

from __future__ import annotations

import argparse
import threading
import time

from gpu_support import (
    TORCH_ACTION,
    Sink,
    device_arg,
    gpu_action,
    inventory,
    machine,
    make_job,
    make_pool,
    prepare_weights,
    require_cuda,
    stop_on_sigterm,
    write_result,
)


def run_mode(mode: str, n: int, inv, weights: str, seconds: float, batch: int, gpu_memory: str,
             sm: int | None, smoke: bool) -> dict:
    pool, layer = make_pool(inv, mode)
    try:
        if mode == "on" and not layer.sharing.mps:
            raise RuntimeError(f"MPS did not start: {layer.sharing.reason}")
        sink = Sink()
        request = {"memory": gpu_memory, **({"sm": sm} if sm is not None else {})}
        actions = [gpu_action(f"tp-{mode}-{n}-{i}", TORCH_ACTION, 4096, request) for i in range(n)]
        device = device_arg(smoke)
        warmups = [make_job(a, sink, {"weights": weights, "batch": batch, "device": device}) for a in actions]
        for job in warmups:
            pool.run(job)
        for job in warmups:
            activation = sink.wait(job)
            if activation.response.status_code != 0:
                raise RuntimeError(f"warm-up failed: {activation.response.result}")
            require_cuda(activation.response.result, smoke)
        start_at = time.time() + 2.0
        jobs = [make_job(a, sink, {"weights": weights, "batch": batch, "loop_s": seconds, "start_at": start_at,
                                   "device": device}) for a in actions]
        threads = [threading.Thread(target=pool.run, args=(j,)) for j in jobs]
        for t in threads:
            t.start()
        results = [sink.wait(j).response.result for j in jobs]
        if any("images" not in r for r in results):
            raise RuntimeError(f"a function failed: {results}")
        for r in results:
            require_cuda(r, smoke)
        images = sum(r["images"] for r in results)
        wall = max(r["phases"]["loop_s"] for r in results)
        return {
            "functions": n,
            "images": images,
            "seconds": wall,
            "images_per_s": images / wall,
            "per_function_images_per_s": [r["images"] / r["phases"]["loop_s"] for r in results],
            "sharing": layer.sharing.mode,
            "sm_percent": sorted(c["sm_percent"] for c in pool.gpu_snapshot()["gpus"][0]["containers"]),
        }
    finally:
        pool.shutdown()
        layer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--gpu-memory", default="4 GB", help="GPU request of each function")
    parser.add_argument("--sm", type=int, default=100, help="SM share of each function under MPS (default 100: no cap)")
    parser.add_argument("--partition", action="store_true", help="SM share 100/N instead of --sm")
    parser.add_argument("--smoke", action="store_true", help="CPU dry run of the code paths; records nothing")
    args = parser.parse_args()
    stop_on_sigterm()
    inv = inventory(args.smoke)
    if not args.smoke:
        inv = type(inv)(inv.devices[:1], inv.source)  # one GPU
    pt, _ = prepare_weights(args.smoke)
    modes = ("off",) if args.smoke else ("on", "off")
    rows = []

    def report() -> dict:
        ratios = {}
        for n in args.n:
            by = {r["sharing"]: r["images_per_s"] for r in rows if r["functions"] == n}
            if "mps" in by and "time-slicing" in by:
                ratios[str(n)] = by["mps"] / by["time-slicing"]
        return {
            "machine": machine(inv), "backend": "process",
            "model": f"ResNet-50 (Torch, random weights, fp32, batch {args.batch})",
            "seconds_per_run": args.seconds, "gpu_request": {"memory": args.gpu_memory,
                                                              "sm": "100/N" if args.partition else args.sm},
            "runs": rows, "mps_over_time_slicing": ratios,
            "goal_mps_ge_2x_at_n4": {"ratio": ratios.get("4"), "met": ratios.get("4", 0) >= 2} if "4" in ratios else None,
        }

    for n in args.n:
        for mode in modes:
            sm = max(1, 100 // n) if args.partition else args.sm
            row = run_mode(mode, n, inv, str(pt), args.seconds, args.batch, args.gpu_memory, sm, args.smoke)
            rows.append(row)
            print(f"N={n} {row['sharing']}: {row['images_per_s']:.1f} images/s")
            if not args.smoke:  # as it goes: a run cut off by its time limit keeps its rows
                write_result("gpu_mps_throughput", report(), smoke=False)
    write_result("gpu_mps_throughput", report(), args.smoke)


if __name__ == "__main__":
    main()
