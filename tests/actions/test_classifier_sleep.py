"""The example image classifier (its zip as deploy.sh builds it, code unchanged) through the
pool on a declared GPU: it runs, the idle timer puts its container to sleep (its ONNX Runtime
sessions go; on the CPU what comes back is host memory), and the next call wakes it in the same
process with the same answer. GPU sleep, issue #20."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import pytest
from actions_support import ACTIONS
from pool_support import PythonOnly, Recorder, job

from invoker.containerpool.pool import ContainerPool, PoolConfig
from invoker.containerpool.process import ProcessContainerFactory
from invoker.containerpool.states import State
from invoker.entities import WhiskAction, action_document
from invoker.gpu.inventory import parse_declared
from invoker.gpu.layer import GpuLayer, GpuSettings

pytest.importorskip("onnxruntime")


def _built(directory) -> dict:
    done = subprocess.run([sys.executable, str(ACTIONS / "image-classifier" / "build.py"), "onnx", "--dir",
                           str(directory)], capture_output=True, text=True, timeout=300, check=True)

    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_classifier_sleeps_when_idle_and_wakes_with_the_same_answer(tmp_path, photos):
    built = _built(tmp_path / "models")
    code = base64.b64encode((tmp_path / "models" / "image-classifier.zip").read_bytes()).decode()
    doc = action_document("guest", "classifier", "python:3-gpu", None, True)
    doc["limits"].update(memory=1024)
    doc["_rev"] = "1-a"
    action = WhiskAction.from_document(doc, code)

    layer = GpuLayer.start(parse_declared("0:4GiB"), GpuSettings(reserved_mb=0, prewarm=(), sleep_after_s=0.5),
                           "auto", "nvidia-cuda-mps-control", tmp_path / "mps")
    pool = ContainerPool(ProcessContainerFactory(extra_env={"__OW_INVOKER": "classifiersleep"}), PythonOnly(),
                         PoolConfig(user_memory_mb=4096), gpu=layer)
    pool.start()
    try:
        sink = Recorder()
        args = {"image": base64.b64encode(photos["chelsea.png"].read_bytes()).decode(),
                "model_path": built["model_path"], "logits": True}
        first = job(action, sink, args)
        pool.run(first)
        before = sink.result(first, timeout_s=180)
        assert before["top"][0][0]["label"] in {"Egyptian cat", "tabby, tabby cat", "tiger cat"}
        (proxy,) = [p for p in pool._containers if p.action is not None]
        assert proxy.container.residency.models  # the loader registered the model
        deadline = time.monotonic() + 30
        while proxy.state is not State.ASLEEP:
            assert time.monotonic() < deadline, "not put to sleep by the idle timer"
            time.sleep(0.05)
        assert proxy.container.residency.models == () and len(proxy.container.residency.asleep) == 1
        second = job(action, sink, args)
        pool.run(second)
        after = sink.result(second, timeout_s=120)
        assert after == before  # the same sessions rebuilt from the same file: the same numbers
        assert (pool.counts.cold_starts, pool.counts.gpu_sleeps, pool.counts.gpu_wakes) == (1, 1, 1)
        assert proxy.container.residency.models and proxy.container.residency.asleep == ()
    finally:
        pool.shutdown()
        layer.stop()
