"""Helpers for driving the container pool with a GPU layer on the process backend:
real runtime processes, a declared GPU inventory (no GPU is touched)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from invoker.containerpool.pool import ContainerPool, ImageResolver
from invoker.containerpool.proxy import Job
from invoker.embedded.controller import action_document, new_identity
from invoker.entities import WhiskAction
from invoker.messages import (
    ActivationMessage,
    ControllerInstanceId,
    FullyQualifiedEntityName,
    TransactionId,
)

# Reports where it ran. ``load`` registers a model in the runtime's resident registry as the
# model library does; the device string is only what the runtime reports (nothing is loaded).
PROBE = """
import os, sys, time
from owruntime.resident import REGISTRY

def main(args):
    time.sleep(args.get("sleep", 0))
    if args.get("load"):
        REGISTRY.register(args["load"], "cuda:0", 1000)
    return {
        "pid": os.getpid(),
        "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "env": {k: v for k, v in os.environ.items() if k.startswith("CUDA_MPS_") or k == "OW_GPU_PREWARM"},
        "torch_loaded": "torch" in sys.modules,
    }
"""


class PythonOnly(ImageResolver):
    def image_for(self, kind: str) -> str:
        if not kind.startswith("python"):
            raise KeyError(kind)
        return "owruntime"


class Recorder:
    def __init__(self) -> None:
        self.results: dict[str, object] = {}
        self.done = threading.Condition()

    def result_ready(self, job, activation) -> None:
        pass

    def completed(self, job, activation) -> None:
        with self.done:
            self.results[job.msg.activation_id] = activation
            self.done.notify_all()

    def wait_for(self, job: Job, timeout_s: float = 60):
        deadline = time.monotonic() + timeout_s
        with self.done:
            while job.msg.activation_id not in self.results:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"activation {job.msg.activation_id} did not finish"
                self.done.wait(remaining)
            return self.results[job.msg.activation_id]

    def result(self, job: Job, timeout_s: float = 60) -> dict:
        activation = self.wait_for(job, timeout_s)
        assert activation.response.status_code == 0, activation.response.result
        return activation.response.result


def gpu_action(name: str, memory: int = 256, gpu: dict | None = None, kind: str = "python:3-gpu",
               code: str = PROBE) -> WhiskAction:
    doc = action_document("guest", name, kind, None, False)
    doc["limits"]["memory"] = memory
    doc["_rev"] = "1-a"
    if gpu is not None:
        doc["annotations"] = [{"key": "gpu", "value": gpu}]
    return WhiskAction.from_document(doc, code)


_user = new_identity()


def job(action: WhiskAction, sink: Recorder, args: dict | None = None) -> Job:
    msg = ActivationMessage(
        transid=TransactionId.new("t" * 32, int(time.time() * 1000)),
        action=FullyQualifiedEntityName("guest", action.name, "0.0.1"),
        revision=action.rev, user=_user, activation_id=f"{time.time_ns():032x}"[-32:],
        root_controller_index=ControllerInstanceId("0"), blocking=True,
    )
    return Job(msg=msg, action=action, arguments=args or {}, init_env={}, sink=sink)


def wait_until(condition: Callable[[], bool], timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class GpuWatch:
    """Samples, every few ms, the GPU memory of every live GPU container the pool ever
    had (removed ones included, until their process is really gone) against capacity."""

    def __init__(self, pool: ContainerPool) -> None:
        self.pool = pool
        self.seen: set = set()
        self.worst: dict[int, int] = {}
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        ledger = self.pool._ledger
        while not self._stop.wait(0.005):
            with self.pool._lock:
                self.seen.update(p for p in self.pool._containers if p.gpu is not None)
                committed = {g: ledger.committed_mb(g) for g in ledger.devices}
                capacity = {g: ledger.capacity_mb(g) for g in ledger.devices}
            live: dict[int, int] = {}
            for proxy in list(self.seen):
                if proxy.container.is_alive():
                    live[proxy.gpu.gpu] = live.get(proxy.gpu.gpu, 0) + proxy.gpu.memory_mb
            for gpu, cap in capacity.items():
                self.worst[gpu] = max(self.worst.get(gpu, 0), live.get(gpu, 0))
                if committed[gpu] > cap:
                    self.violations.append(f"GPU {gpu}: committed {committed[gpu]} > {cap}")
                if live.get(gpu, 0) > cap:
                    self.violations.append(f"GPU {gpu}: live containers hold {live[gpu]} > {cap}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
