"""GPU cold start of ResNet-50 (Torch and ONNX Runtime): naive cold start vs stem-cell start
vs warm, each broken into its parts, measured side by side in one run on one GPU.

* naive: a new runtime process for the action (process backend: no container engine, so
  "container start" is process spawn + runtime start), then /init, then in the action:
  framework import, CUDA context, weights from disk, copy to the GPU, first inference;
* stem cell: a GPU stem cell that already imported torch/onnxruntime and created its CUDA
  context (OW_GPU_PREWARM) is claimed: /init, weights, copy, first inference;
* warm: the same container again, the model resident (X-OW-Resident): inference only.

Goal from issue #4: stem-cell start < 1.5 x (warm latency + the model's transfer time); the
transfer time is the weights' bytes over the pinned host-to-device bandwidth measured in the
action (not the pageable ``model.to()`` of the naive start). Under MPS the MPS server's own
start-up (paid once per node by the first client) is timed apart (``mps_server_start``), before
the naive cold start, which therefore does not include it. Every activation must have run on
CUDA (torch's device, onnxruntime's first provider), else the run fails.

Run on a GPU machine: ``.venv/bin/python bench/gpu_coldstart.py [--trials 5] [--warm 20]``
(needs torch with CUDA and onnxruntime-gpu). Writes ``bench/results/gpu_coldstart.json``
with the GPU's name. ``--smoke`` runs the code paths on a CPU and records nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

from gpu_support import (
    ONNX_ACTION,
    TORCH_ACTION,
    Sink,
    device_arg,
    gpu_action,
    inventory,
    machine,
    make_job,
    make_pool,
    mps_server_start,
    prepare_weights,
    require_cuda,
    stop_on_sigterm,
    write_result,
)

from invoker.manifest import StemCell

MEMORY_MB = 4096  # container memory and (default) GPU request of every action here


def parts(activation, submitted_wall_ms: int, submitted: float, finished: float, smoke: bool) -> dict:
    result = activation.response.result
    if activation.response.status_code != 0:
        raise RuntimeError(f"activation failed: {result}")
    require_cuda(result, smoke)
    init_ms = activation.annotation("initTime", 0)
    out = {
        "container_start_s": max(0, activation.start_ms - submitted_wall_ms) / 1000,
        "init_s": init_ms / 1000,
        **result["phases"],
        "total_s": finished - submitted,
    }
    return out


def one(pool, action, sink, args, smoke: bool) -> dict:
    job = make_job(action, sink, args)
    submitted_wall_ms, submitted = int(time.time() * 1000), time.perf_counter()
    pool.run(job)
    activation = sink.wait(job)
    return parts(activation, submitted_wall_ms, submitted, time.perf_counter(), smoke)


def link_bandwidth(pool, action, sink, args, smoke: bool) -> tuple[float | None, int]:
    """(pinned host-to-device bytes/s measured by the warm action, None on a CPU; its weights' bytes)."""
    job = make_job(action, sink, {**args, "measure_link": True})
    pool.run(job)
    activation = sink.wait(job)
    if activation.response.status_code != 0:
        raise RuntimeError(f"activation failed: {activation.response.result}")
    require_cuda(activation.response.result, smoke)
    return activation.response.result.get("h2d_pinned_Bps"), activation.response.result["weights_bytes"]


def summarise(samples: list[dict]) -> dict:
    keys = sorted({k for s in samples for k in s})
    return {k: {"median": statistics.median(s[k] for s in samples if k in s),
                "min": min(s[k] for s in samples if k in s), "n": sum(1 for s in samples if k in s)} for k in keys}


def bench_framework(name: str, code: str, weights: str, inv, trials: int, warm: int, smoke: bool) -> dict:
    args = {"weights": weights, "batch": 1, "device": device_arg(smoke)}
    naive, stem, hot, mps_start, links = [], [], [], [], []
    sharing, weights_bytes = None, None
    for trial in range(trials):
        pool, layer = make_pool(inv, "auto")
        sharing = layer.sharing
        try:
            if (started := mps_server_start(layer)) is not None:  # not part of the naive start
                mps_start.append(started)
            sink = Sink()
            action = gpu_action(f"{name}-naive-{trial}", code, MEMORY_MB)
            naive.append(one(pool, action, sink, args, smoke))
            for _ in range(warm):
                hot.append(one(pool, action, sink, args, smoke))
            if name == "torch":
                link, weights_bytes = link_bandwidth(pool, action, sink, args, smoke)
                if link is not None:
                    links.append(link)
        finally:
            pool.shutdown()
            layer.stop()
        pool, layer = make_pool(inv, "auto", stem_cells=(StemCell("python:3-gpu", MEMORY_MB, 1),))
        try:
            deadline = time.monotonic() + 600
            while not any(p.is_prewarm for p in pool._containers):
                if time.monotonic() > deadline:
                    raise RuntimeError("no stem cell got ready in 10 minutes")
                time.sleep(0.05)
            sink = Sink()
            stem.append(one(pool, gpu_action(f"{name}-stem-{trial}", code, MEMORY_MB), sink, args, smoke))
        finally:
            pool.shutdown()
            layer.stop()
    naive_s, stem_s, hot_s = summarise(naive), summarise(stem), summarise(hot)
    warm_latency = hot_s["total_s"]["median"]
    out = {
        "naive_cold_start": naive_s,
        "stem_cell_start": stem_s,
        "warm": hot_s,
        "sharing": sharing.mode if sharing else None,
        "mps_server_start": summarise(mps_start) if mps_start else None,
        "stem_over_naive": stem_s["total_s"]["median"] / naive_s["total_s"]["median"],
        "stem_over_warm": stem_s["total_s"]["median"] / warm_latency,
    }
    if links and weights_bytes:  # Torch; ONNX Runtime does not expose the copy on its own
        bandwidth = statistics.median(links)
        transfer = weights_bytes / bandwidth
        out["goal_stem_lt_1_5x_warm_plus_transfer"] = {
            "weights_bytes": weights_bytes, "h2d_pinned_GBps": bandwidth / 1e9, "transfer_s": transfer,
            "bound_s": 1.5 * (warm_latency + transfer), "stem_s": stem_s["total_s"]["median"],
            "met": stem_s["total_s"]["median"] < 1.5 * (warm_latency + transfer),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--only", choices=("torch", "onnx"))
    parser.add_argument("--smoke", action="store_true", help="CPU dry run of the code paths; records nothing")
    args = parser.parse_args()
    stop_on_sigterm()
    inv = inventory(args.smoke)
    pt, onnx = prepare_weights(args.smoke)
    result = {"machine": machine(inv), "backend": "process", "model": "ResNet-50 (random weights, fp32, batch 1)",
              "trials": args.trials, "warm_samples_per_trial": args.warm}
    for name, code, weights in (("torch", TORCH_ACTION, pt), ("onnx", ONNX_ACTION, onnx)):
        if args.only in (None, name):
            result[name] = bench_framework(name, code, str(weights), inv, args.trials, args.warm, args.smoke)
    write_result("gpu_coldstart", result, args.smoke)


if __name__ == "__main__":
    main()
