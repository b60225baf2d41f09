"""Simulated containers behind the pool's own ``ContainerFactory``/``Container`` seam.

Each operation sleeps on the simulated clock for what ``CostTable`` says it costs:

- ``create``: the container start; ``wait_ready`` (a GPU stem cell): framework import and CUDA
  context; ``initialize``: /init, plus the import and context when no stem cell paid them;
- ``run``: the model's first load (cold) or a resume after a pause, the /run round trip, and
  the forward passes, stretched when the SM shares of the runs on the same GPU exceed 100 %
  (MPS: a container may use its ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``; more than the whole GPU
  is shared out in proportion, fixed for a run when it starts);
- ``suspend``/``resume``: instant (the pool holds ``pause_lock`` across them); the resume's cost
  is charged to the next run; ``destroy``: the engine's removal.

After its first run a container reports its model resident on its GPU (the runtime's
``X-OW-Resident``), so the pool's warm placement sees it as the real runtime would report it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import greenlet
from owruntime.resident import AsleepModel, Residency, ResidentModel

from invoker.containerpool.container import (
    Container,
    ContainerFactory,
    ContainerSpec,
    HttpOutcome,
    SleepReport,
)
from invoker.containerpool.logs import LogBuffer
from sim.costs import CostTable
from sim.kernel import SimClock
from sim.workload import Function

_OK = b'{"ok":true}'


@dataclass
class GpuShares:
    """SM shares of the runs in progress, per GPU of one node."""

    running: dict[int, int] = field(default_factory=dict)
    busy_s: dict[int, float] = field(default_factory=dict)  # GPU-seconds of forward passes done

    def slowdown(self, gpu: int, share: int) -> float:
        return max(1.0, (self.running.get(gpu, 0) + share) / 100)


class SimContainer(Container):
    def __init__(self, container_id: str, spec: ContainerSpec, factory: SimContainerFactory) -> None:
        # No super().__init__: there is no runtime process to talk HTTP to.
        self.id = container_id
        self.spec = spec
        self.logs = LogBuffer(0)
        self.residency = Residency()
        self._resident_header = None
        self._factory = factory
        self._alive = True
        self._warmed = False  # framework imported, CUDA context created
        self._loaded = False  # the model is on the GPU
        self._resume_due = False
        self._asleep = False  # the model waits in pinned host memory (GPU sleep)
        self.function: Function | None = None
        self.gpu = int(spec.gpu) if spec.gpu is not None else None
        self.sm_percent = int(spec.env.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "100"))

    def _sleep(self, seconds: float) -> None:
        self._factory.clock.sleep(seconds)

    def _outcome(self, start_ms: int) -> HttpOutcome:
        return HttpOutcome(start_ms, self._factory.clock.wall_ms(), status=200, body=_OK)

    def wait_ready(self, timeout_s: float) -> dict | None:
        cost = self._factory.costs.warm_up_s()
        if cost > timeout_s:
            self._sleep(timeout_s)
            return None
        self._sleep(cost)
        self._warmed = True
        return {"prewarm": ["torch"]}

    def initialize(self, payload: dict, timeout_s: float, max_body: int | None = None) -> HttpOutcome:
        start = self._factory.clock.wall_ms()
        costs = self._factory.costs
        self.function = self._factory.functions[payload["name"]]
        self._sleep(costs.runtime_init.value + (0.0 if self._warmed else costs.warm_up_s()))
        self._warmed = True
        return self._outcome(start)

    def run(self, payload: dict, timeout_s: float, max_body: int | None = None) -> HttpOutcome:
        start = self._factory.clock.wall_ms()
        costs, fn = self._factory.costs, self.function
        assert fn is not None, "run before init"
        before = costs.run_overhead.value
        if self._resume_due:
            before += costs.resume.value
            self._resume_due = False
        if not self._loaded:
            before += costs.cold_load_s(fn.model_bytes)
        elif self._asleep:
            before += costs.wake_from_host_s(fn.model_bytes)
        self._sleep(before)
        forward = costs.forward_s(fn.model_bytes, fn.passes)
        if self.gpu is None:
            self._sleep(forward)
        else:
            shares = self._factory.shares
            self._sleep_sharing(shares, forward * shares.slowdown(self.gpu, self.sm_percent))
            shares.busy_s[self.gpu] = shares.busy_s.get(self.gpu, 0.0) + forward
        if not self._loaded or self._asleep:
            self._loaded, self._asleep = True, False
            self.residency = Residency((ResidentModel(fn.fqn, "cuda:0", fn.model_bytes),))
        return self._outcome(start)

    def sleep(self, timeout_s: float) -> SleepReport:
        """GPU sleep (``POST /sleep``): the model's weights go to pinned host memory and its GPU
        memory comes back; the next run pays ``CostTable.wake_from_host_s``. Instant here: the
        pool holds ``pause_lock`` across this call and a job may wait on that lock (sim/kernel.py);
        the copy out (~0.1 s for 6 GB at the pinned bandwidth) is left out."""
        fn = self.function
        if fn is None or not self._loaded or self._asleep:
            return SleepReport(True)
        self._asleep = True
        self.residency = Residency((), {}, (AsleepModel(fn.fqn, "cuda:0", fn.model_bytes, fn.model_bytes,
                                                         fn.model_bytes),))
        entry = {"key": fn.fqn, "device": "cuda:0", "freed": fn.model_bytes, "host_bytes": fn.model_bytes,
                 "measured": True, "seconds": 0.0}
        return SleepReport(True, asleep=(entry,), freed={"cuda:0": fn.model_bytes}, host_bytes=fn.model_bytes)

    def _sleep_sharing(self, shares: GpuShares, seconds: float) -> None:
        gpu = self.gpu
        shares.running[gpu] = shares.running.get(gpu, 0) + self.sm_percent
        try:
            self._sleep(seconds)
        finally:
            shares.running[gpu] -= self.sm_percent

    def set_max_concurrency(self, n: int) -> None:
        pass

    def suspend(self) -> None:
        pass

    def resume(self) -> None:
        self._resume_due = True

    def destroy(self) -> None:
        if not self._alive:
            return
        self._alive = False
        self._factory.destroyed += 1
        if greenlet.getcurrent() is not self._factory.clock.kernel.hub:
            self._sleep(self._factory.costs.destroy.value)

    def is_alive(self) -> bool:
        return self._alive


class SimContainerFactory(ContainerFactory):
    name = "sim"

    def __init__(self, clock: SimClock, costs: CostTable, functions: dict[str, Function]) -> None:
        self.clock = clock
        self.costs = costs
        self.functions = functions
        self.shares = GpuShares()
        self._ids = itertools.count()
        self.created = 0
        self.destroyed = 0

    def create(self, spec: ContainerSpec) -> Container:
        self.clock.sleep(self.costs.container_create.value)
        self.created += 1
        return SimContainer(f"sim{next(self._ids)}", spec, self)

    def cleanup(self) -> None:
        pass


class SimMpsDaemon:
    """Stands in for ``invoker.gpu.mps.MpsDaemon`` so the real ``GpuLayer`` shares its GPUs
    through MPS as on a node: per-container SM and memory limits, 48 client slots per GPU. It
    always answers (the simulation has no daemon failures)."""

    def __init__(self) -> None:
        self.pipe_dir = Path("/sim/mps/pipe")
        self.log_dir = Path("/sim/mps/log")
        self.visible_devices: tuple[str, ...] = ()
        self.started_here = False

    def env(self) -> dict[str, str]:
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir), "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir)}

    def running(self) -> bool:
        return True

    def stop(self) -> None:
        pass
