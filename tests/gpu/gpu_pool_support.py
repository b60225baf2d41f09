"""Helpers for driving the container pool with a GPU layer on the process backend:
real runtime processes, a declared GPU inventory (no GPU is touched)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pool_support import PythonOnly, Recorder, job, make_action

from invoker.containerpool.pool import ContainerPool
from invoker.entities import WhiskAction

__all__ = ["PROBE", "GpuWatch", "PythonOnly", "Recorder", "gpu_action", "job", "wait_until"]

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




def gpu_action(name: str, memory: int = 256, gpu: dict | None = None, kind: str = "python:3-gpu",
               code: str = PROBE) -> WhiskAction:
    annotations = [{"key": "gpu", "value": gpu}] if gpu is not None else None
    return make_action(name, memory=memory, code=code, kind=kind, annotations=annotations)



def wait_until(condition: Callable[[], bool], timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class GpuWatch:
    """Samples, every few ms, the GPU memory of every live GPU container the pool ever
    had (removed ones included, until their process is really gone) against capacity. A
    container holds its GPU charge (an asleep one: what it still holds), the last seen once
    it has none (removed, process not yet gone)."""

    def __init__(self, pool: ContainerPool) -> None:
        self.pool = pool
        self.seen: set = set()
        self.held: dict = {}  # proxy -> its GPU charge when last seen
        self.worst: dict[str, int] = {}
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        ledger = self.pool.gpu_placer.ledger
        while not self._stop.wait(0.005):
            with self.pool._lock:
                self.seen.update(p for p in self.pool._containers if p.gpu is not None)
                for proxy in self.seen:
                    charge = ledger.charge(proxy)
                    if charge is not None:
                        self.held[proxy] = charge.memory_mb
                committed = {g: ledger.committed_mb(g) for g in ledger.devices}
                capacity = {g: ledger.capacity_mb(g) for g in ledger.devices}
            live: dict[str, int] = {}
            for proxy in list(self.seen):
                if proxy.container is not None and proxy.container.is_alive():
                    held = self.held.get(proxy, proxy.gpu.memory_mb)
                    live[proxy.gpu.gpu] = live.get(proxy.gpu.gpu, 0) + held
            for gpu, cap in capacity.items():
                self.worst[gpu] = max(self.worst.get(gpu, 0), live.get(gpu, 0))
                if committed[gpu] > cap:
                    self.violations.append(f"GPU {gpu}: committed {committed[gpu]} > {cap}")
                if live.get(gpu, 0) > cap:
                    self.violations.append(f"GPU {gpu}: live containers hold {live[gpu]} > {cap}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
