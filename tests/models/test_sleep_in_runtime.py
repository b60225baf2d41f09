"""``POST /sleep`` on the real runtime process: /init, /run, /sleep, /run with the action's code
unchanged (its model objects, kept in globals, wake on their next call with the same results),
the caller check, and a runtime with no models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from owruntime.resident import HEADER, parse_header

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from runtime_support import RuntimeProcess, init_payload, run_payload  # noqa: E402

SECRET = "sleep-test-secret"
AUTH = {"X-OW-Runtime-Secret": SECRET}

# An ordinary action: loads its models once, keeps them in a global, knows nothing of sleep.
ACTION = """
import numpy as np
import torch
from owruntime.models import load

MODELS = {}

def main(args):
    if not MODELS:
        layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        module = torch.nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
        MODELS["torch"] = load(module, weights=args["weights"], device="cpu", mode="pipelined",
                               cache_dir=args["cache"])
        MODELS["onnx"] = load(args["onnx"], device="cpu", mode="pipelined", cache_dir=args["cache"])
    x = np.asarray(args["x"], dtype=np.float32)
    return {"ids": [id(MODELS["torch"]), id(MODELS["onnx"])],
            "torch": MODELS["torch"](torch.from_numpy(x)).tolist(),
            "onnx": MODELS["onnx"](x)[0].tolist()}
"""

NO_MODEL = """
def main(args):
    return {"ok": True}
"""


def test_models_sleep_and_the_next_run_wakes_them(zoo, tmp_path):
    spec = zoo["encoder"]
    runtime = RuntimeProcess(tmp_path / "rt", env={"OW_RUNTIME_SECRET": SECRET})
    try:
        assert runtime.post("/init", init_payload(ACTION), headers=AUTH).status == 200
        args = {"weights": str(spec.weights), "onnx": str(spec.onnx), "cache": str(tmp_path / "cache"),
                "x": spec.inputs(1)[0].tolist()}
        first = runtime.post("/run", run_payload(args), headers=AUTH)
        refused = [runtime.post("/sleep", {}, headers=h) for h in ({}, {"X-OW-Runtime-Secret": "guess"})]
        slept = runtime.post("/sleep", {}, headers=AUTH)
        second = runtime.post("/run", run_payload(args), headers=AUTH)
    finally:
        out, err = runtime.stop()
    assert first.status == 200, (first.raw, err[-3000:])
    awake = parse_header(first.headers[HEADER.lower()])
    assert len(awake.models) == 2 and awake.asleep == ()

    for r in refused:  # only the invoker may put the container to sleep
        assert r.status == 403 and "X-OW-Runtime-Secret" in r.json["error"], r.raw

    assert slept.status == 200, slept.raw
    answer = slept.json
    assert {a["key"] for a in answer["asleep"]} == {m.key for m in awake.models} and answer["kept"] == []
    by_key = {m.key: m for m in awake.models}
    torch_entry = next(a for a in answer["asleep"] if a["measured"])  # host-to-host copy: counted exactly
    nbytes = by_key[torch_entry["key"]].bytes
    assert nbytes <= torch_entry["freed"] < nbytes + 256 * 64 and nbytes > 0  # its one allocation, aligned
    assert answer["freed"] == {"cpu": sum(a["freed"] for a in answer["asleep"])}
    assert answer["host_bytes"] == sum(a["host_bytes"] for a in answer["asleep"]) > 0
    report = parse_header(slept.headers[HEADER.lower()])
    assert report.models == () and {m.key for m in report.asleep} == set(by_key)
    assert {m.key: m.bytes for m in report.asleep} == {k: m.bytes for k, m in by_key.items()}

    assert second.status == 200, (second.raw, err[-3000:])
    a, b = first.json, second.json
    assert a["ids"] == b["ids"]  # the same objects, woken: the action's code did nothing
    assert a["torch"] == b["torch"] and a["onnx"] == b["onnx"]
    woken = parse_header(second.headers[HEADER.lower()])
    assert {m.key for m in woken.models} == set(by_key) and woken.asleep == ()


def test_sleep_with_no_models_and_with_a_bad_body(tmp_path):
    runtime = RuntimeProcess(tmp_path / "rt")
    try:
        before_init = runtime.post("/sleep", "")
        assert runtime.init(init_payload(NO_MODEL)).status == 200
        run = runtime.run(run_payload({}))
        after_run = runtime.post("/sleep", {})
        bad = [runtime.post("/sleep", body) for body in ("[1]", "{not json")]
        still = runtime.run(run_payload({}))
    finally:
        runtime.stop()
    empty = {"asleep": [], "kept": [], "freed": {}, "host_bytes": 0}
    for r in (before_init, after_run):
        assert r.status == 200, r.raw
        assert {k: v for k, v in r.json.items() if k != "seconds"} == empty
        assert json.loads(r.headers[HEADER.lower()]) == {"models": []}
    assert run.status == 200
    for r in bad:
        assert r.status == 400 and "JSON object" in r.json["error"], r.raw
    assert still.status == 200 and still.json == {"ok": True}  # the action was left alone
