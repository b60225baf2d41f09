"""First inference from weights in host memory: pipelined vs plain loading, side by side.

For ResNet-50, BERT-base and BERT-large (1.34 GB fp32, the >= 1 GB model), random weights,
each in Torch and in ONNX, and for each batch size, one run measures:

* ``plain_s``      load everything (``.to(device)`` of every tensor), then run: first output;
* ``pipelined_s``  ``owruntime.models`` pipelined load + first call (copy overlapped);
* ``partitioned_s`` pipelined with the CPU/device cut chosen from measured costs (Torch);
* ``copy_s``       the copy alone (pinned host -> device, every tensor, nothing else);
* ``alloc_s``      allocating the device tensors from an emptied cache (``cudaMalloc``: one
  allocation per model, as the loader does), apart:
  the other figures run on torch's cached blocks, so all of them time copies and compute
  alone and add up (a cold start pays ``alloc_s`` + ``pin_s`` on top);
* ``pin_s``        staging the weights in pinned host memory (one buffer per model);
* ``compute_s``    the compute alone (a warm forward with the weights resident);
* ``ratio``        pipelined / max(copy, compute): the issue's goal is <= 1.15;
* ``copy_GBps`` vs ``link_pinned_h2d_GBps``: the copy's rate against the pinned H2D bandwidth
  measured here (goal >= 80 %); ``pipelined_copy_GBps``: the same for the copies inside the
  pipelined run (timed events on the side stream).

Samples alternate plain / pipelined (medians of ``--repeat``); the CUDA context, cuDNN and
cuBLAS and torch's block cache are warmed first, so the figures are the weights' share of a cold start, not the
context's. ONNX: ``copy_s`` is not separable (session creation copies and optimises), so it
reports ``session_s`` (plain session creation alone) instead.

    .venv/bin/python bench/model_loading.py                      # GPU: cuda:0, everything
    .venv/bin/python bench/model_loading.py --device cpu --quick # proves the script runs

Writes ``bench/results/model_loading_<gpu>.json`` (``model_loading_cpu_quick.json`` on the
CPU: those figures say nothing about GPU loading and are labelled so). Needs transformers
(already installed with the ``ml`` extra, by sentence-transformers) to build BERT from a config.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from owruntime.models import choose_cut, load
from owruntime.models.copier import StreamCopier
from owruntime.models.devices import measure_h2d_bandwidth, parse_device
from owruntime.models.torch_loader import HostModule, TorchModel, empty_packed
from torch import nn

RESULTS = Path(__file__).parent / "results"


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet50(nn.Module):
    """torchvision's resnet50 layout (25.6 M parameters), written out: no torchvision here."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for b in range(blocks):
                layers.append(Bottleneck(cin, width, stride if b == 0 else 1))
                cin = width * 4
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(2048, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3)))


class Bert(nn.Module):
    def __init__(self, large: bool) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = (BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                          intermediate_size=4096) if large else BertConfig())
        cfg._attn_implementation = "eager"
        self.bert = BertModel(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def models(quick: bool) -> dict:
    size, seq = (64, 32) if quick else (224, 128)
    out = {
        "resnet50": (ResNet50, lambda b: (torch.randn(b, 3, size, size),), ["x"]),
        "bert-base": (lambda: Bert(False), lambda b: (torch.randint(0, 30000, (b, seq)),
                                                      torch.ones(b, seq, dtype=torch.long)),
                      ["input_ids", "attention_mask"]),
    }
    if not quick:
        out["bert-large-1.3GB"] = (lambda: Bert(True), out["bert-base"][1], out["bert-base"][2])
    return out


class Clock:
    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn) -> tuple[float, object]:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out


def bench_torch(name, make, inputs, batch, device, repeat, clock, bandwidth) -> dict:
    torch.manual_seed(0)
    host = HostModule(make().eval(), pin=device.startswith("cuda"))  # the weights in host memory
    # Samples close with release=False: torch keeps the freed blocks, so no sample pays
    # cudaMalloc (timed once, apart, as alloc_s) and every figure times copies and compute.
    dev = parse_device(device)
    x = inputs(batch)
    warm = TorchModel(host, dev, mode="plain")  # context, cuDNN/cuBLAS, allocator warm-up
    xd = tuple(t.to(device) for t in x)
    for _ in range(3):
        with torch.inference_mode():
            host.module(*xd)
    compute = [clock.time(lambda: warm(*xd))[0] for _ in range(repeat)]
    warm.close(release=False)
    alloc, dst = [], []
    for _ in range(repeat):
        dst.clear()
        if dev.is_cuda:
            torch.cuda.empty_cache()
        s, dst = clock.time(lambda: empty_packed([t.host for t in host.tensors], torch.device(device)))
        alloc.append(s)

    def copy_all() -> None:
        for d, t in zip(dst, host.tensors, strict=True):
            d.copy_(t.host, non_blocking=True)

    copy = [clock.time(copy_all)[0] for _ in range(repeat)]
    dst.clear()
    plain, pipelined, overlapped_copy = [], [], []
    for _ in range(repeat):
        for mode, bucket in (("plain", plain), ("pipelined", pipelined)):
            def first(mode=mode):
                copier = StreamCopier(torch.device(device), timing=True) if (
                    mode == "pipelined" and dev.is_cuda) else None
                m = TorchModel(host, dev, mode=mode, copier=copier)
                return m, m(*x)
            s, (m, _) = clock.time(first)
            bucket.append(s)
            if isinstance(getattr(m, "_copier", None), StreamCopier):
                overlapped_copy.append(m._copier.copy_seconds())
            m.close(release=False)
    # the cost model, measured, and the partitioned first call it chooses
    m = TorchModel(host, dev, mode="pipelined")
    cost = m.measure(*x, batch_size=batch, bandwidth=bandwidth)
    m.close(release=False)
    plan = choose_cut(cost)
    partitioned = []
    for _ in range(repeat):
        def first_part():
            m = TorchModel(host, dev, mode="pipelined", cut=plan.cut, order=cost.order)
            return m, m(*x)
        s, (m, _) = clock.time(first_part)
        partitioned.append(s)
        m.close(release=False)
    if dev.is_cuda:
        torch.cuda.empty_cache()
    med = statistics.median
    nbytes = host.nbytes
    result = {
        "format": "torch", "batch": batch, "weights_bytes": nbytes, "units": len(host.units),
        "plain_s": med(plain), "pipelined_s": med(pipelined), "partitioned_s": med(partitioned),
        "partition_cut": plan.cut, "partition_reason": plan.reason,
        "copy_s": med(copy), "compute_s": med(compute), "alloc_s": med(alloc),
        "pin_s": host.pin_seconds,
        "copy_GBps": nbytes / med(copy) / 1e9,
    }
    if overlapped_copy:  # the copy's own duration inside the pipelined run (side stream)
        result["pipelined_copy_s"] = med(overlapped_copy)
        result["pipelined_copy_GBps"] = nbytes / med(overlapped_copy) / 1e9
    result["ratio_pipelined_to_max_copy_compute"] = med(pipelined) / max(med(copy), med(compute))
    result["pipelined_speedup_vs_plain"] = med(plain) / med(pipelined)
    return result


def bench_onnx(name, make, inputs, names, batch, device, repeat, clock, workdir) -> dict:
    import onnxruntime as ort

    dev = parse_device(device)
    if dev.is_cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"format": "onnx", "batch": batch, "skipped": "onnxruntime has no CUDA EP here"}
    path = workdir / f"{name}.onnx"
    if not path.exists():
        torch.manual_seed(0)
        m = make().eval()
        axes = {n: {0: "batch"} for n in names}
        torch.onnx.export(m, inputs(2), str(path), dynamo=False, input_names=names,
                          output_names=["out"], dynamic_axes=axes, opset_version=17)
    x = tuple(t.numpy() for t in inputs(batch))
    cache = workdir / "splits"
    load(path, device=device, mode="pipelined", cache=None, cache_dir=cache).close()  # split once
    warm = load(path, device=device, mode="plain", cache=None)
    warm(*x)
    compute = [clock.time(lambda: warm(*x))[0] for _ in range(repeat)]
    warm.close()
    plain, pipelined, session = [], [], []
    for _ in range(repeat):
        s, m = clock.time(lambda: load(path, device=device, mode="plain", cache=None))
        session.append(s)
        m.close()
        for mode, bucket in (("plain", plain), ("pipelined", pipelined)):
            def first(mode=mode):
                m = load(path, device=device, mode=mode, cache=None, cache_dir=cache)
                return m, m(*x)
            s, (m, _) = clock.time(first)
            bucket.append(s)
            m.close()
    med = statistics.median
    return {
        "format": "onnx", "batch": batch, "file_bytes": path.stat().st_size,
        "plain_s": med(plain), "pipelined_s": med(pipelined), "session_s": med(session),
        "compute_s": med(compute), "pipelined_speedup_vs_plain": med(plain) / med(pipelined),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--quick", action="store_true", help="small inputs, no 1.3 GB model, 2 repeats")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--formats", default="torch,onnx")
    ap.add_argument("--models", default=None, help="comma-separated subset of the models (default: all)")
    ap.add_argument("--out", default=None, help="result file (default: by device)")
    ap.add_argument("--tag", default="", help="added to the default result file's name (a partial run)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dev = parse_device(args.device)
    repeat = args.repeat or (2 if args.quick else 7)
    clock = Clock(dev.name)
    bandwidth = measure_h2d_bandwidth(dev, nbytes=256 << 20) if dev.is_cuda else float("inf")
    gpu = torch.cuda.get_device_name(dev.index) if dev.is_cuda else None
    result: dict = {
        "what": "first inference from weights in host memory: pipelined vs plain loading",
        "device": dev.name, "gpu": gpu,
        "figures_are": ("GPU measurements" if gpu else
                        "CPU ONLY: proves the benchmark runs; NOT GPU figures, no host-device link"),
        "link_pinned_h2d_GBps": bandwidth / 1e9 if dev.is_cuda else None,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "torch": torch.__version__,
                    "cuda": torch.version.cuda},
        "repeat": repeat, "quick": args.quick, "models": {},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not args.quick and not dev.is_cuda:
        result["note"] = "full run on the CPU: still not GPU figures"
    slug = re.sub(r"[^a-z0-9]+", "-", (gpu or "cpu").lower()).strip("-")
    out = Path(args.out) if args.out else RESULTS / (
        f"model_loading_{slug}{'_quick' if args.quick else ''}{'_' + args.tag if args.tag else ''}.json")
    out.parent.mkdir(exist_ok=True)
    formats = args.formats.split(",")
    with tempfile.TemporaryDirectory(prefix="owbench-") as tmp:
        chosen = models(args.quick)
        if args.models:
            unknown = set(args.models.split(",")) - set(chosen)
            if unknown:
                ap.error(f"unknown models {sorted(unknown)}; known: {sorted(chosen)}")
            chosen = {k: v for k, v in chosen.items() if k in args.models.split(",")}
        for name, (make, inputs, names) in chosen.items():
            rows = []
            for batch in (int(b) for b in args.batches.split(",")):
                if "torch" in formats:
                    r = bench_torch(name, make, inputs, batch, dev.name, repeat, clock, bandwidth)
                    if dev.is_cuda:
                        r["copy_fraction_of_link"] = r["copy_GBps"] * 1e9 / bandwidth
                        r["pipelined_copy_fraction_of_link"] = (
                            r["pipelined_copy_GBps"] * 1e9 / bandwidth)
                    rows.append(r)
                    logging.info("%s %s", name, json.dumps(r))
                if "onnx" in formats:
                    r = bench_onnx(name, make, inputs, names, batch, dev.name, repeat, clock, Path(tmp))
                    rows.append(r)
                    logging.info("%s %s", name, json.dumps(r))
            result["models"][name] = rows
            out.write_text(json.dumps(result, indent=2) + "\n")  # as it goes: a cut-off run keeps its rows
            print(f"wrote {out} ({name})")


if __name__ == "__main__":
    main()
