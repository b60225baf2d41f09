"""In the real runtime process: an action's model stays resident across activations and the
runtime's registry lists it (what the server reports to the invoker)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from owruntime.models import load
from owruntime.models.digest import file_digest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from runtime_support import RuntimeProcess, init_payload, run_payload  # noqa: E402

ACTION = """
import dataclasses
import numpy as np
from owruntime.models import load
from owruntime.resident import REGISTRY

def main(args):
    model = load(args["path"], device="cpu", mode="pipelined", cache_dir=args["cache"])
    y = model(np.asarray(args["x"], dtype=np.float32))[0]
    return {"id": id(model), "y": y.tolist(),
            "resident": [dataclasses.asdict(m) for m in REGISTRY.models()]}
"""


def test_model_stays_resident_across_activations(zoo, tmp_path):
    spec = zoo["resnet"]
    x = spec.inputs(1)[0].numpy()
    plain = load(spec.onnx, mode="plain", cache=None)
    expected = plain(x)[0]
    plain.close()
    runtime = RuntimeProcess(tmp_path / "rt")
    try:
        assert runtime.init(init_payload(ACTION)).status == 200
        args = {"path": str(spec.onnx), "cache": str(tmp_path / "cache"), "x": x.tolist()}
        first, second = runtime.run(run_payload(args)), runtime.run(run_payload(args))
    finally:
        runtime.kill()
    assert first.status == 200 and second.status == 200, (first.raw, second.raw)
    a, b = first.json, second.json
    assert a["id"] == b["id"]  # the second activation found the model loaded
    assert b["resident"] == [{"key": file_digest(spec.onnx), "device": "cpu",
                              "bytes": a["resident"][0]["bytes"]}]
    assert b["resident"][0]["bytes"] > 0
    np.testing.assert_allclose(np.asarray(a["y"]), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(b["y"]), expected, rtol=1e-4, atol=1e-5)
