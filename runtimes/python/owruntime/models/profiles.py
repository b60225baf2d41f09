"""Measured stage costs kept on disk, per model key, device kind and batch size.

``store_profile`` measures a loaded pipelined model (:meth:`measure` of a Torch or ONNX model)
and writes the :class:`CostModel`; a later ``load()`` of the same model for that device and
batch size (and no ``partition`` argument) reads it and partitions its first call by it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .devices import Device
from .partition import CostModel, StageCost


def profile_path(cache_dir: Path, key: str, device: Device, batch_size: int) -> Path:
    name = hashlib.sha256(key.encode()).hexdigest()[:32]
    return cache_dir / "profiles" / f"{name}-{device.kind}-b{batch_size}.json"


def save_profile(path: Path, cost: CostModel) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({
        "bandwidth": cost.bandwidth, "batch_size": cost.batch_size, "order": list(cost.order),
        "stages": [s.__dict__ for s in cost.stages],
    }))
    os.replace(tmp, path)


def read_profile(path: Path) -> CostModel | None:
    try:
        d = json.loads(path.read_text())
        return CostModel(tuple(StageCost(**s) for s in d["stages"]), d["bandwidth"],
                         d["batch_size"], tuple(d.get("order", ())))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_profile(model: Any, *args: Any, batch_size: int, bandwidth: float) -> CostModel:
    """Measure a model returned by ``load()`` (pipelined) on these inputs and keep the costs."""
    where = getattr(model, "profile_home", None)
    if where is None:
        raise ValueError("this model has no profile key: load it with a weights file, a key, "
                         "or from an ONNX file")
    cost = model.measure(*args, batch_size=batch_size, bandwidth=bandwidth)
    save_profile(profile_path(where[0], where[1], model.device, batch_size), cost)
    return cost
