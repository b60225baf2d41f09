"""GPU sleep (#20): what a sleeping model costs to wake, and what its sleep gives back.

For ResNet-50, MiniLM (all-MiniLM-L6-v2's shape) and BERT-large (1.34 GB fp32, the model of
about 1 GB), random weights, loaded through ``owruntime.models`` (Torch, pipelined), one run
measures, per model and over ``--cycles`` sleep/wake cycles (medians):

* ``resident_s``     a call with the model resident (the warm latency);
* ``sleep_s``        ``model.sleep()``: copy back what the module changed, free, empty the cache;
* ``freed_bytes``    device memory the sleep gave back (torch's allocator: exact, this process),
  beside ``freed_device_bytes`` (``cudaMemGetInfo``: device-wide) and the model's own
  ``model_bytes``; ``freed_fraction`` = freed / model bytes (goal >= 0.90);
* ``wake_s``         wake-to-first-result: from the wake (copies issued on the side stream) to the
  first result on the host, the first layers computing while later ones arrive; its host-side
  start, ``wake_issue_s`` (allocating the device tensors from an emptied cache, issuing the
  copies), says how much of it is ``cudaMalloc``;
* ``copy_s``, ``copy_GBps`` the wake's copies alone (timed events on the side stream), and
  ``copy_fraction_of_pinned_peak`` against the pinned host-to-device peak measured here;
* ``wake_goal_s`` = 1.2 x (resident_s + model bytes / pinned peak); ``wake_ok``: wake_s <= it.

``--formats torch,onnx`` adds ONNX Runtime for ResNet-50 and MiniLM (pipelined stages; the
wake rebuilds the sessions, whose copies cannot be timed apart: no copy figures there).

    python bench/gpu_sleep.py            # GPU: cuda:0, writes bench/results/gpu_sleep_<gpu>.json
    python bench/gpu_sleep.py --smoke    # CPU: small inputs, no 1.34 GB model, records nothing

Without CUDA it refuses to run unless ``--smoke``: a CPU figure is never written under a GPU's
name. A smoke run's "device" copies are host-to-host (the ThreadCopier), named as such.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from gpu_support import require_cuda, stop_on_sigterm, write_result
from model_loading import Bert, Clock, ResNet50
from owruntime.models import ModelCache, load
from owruntime.models.copier import StreamCopier
from owruntime.models.devices import measure_h2d_bandwidth, parse_device
from owruntime.models.sleep import device_used
from owruntime.resident import Registry
from torch import nn


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2's encoder (6 layers, 384 wide, 22.7 M parameters), random weights: the
    real checkpoint is more than a device call may carry."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536)
        cfg._attn_implementation = "eager"
        self.bert = BertModel(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def models(smoke: bool) -> dict:
    size, seq = (64, 32) if smoke else (224, 128)

    def tokens(b: int) -> tuple:
        return (torch.randint(0, 30000, (b, seq)), torch.ones(b, seq, dtype=torch.long))

    out = {
        "resnet50": (ResNet50, lambda b: (torch.randn(b, 3, size, size),), ["x"]),
        "minilm": (MiniLM, tokens, ["input_ids", "attention_mask"]),
    }
    if not smoke:
        out["bert-large-1.3GB"] = (lambda: Bert(True), tokens, ["input_ids", "attention_mask"])
    return out


def bench_torch(make, inputs, batch: int, device: str, cycles: int, calls: int, clock: Clock,
                peak: float | None) -> dict:
    dev = parse_device(device)
    torch.manual_seed(0)
    model = load(make().eval(), device=device, mode="pipelined", key="bench", cache=ModelCache(Registry()))
    x = inputs(batch)
    model(*x)  # the cold load's first call; then warm cuDNN/cuBLAS for these shapes
    for _ in range(3):
        model(*x)
    resident = [clock.time(lambda: model(*x))[0] for _ in range(calls)]
    model_bytes = model.nbytes
    rows = []
    for _ in range(cycles):
        clock.sync()
        used = device_used(dev)
        report = model.sleep()
        used_after = device_used(dev)
        copier = StreamCopier(torch.device(device), timing=True) if dev.is_cuda else None

        issued: list[float] = []

        def wake_and_call(copier=copier, issued=issued):
            t0 = time.perf_counter()
            model.wake(copier=copier)  # host side: device allocation and issuing the copies
            issued.append(time.perf_counter() - t0)
            return model(*x)

        wake_s, _ = clock.time(wake_and_call)
        row = {"sleep_s": report.seconds, "freed_bytes": report.freed, "measured": report.measured,
               "host_bytes": report.host_bytes, "wake_s": wake_s, "wake_issue_s": issued[0]}
        if used is not None and used_after is not None:
            row["freed_device_bytes"] = used - used_after
        if copier is not None:
            row["copy_s"] = copier.copy_seconds()
        rows.append(row)
        for _ in range(2):  # resident again before the next sleep
            model(*x)
    model.close()
    med = statistics.median
    out = {"format": "torch", "batch": batch, "model_bytes": model_bytes, "units": len(model.host.units),
           "resident_s": med(resident), "cycles": rows,
           **{k: med(r[k] for r in rows) for k in ("sleep_s", "freed_bytes", "wake_s", "wake_issue_s")}}
    out["freed_fraction"] = out["freed_bytes"] / model_bytes
    if all("freed_device_bytes" in r for r in rows):
        out["freed_device_bytes"] = med(r["freed_device_bytes"] for r in rows)
    if dev.is_cuda and peak:
        out["copy_s"] = med(r["copy_s"] for r in rows)
        out["copy_GBps"] = model_bytes / out["copy_s"] / 1e9
        out["copy_fraction_of_pinned_peak"] = model_bytes / out["copy_s"] / peak
        out["wake_goal_s"] = 1.2 * (out["resident_s"] + model_bytes / peak)
        out["wake_ok"] = out["wake_s"] <= out["wake_goal_s"]
        out["freed_ok"] = out["freed_fraction"] >= 0.9
    else:
        out["copies"] = "host-to-host (ThreadCopier): no host-device link on the CPU"
    return out


def bench_onnx(name: str, make, inputs, names: list[str], batch: int, device: str, cycles: int,
               calls: int, clock: Clock, workdir: Path) -> dict:
    dev = parse_device(device)
    path = workdir / f"{name}.onnx"
    torch.manual_seed(0)
    axes = {n: {0: "batch"} for n in names}
    torch.onnx.export(make().eval(), inputs(2), str(path), dynamo=False, input_names=names,
                      output_names=["out"], dynamic_axes=axes, opset_version=17)
    x = tuple(t.numpy() for t in inputs(batch))
    model = load(path, device=device, mode="pipelined", cache=ModelCache(Registry()), cache_dir=workdir / "splits")
    for _ in range(4):
        model(*x)
    resident = [clock.time(lambda: model(*x))[0] for _ in range(calls)]
    model_bytes = model.nbytes
    rows = []
    for _ in range(cycles):
        report = model.sleep()
        wake_s, _ = clock.time(lambda: model(*x))
        rows.append({"sleep_s": report.seconds, "freed_bytes": report.freed, "measured": report.measured,
                     "host_bytes": report.host_bytes, "wake_s": wake_s})
        model.wait_loaded()
        model(*x)
    providers = model._device[0].get_providers() if model._device[0] is not None else []
    model.close()
    med = statistics.median
    out = {"format": "onnx", "batch": batch, "model_bytes": model_bytes, "stages": len(model.split.stages),
           "providers": providers, "device": "cuda" if dev.is_cuda else "cpu",
           "resident_s": med(resident), "cycles": rows,
           **{k: med(r[k] for r in rows) for k in ("sleep_s", "freed_bytes", "wake_s")}}
    out["freed_fraction"] = out["freed_bytes"] / model_bytes
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, small inputs, no 1.34 GB model; records nothing")
    ap.add_argument("--cycles", type=int, default=None, help="sleep/wake cycles per model (default 5, smoke 1)")
    ap.add_argument("--calls", type=int, default=None, help="resident calls timed (default 20, smoke 2)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--formats", default="torch")
    ap.add_argument("--models", default=None, help="comma-separated subset (default: all)")
    args = ap.parse_args()
    stop_on_sigterm()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit(f"no CUDA device visible to torch {torch.__version__} (CUDA build {torch.version.cuda}): "
                         "run on a GPU machine, or pass --smoke for a CPU dry run (which records no figures)")
    device = "cpu" if args.smoke else "cuda:0"
    dev = parse_device(device)
    cycles = args.cycles or (1 if args.smoke else 5)
    calls = args.calls or (2 if args.smoke else 20)
    clock = Clock(device)
    peak = measure_h2d_bandwidth(dev, nbytes=256 << 20) if dev.is_cuda else None
    gpu = torch.cuda.get_device_name(dev.index) if dev.is_cuda else None
    result: dict = {
        "what": "GPU sleep: resident latency, wake-to-first-result, bytes freed, copy bandwidth",
        "device": device, "gpu": gpu,
        "figures_are": "GPU measurements" if gpu else "CPU SMOKE RUN: host-to-host copies, NOT GPU figures",
        "pinned_h2d_peak_GBps": peak / 1e9 if peak else None,
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "batch": args.batch, "cycles": cycles, "models": {},
    }
    chosen = models(args.smoke)
    if args.models:
        unknown = set(args.models.split(",")) - set(chosen)
        if unknown:
            ap.error(f"unknown models {sorted(unknown)}; known: {sorted(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in args.models.split(",")}
    formats = args.formats.split(",")
    slug = "".join(c if c.isalnum() else "-" for c in (gpu or "cpu").lower()).strip("-")
    with tempfile.TemporaryDirectory(prefix="owbench-sleep-") as tmp:
        for name, (make, inputs, names) in chosen.items():
            rows = []
            if "torch" in formats:
                row = bench_torch(make, inputs, args.batch, device, cycles, calls, clock, peak)
                require_cuda({"device": "cuda" if dev.is_cuda else "cpu"}, args.smoke)
                rows.append(row)
            if "onnx" in formats and "large" not in name:  # its export alone would take the step's time
                row = bench_onnx(name, make, inputs, names, args.batch, device, cycles, calls, clock, Path(tmp))
                require_cuda({"providers": row["providers"]}, args.smoke)
                rows.append(row)
            result["models"][name] = rows
            print(f"{name}: " + "; ".join(
                f"{r['format']} resident {r['resident_s'] * 1e3:.2f} ms, wake {r['wake_s'] * 1e3:.2f} ms, "
                f"freed {r['freed_bytes'] / 2**20:.1f} of {r['model_bytes'] / 2**20:.1f} MiB" for r in rows), flush=True)
            if not args.smoke:  # as it goes: a run cut off by its time limit keeps its models
                result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                write_result(f"gpu_sleep_{slug}", result, smoke=False)
    if args.smoke:
        write_result("gpu_sleep", result, smoke=True)


if __name__ == "__main__":
    main()
