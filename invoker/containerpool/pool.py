"""The container pool: which container runs which activation (PROTOCOL.md §6.2).

For each job, in order: a warm container of the same (invocation namespace,
action) with free concurrency; a prewarmed stem cell of the same kind and
memory; a new container if the memory fits; the same after evicting idle warm
containers, least recently used first; otherwise the job waits in the FIFO run
buffer of the resource it waits for (head of line, so big actions are not starved).
There is one buffer for host memory and one per GPU, so a job waiting for GPU memory
never holds up CPU work that fits. Memory is always the action's ``limits.memory``,
never what the container really uses, kept as keyed reservations (``MemoryLedger``).

Every job has one release point: ``_execute`` holds a ``_Lease`` on what the job took
(the cold start's reservations, the claimed container) and gives it back in ``finally``,
whatever was raised; every function handed to the executor goes through ``_submit``,
which logs a failure instead of losing it.

GPU actions (a ``-gpu`` kind, when the pool has a ``GpuLayer``) are placed on a GPU as
well: a warm container of the same action, preferring one whose runtime reports a model
resident on a GPU (``X-OW-Resident``); else a GPU stem cell of the same kind, memory and
GPU request, on the GPU with the most free GPU memory and the least load; else a cold
start on such a GPU, after evicting idle warm GPU containers there (least recently used)
when that makes room; else the job waits. GPU memory is admitted by the action's GPU
request (``invoker.gpu.request``) and never over-committed: an evicted container's GPU
memory counts as used until the container is really gone.

GPU sleep (issue #20, ``invoker.gpu.sleep``): an idle warm GPU container whose runtime reports
models can be put to sleep (``POST /sleep``): SLEEPING, then ASLEEP, its GPU charge shrunk to
what it still holds (its context and any model kept awake) once the runtime has answered, its
MPS client slot still taken, the host memory of its models counted against
``GpuSettings.sleep_host_budget_mb`` (least recently used asleep containers removed beyond it).
Placement for a GPU action: awake with the model > asleep with the model (its charge grown back
to the request under the lock before its job's ``/run`` wakes it; no room: room is made or the
job waits, as for a cold start) > stem cell > cold start. To make room, idle warm GPU containers
are put to sleep, least recently used first, before any is destroyed, and those that cannot
sleep are destroyed before those that can (``_room_plan``); what a sleep under way will free
counts as on its way, like a removal. Idle for ``sleep_after_s``, a GPU container
sleeps without pressure; ``idle_timeout_s`` still removes it.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from invoker.clock import SYSTEM_CLOCK, Clock
from invoker.containerpool.container import (
    ContainerFactory,
    ContainerSpec,
    SleepReport,
    now_ms,
)
from invoker.containerpool.memory import MemoryLedger
from invoker.containerpool.proxy import (
    ContainerProxy,
    Job,
    Messages,
    PoolLimits,
    State,
)
from invoker.entities import ActivationResponse, LimitBounds, WhiskAction, instant_activation
from invoker.gpu import locality
from invoker.gpu.layer import GpuLayer, GpuPlacement, GpuStemCell
from invoker.gpu.ledger import Charge, GpuLedger, has_room
from invoker.gpu.request import ANNOTATION as GPU_ANNOTATION
from invoker.gpu.request import (
    RESOURCES_ANNOTATION,
    GpuRequest,
    GpuRequestError,
    is_gpu_kind,
    needs_gpu,
    parse_request,
)
from invoker.gpu.sleep import asleep_charge_mb, expected_charge_mb, host_mb
from invoker.supervision import SupervisedThread, log_failure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StemCellConfig:
    kind: str
    memory_mb: int
    count: int


@dataclass(frozen=True)
class PoolConfig:
    user_memory_mb: int = 1024
    pause_grace_s: float = 10.0
    idle_timeout_s: float = 600.0
    stem_cells: tuple[StemCellConfig, ...] = ()
    limits: PoolLimits = field(default_factory=PoolLimits)
    bounds: LimitBounds = field(default_factory=LimitBounds)
    max_workers: int = 64
    container_prefix: str = "wsk0"


class ImageResolver:
    """Maps a kind to the image its containers run; raises KeyError for an unknown kind."""

    def image_for(self, kind: str) -> str:
        raise NotImplementedError


def sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "", name.replace("/", "_").replace("@", "_"))


MSG_MPS_DOWN = ("GPU sharing (MPS) is down on this invoker: it admits no GPU activation until it is back; "
                "the controller sends GPU work elsewhere meanwhile.")


class ContainerPool:
    def __init__(self, factory: ContainerFactory, images: ImageResolver, config: PoolConfig,
                 gpu: GpuLayer | None = None,
                 on_fatal: Callable[[BaseException], None] = lambda error: None,
                 clock: Clock = SYSTEM_CLOCK, executor: Executor | None = None) -> None:
        # ``clock`` and ``executor`` are seams for the cluster simulator (sim/): simulated time,
        # and jobs run as green threads on it. By default: the machine's clock, own threads.
        self.factory = factory
        self.clock = clock
        self.images = images
        self.config = config
        self.gpu = gpu
        self._ledger = GpuLedger(gpu.inventory, gpu.settings.reserved_mb, gpu.client_limits()) if gpu else None
        self._lock = threading.Lock()
        self._containers: list[ContainerProxy] = []  # every live container, prewarms included
        # Owners of host memory: live containers, cold-start placeholders, stem cells starting.
        self._memory = MemoryLedger()
        # Host memory the models of asleep GPU containers hold (their key: the proxy). Not part
        # of ``_memory``: a container's host memory is already reserved whole by its
        # ``limits.memory`` (its pinned weight buffer is inside that limit, awake or asleep), so
        # adding it again would count it twice. This is a budget of its own on top: how much of
        # the node's memory may be idle weights.
        self._asleep_host = MemoryLedger()
        # One FIFO run buffer per resource: CPU_BUFFER (host memory) and one per GPU.
        self._buffers: dict[str, deque[_Waiting]] = {CPU_BUFFER: deque()}
        self._arrivals = itertools.count()
        self._executor = executor if executor is not None else ThreadPoolExecutor(
            max_workers=config.max_workers, thread_name_prefix="activation")
        self._seq = itertools.count()
        self._stop = threading.Event()
        # Idling, pausing and draining stop if the janitor does: restarted, or fatal (no pings).
        self._janitor = SupervisedThread("pool-janitor", self._janitor_loop, on_fatal, stop=self._stop)
        if gpu is not None:
            gpu.listeners.append(self._on_mps_change)
        self.cold_starts = 0
        self.prewarm_starts = 0
        self.warm_starts = 0
        self.gpu_evictions = 0  # idle warm GPU containers removed to make room on their GPU
        self.gpu_waits = 0  # GPU jobs that had to wait for GPU memory
        self.gpu_refused = 0  # GPU jobs refused: the request exceeds every GPU
        self.gpu_sleeps = 0  # GPU containers put to sleep
        self.gpu_wakes = 0  # asleep GPU containers claimed by a job (its /run wakes the models)
        self.gpu_sleep_failures = 0  # sleeps that gave nothing back (failed, timed out, nothing to sleep)
        self.gpu_sleep_removals = 0  # asleep containers removed: over the host budget for sleeping models

    # ------------------------------------------------------------------ lifecycle

    def start(self, janitor: bool = True) -> None:
        """``janitor=False``: no janitor thread; the caller calls ``tick`` (the simulator)."""
        self.factory.cleanup()
        if janitor:
            self._janitor.start()
        self._replenish_stem_cells()

    def shutdown(self) -> None:
        self._stop.set()
        self._executor.shutdown(wait=True, cancel_futures=False)
        with self._lock:
            containers = list(self._containers)
            self._containers.clear()
        for proxy in containers:
            proxy.container.destroy()
        self.factory.close()

    # ------------------------------------------------------------------ accounting

    def _used_mb(self) -> int:
        return self._memory.used_mb

    def _buffered(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    @property
    def free_memory_mb(self) -> int:
        with self._lock:
            return self.config.user_memory_mb - self._used_mb()

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "containers": [repr(p) for p in self._containers],
                "buffered": self._buffered(),
                "used_mb": self._used_mb(),
                "memory_owners": len(self._memory.owners()),
                "user_memory_mb": self.config.user_memory_mb,
                "cold_starts": self.cold_starts,
                "prewarm_starts": self.prewarm_starts,
                "warm_starts": self.warm_starts,
            }

    @property
    def buffered(self) -> int:
        with self._lock:
            return self._buffered()

    # ------------------------------------------------------------------ scheduling

    def run(self, job: Job) -> None:
        """Schedule a job; it runs now or waits in the run buffer of what it waits for."""
        refusal = self._refusal(job.action)
        if refusal is not None:
            self._fail(job, refusal)
            return
        with self._lock:
            waiting = self._waiting_buffer(job)  # never overtake a job waiting for the same resource
            placed = self._place(job) if waiting is None else waiting
            if isinstance(placed, str):
                self._buffers.setdefault(placed, deque()).append(_Waiting(next(self._arrivals), job))
                return
        self._submit(self._execute, placed, job)

    def _refusal(self, action: WhiskAction) -> ActivationResponse | None:
        """Why an action can never run here (limits out of bounds, larger than the pool, a bad
        or too large GPU request), or None. Checked before anything is reserved."""
        problem = self.config.bounds.violation(action.limits, action.code)
        if problem is not None:
            log.warning("refused %s: %s", action.path, problem)
            return ActivationResponse.whisk_error(problem)
        if action.limits.memory_mb > self.config.user_memory_mb:
            # It could never fit: answer instead of blocking the buffer forever.
            return ActivationResponse.whisk_error(Messages.resource_error)
        if self._is_gpu(action):
            return self._gpu_refusal(action)
        return None

    def _waiting_buffer(self, job: Job) -> str | None:
        """The buffer a new job must queue in behind others (lock held): the CPU buffer for a
        CPU job; for a GPU job, its GPU's buffer when any GPU job waits. None: try placing it."""
        if not self._is_gpu(job.action):
            return CPU_BUFFER if self._buffers[CPU_BUFFER] else None
        if not any(b for key, b in self._buffers.items() if key != CPU_BUFFER):
            return None
        return _gpu_buffer(self._gpu_target(self._gpu_request(job.action).memory_mb))

    @staticmethod
    def _serves(proxy: ContainerProxy, job: Job) -> bool:
        """Whether a warm container is the job's: same invocation namespace, same action."""
        return (proxy.action is not None and proxy.namespace == job.invocation_namespace
                and proxy.action.identity_key == job.action.identity_key)

    def _place(self, job: Job) -> ContainerProxy | str:
        """Pick a container for the job (lock held). Returns a proxy with ``active``
        already incremented, or a new placeholder proxy for a cold start (holding its
        memory reservation), or the name of the run buffer to wait in."""
        action = job.action
        namespace = job.invocation_namespace
        warm = [p for p in self._containers if self._serves(p, job) and p.has_capacity()]
        if warm:
            proxy = max(warm, key=lambda p: (_holds_gpu_model(p), p.initialized, p.active, p.last_used))
            self._claim(proxy, job)
            self.warm_starts += 1
            return proxy
        if self._is_gpu(action):
            return self._place_gpu(job)
        memory = action.limits.memory_mb
        stem = next(
            (p for p in self._containers if p.is_prewarm and p.state is State.STARTED
             and p.kind == action.kind and p.memory_mb == memory),
            None,
        )
        if stem is not None:
            stem.bind(action, namespace)
            self._claim(stem, job)
            self.prewarm_starts += 1
            self._submit(self._replenish_stem_cells)
            return stem
        if self._used_mb() + memory > self.config.user_memory_mb:
            self._evict(memory - (self.config.user_memory_mb - self._used_mb()))
        if self._used_mb() + memory > self.config.user_memory_mb:
            return CPU_BUFFER
        placeholder = _ColdStart(action.kind, memory)
        self._memory.commit(placeholder, memory)
        self.cold_starts += 1
        return placeholder

    # ------------------------------------------------------------------ GPU placement

    def _is_gpu(self, action: WhiskAction) -> bool:
        return self.gpu is not None and needs_gpu(action.kind, action.annotation(RESOURCES_ANNOTATION))

    def _gpu_request(self, action: WhiskAction) -> GpuRequest:
        return parse_request(action.annotation(GPU_ANNOTATION), action.limits.memory_mb)

    def _gpu_refusal(self, action: WhiskAction) -> ActivationResponse | None:
        """Why a GPU action can never run here (bad request, bigger than every GPU), or None."""
        assert self._ledger is not None and self.gpu is not None
        if not self.gpu.admitting():
            return ActivationResponse.whisk_error(MSG_MPS_DOWN)
        try:
            request = self._gpu_request(action)
        except GpuRequestError as error:
            return ActivationResponse.developer_error(f"The action's GPU request is invalid: {error}.")
        with self._lock:
            fits = self._ledger.fits_anywhere(request.memory_mb)
            if not fits:
                self.gpu_refused += 1
                largest = max((self._ledger.capacity_mb(g) for g in self._ledger.devices), default=0)
        if not fits:
            log.warning("refused %s: GPU request %d MB, largest GPU admits %d MB",
                        action.path, request.memory_mb, largest)
            return ActivationResponse.developer_error(
                f"The action's GPU memory request of {request.memory_mb} MB exceeds what any GPU of this "
                f"invoker can admit ({largest} MB)."
            )
        return None

    def _gpu_loads(self) -> dict[int, int]:
        loads: dict[int, int] = {}
        for proxy in self._containers:
            if proxy.gpu is not None:
                loads[proxy.gpu.gpu] = loads.get(proxy.gpu.gpu, 0) + proxy.active
        return loads

    def _placement(self, gpu: int, request: GpuRequest) -> GpuPlacement:
        assert self.gpu is not None
        return GpuPlacement(gpu, self.gpu.device(gpu), request.memory_mb, request.sm_on(self.gpu.memory_total_mb(gpu)))

    def _gpu_target(self, request_mb: int) -> int:
        """The GPU a waiting GPU job queues for: of those large enough, the one with the most
        memory free or on its way (lock held)."""
        assert self._ledger is not None
        ledger = self._ledger
        large = [g for g in ledger.devices if ledger.capacity_mb(g) >= request_mb] or list(ledger.devices)
        return max(large, key=lambda g: (ledger.free_mb(g) + ledger.releasing_mb(g), -g))

    def _place_gpu(self, job: Job) -> ContainerProxy | str:
        """Stem cell, else cold start on a GPU that admits the request, else the buffer of
        the GPU it waits for (lock held)."""
        assert self._ledger is not None
        action = job.action
        request = self._gpu_request(action)
        memory = action.limits.memory_mb
        loads = self._gpu_loads()
        ledger = self._ledger
        woken = self._place_asleep(job)
        if woken is not None:
            return woken
        stems = [
            p for p in self._containers
            if p.is_prewarm and p.state is State.STARTED and p.gpu is not None and not self.gpu.paused(p.gpu.gpu)
            and p.kind == action.kind and p.memory_mb == memory
            and p.gpu == self._placement(p.gpu.gpu, request)  # its MPS limits are the action's
        ]
        if stems:
            stem = min(stems, key=lambda p: (-ledger.free_mb(p.gpu.gpu), loads.get(p.gpu.gpu, 0)))
            stem.bind(action, job.invocation_namespace)
            self._claim(stem, job)
            self.prewarm_starts += 1
            self._submit(self._replenish_stem_cells)
            return stem
        candidates = [g for g in ledger.candidates(request.memory_mb, loads) if not self.gpu.paused(g)]
        if not candidates:
            target = self._make_room(request.memory_mb, loads)
            self.gpu_waits += 1
            # Drained once the evicted containers are gone, or when memory frees.
            return _gpu_buffer(self._gpu_target(request.memory_mb) if target is None else target)
        if self._used_mb() + memory > self.config.user_memory_mb:
            self._evict(memory - (self.config.user_memory_mb - self._used_mb()))
        if self._used_mb() + memory > self.config.user_memory_mb:
            return _gpu_buffer(candidates[0])
        placeholder = _ColdStart(action.kind, memory, self._placement(candidates[0], request))
        self._memory.commit(placeholder, memory)
        ledger.commit(placeholder, candidates[0], request.memory_mb)
        self.cold_starts += 1
        return placeholder

    def _place_asleep(self, job: Job) -> ContainerProxy | str | None:
        """An asleep container of the job's action, woken: its charge grown back to its request
        first (lock held). Its GPU has no room: room is made there (sleeps, removals) and the
        job waits in that GPU's buffer; none can be made: None (a stem cell or a cold start
        elsewhere). A container of the action going to sleep: the job waits for it."""
        assert self._ledger is not None and self.gpu is not None
        ledger = self._ledger
        mine = [p for p in self._containers if p.state in (State.ASLEEP, State.SLEEPING) and self._serves(p, job)
                and not self.gpu.paused(p.gpu.gpu)]
        for proxy in sorted((p for p in mine if p.state is State.ASLEEP), key=lambda p: -p.last_used):
            if ledger.can_grow(proxy, proxy.gpu.memory_mb):
                ledger.resize(proxy, proxy.gpu.memory_mb)  # before its /run wakes the models
                self._asleep_host.release(proxy)
                proxy.sleep = None
                self._claim(proxy, job)
                self.gpu_wakes += 1
                self.warm_starts += 1
                return proxy
            grow = proxy.gpu.memory_mb - ledger.charge(proxy).memory_mb
            plan = self._room_plan(proxy.gpu.gpu, grow, new_client=False, spare=proxy)
            if plan is not None:
                self._carry_out(plan)
                self.gpu_waits += 1
                return _gpu_buffer(proxy.gpu.gpu)
        sleeping = [p for p in mine if p.state is State.SLEEPING]
        if sleeping:
            self.gpu_waits += 1
            return _gpu_buffer(sleeping[0].gpu.gpu)  # placed on it once its sleep has ended
        return None

    def _make_room(self, needed_mb: int, loads: dict[int, int]) -> int | None:
        """Make room for a new container of ``needed_mb`` on the one GPU where that takes the
        fewest removals, then the fewest sleeps; nothing if no GPU can. Returns the GPU where
        room is coming, or None."""
        assert self._ledger is not None
        ledger = self._ledger
        best: tuple[tuple, _RoomPlan] | None = None
        for gpu in ledger.devices:
            plan = self._room_plan(gpu, needed_mb, new_client=True)
            if plan is None:
                continue
            if not plan.sleeps and not plan.removals:
                return gpu  # room is already on its way: wait for it, take nothing more
            rank = (len(plan.removals), len(plan.sleeps), -ledger.free_mb(gpu), loads.get(gpu, 0))
            if best is None or rank < best[0]:
                best = (rank, plan)
        if best is None:
            return None
        self._carry_out(best[1])
        return best[1].gpu

    def _room_plan(self, gpu: int, needed_mb: int, new_client: bool,
                   spare: ContainerProxy | None = None) -> _RoomPlan | None:
        """How ``needed_mb`` (and a client slot, for a ``new_client``) becomes free on ``gpu``
        (lock held): nothing when it is free or on its way; else idle warm containers holding
        models put to sleep, least recently used first; where that is not enough (a sleep frees
        memory, never its MPS client slot), removals as well, in this order: idle warm containers
        that cannot sleep, asleep ones, idle stem cells (so that stem cells of another request
        class can never keep a job waiting for good), and last those that could sleep, each
        least recently used first. None: nothing makes room. ``spare``: never touched."""
        assert self._ledger is not None and self.gpu is not None
        ledger = self._ledger
        if ledger.capacity_mb(gpu) < needed_mb:
            return None
        available = ledger.free_mb(gpu) + ledger.releasing_mb(gpu)
        slots = ledger.free_clients(gpu) if new_client else None  # MPS client slots (None: no limit)
        if slots is not None:
            slots += ledger.releasing_clients(gpu)
        if has_room(available, slots, needed_mb):
            return _RoomPlan(gpu)
        on_gpu = [p for p in self._containers
                  if p.gpu is not None and p.gpu.gpu == gpu and p.active == 0 and p is not spare
                  and p.state not in (State.REMOVING, State.SLEEPING)]
        idle = sorted((p for p in on_gpu if not p.is_prewarm), key=lambda p: p.last_used)
        can_sleep = [p for p in idle if self._sleepable(p)] if self.gpu.settings.sleep_on_pressure else []
        sleeps: list[ContainerProxy] = []
        for proxy in can_sleep:
            if available >= needed_mb:
                break
            sleeps.append(proxy)
            available += self._sleep_frees_mb(proxy)
        removable = ([p for p in idle if p not in can_sleep and p.state is not State.ASLEEP]
                     + [p for p in idle if p.state is State.ASLEEP]
                     + [p for p in on_gpu if p.is_prewarm and p.state is State.STARTED]
                     + can_sleep)
        removals: list[ContainerProxy] = []
        for proxy in removable:
            if has_room(available, slots, needed_mb):
                break
            if proxy in sleeps:  # removed instead of put to sleep
                sleeps.remove(proxy)
                available -= self._sleep_frees_mb(proxy)
            removals.append(proxy)
            available += ledger.charge(proxy).memory_mb  # asleep: its shrunk charge
            slots = None if slots is None else slots + 1
        if not has_room(available, slots, needed_mb):
            return None
        # Sleeps that became needless once others were removed are not started.
        while sleeps and has_room(available - self._sleep_frees_mb(sleeps[-1]), slots, needed_mb):
            available -= self._sleep_frees_mb(sleeps.pop())
        return _RoomPlan(gpu, sleeps=tuple(sleeps), removals=tuple(removals))

    def _sleep_frees_mb(self, proxy: ContainerProxy) -> int:
        """What putting an awake container to sleep is expected to free on its GPU."""
        assert self._ledger is not None
        return self._ledger.charge(proxy).memory_mb - self._expected_asleep_mb(proxy)

    def _carry_out(self, plan: _RoomPlan) -> None:
        for proxy in plan.sleeps:
            log.info("putting idle %s to sleep on GPU %d to make room", proxy, plan.gpu)
            self._start_sleep(proxy)
        for proxy in plan.removals:
            log.info("evicting idle %s from GPU %d to make room", proxy, plan.gpu)
            self.gpu_evictions += 1
            self._remove_locked(proxy)

    # ------------------------------------------------------------------ GPU sleep

    def _sleepable(self, proxy: ContainerProxy) -> bool:
        """An idle warm GPU container whose runtime reports models, not known to refuse."""
        return (proxy.gpu is not None and not proxy.is_prewarm and proxy.active == 0
                and proxy.state in (State.READY, State.PAUSED) and not proxy.sleepless
                and bool(proxy.container.residency.models))

    def _expected_asleep_mb(self, proxy: ContainerProxy) -> int:
        assert self._ledger is not None and self.gpu is not None
        return expected_charge_mb(self._ledger.charge(proxy).memory_mb, self.gpu.settings.sleep_context_mb)

    def _start_sleep(self, proxy: ContainerProxy) -> None:
        """SLEEPING (lock held): what it should free counts as on its way until it answers."""
        assert self._ledger is not None
        proxy.move_to(State.SLEEPING)
        self._ledger.mark_shrinking(proxy, self._expected_asleep_mb(proxy))
        self._submit(self._sleep, proxy)

    def _sleep(self, proxy: ContainerProxy) -> None:
        """``POST /sleep`` (a paused container resumed first); the result is booked in
        ``_slept``, whatever happens here."""
        assert self.gpu is not None
        report = SleepReport(False, problem="not sent")
        try:
            with proxy.pause_lock:
                if proxy.suspended:
                    proxy.container.resume()
                    proxy.suspended = False
                report = proxy.container.sleep(self.gpu.settings.sleep_timeout_s)
        except Exception as error:  # a backend that cannot resume it: it cannot run either
            log.warning("sleep of %s failed: %s", proxy.container.id, error)
            report = SleepReport(False, problem=f"{type(error).__name__}: {error}")
            with self._lock:
                if proxy.state is State.SLEEPING:
                    self._remove_locked(proxy)
        finally:
            with self._lock:
                self._slept(proxy, report)
            self._drain()

    def _slept(self, proxy: ContainerProxy, report: SleepReport) -> None:
        """Book a sleep's answer (lock held): the charge shrinks only now, to what the runtime
        says it still holds; nothing given back: awake again, not tried until it runs."""
        assert self._ledger is not None and self.gpu is not None
        if proxy.state is not State.SLEEPING:
            return  # removed meanwhile: its removal released everything
        settings = self.gpu.settings
        if not report.slept:
            self._ledger.mark_shrinking(proxy, None)
            proxy.sleepless = True
            self.gpu_sleep_failures += 1
            proxy.move_to(State.READY)
            log.info("%s did not go to sleep (%s): %s", proxy, report.problem or "nothing to sleep",
                     [k.get("reason") for k in report.kept])
            return
        held, measured = asleep_charge_mb(self._ledger.charge(proxy).memory_mb, report,
                                          proxy.container.residency, settings.sleep_context_mb)
        self._ledger.resize(proxy, held)
        self._asleep_host.commit(proxy, host_mb(report, proxy.container.residency))
        proxy.sleep = _Asleep(report, held, measured)
        proxy.move_to(State.ASLEEP)
        self.gpu_sleeps += 1
        log.info("%s asleep: holds %d MB on GPU %d (%s), %d host bytes", proxy, held, proxy.gpu.gpu,
                 "measured" if measured else "estimated", report.host_bytes)
        while self._asleep_host.used_mb > settings.sleep_host_budget_mb:
            oldest = min(self._asleep_host.owners(), key=lambda p: p.last_used)
            log.info("host budget for sleeping models (%d MB) exceeded: removing %s",
                     settings.sleep_host_budget_mb, oldest)
            self.gpu_sleep_removals += 1
            self._remove_locked(oldest)

    def _claim(self, proxy: ContainerProxy, job: Job) -> None:
        proxy.active += 1
        proxy.move_to(State.RUNNING)
        proxy.sleepless = False  # it may load models now
        proxy.last_used = self.clock.monotonic()

    def _evict(self, needed_mb: int) -> None:
        """Make ``needed_mb`` of host memory free by removing idle containers: warm ones, least
        recently used first, then idle stem cells (CPU and GPU), so that stem cells, which
        never go idle-timeout, cannot keep a job waiting for good. Nothing if that is not enough."""
        idle = sorted(
            (p for p in self._containers if not p.is_prewarm and p.active == 0 and p.state is not State.REMOVING),
            key=lambda p: p.last_used,
        )
        idle += [p for p in self._containers if p.is_prewarm and p.active == 0 and p.state is State.STARTED]
        freed = 0
        victims = []
        for proxy in idle:
            if freed >= needed_mb:
                break
            victims.append(proxy)
            freed += proxy.memory_mb
        if freed < needed_mb:
            return  # evicting would not make room: keep the warm containers
        for proxy in victims:
            self._remove_locked(proxy)

    def _remove_locked(self, proxy: ContainerProxy) -> None:
        """Take a container out of the pool and destroy it; at most once per container."""
        proxy.move_to(State.REMOVING)
        if proxy not in self._containers:
            return  # already removed
        self._containers.remove(proxy)
        self._memory.release(proxy)  # host memory is free at once, as in the Scala pool
        self._asleep_host.release(proxy)
        if self._ledger is not None and self._ledger.charge(proxy) is not None:
            self._ledger.mark_releasing(proxy)
            self._submit(self._destroy_gpu_container, proxy)
        else:
            self._submit(proxy.container.destroy)

    def _destroy_gpu_container(self, proxy: ContainerProxy) -> None:
        """Its GPU memory is free only once the container is gone."""
        try:
            proxy.container.destroy()
        finally:
            with self._lock:
                assert self._ledger is not None
                self._ledger.release(proxy)
            self._drain()  # waiting jobs first, then stem cells get what is left
            if not self._stop.is_set():
                self._replenish_stem_cells()

    # ------------------------------------------------------------------ execution

    def _spec(self, kind: str, memory_mb: int, label: str, placement: GpuPlacement | None = None,
              stem_cell: bool = False) -> ContainerSpec:
        image = self.images.image_for(kind)
        name = f"{self.config.container_prefix}_{next(self._seq)}_{sanitize(label)}"
        shares = max(1024 * memory_mb // max(self.config.user_memory_mb, 1), 2)
        labels = {"action": label}
        if placement is None or self.gpu is None:
            return ContainerSpec(name=name, kind=kind, image=image, memory_mb=memory_mb, cpu_shares=shares,
                                 labels=labels)
        return ContainerSpec(
            name=name, kind=kind, image=image, memory_mb=memory_mb, cpu_shares=shares, labels=labels,
            env=self.gpu.container_env(placement, stem_cell), gpu=placement.device_id,
            mounts=self.gpu.mounts(placement.gpu), user=self.gpu.container_user(placement.gpu),
        )

    def _execute(self, placed: ContainerProxy, job: Job) -> None:
        """Run one placed job. Whatever happens, its lease is settled once, in ``finally``."""
        lease = _Lease(placeholder=placed) if isinstance(placed, _ColdStart) else _Lease(proxy=placed)
        reusable = False
        try:
            if lease.placeholder is not None:
                self._cold_start(job, lease)
            elif not self._awake(placed):
                # Paused and could not be resumed, or died while idle: reschedule on another
                # container, as the Scala invoker does for warm ones.
                self._settle(lease, reusable=False)
                self.run(job)
                return
            assert lease.proxy is not None
            _, reusable = lease.proxy.execute(job, self.config.limits)
        except _StartFailed as error:
            log.warning("cold start of %s failed: %s", job.action.path, error.__cause__ or error)
            self._fail(job, ActivationResponse.whisk_error(Messages.resource_error))
        except Exception:  # an invoker bug must not lose the activation
            log.exception("activation %s failed inside the invoker", job.msg.activation_id)
            self._fail(job, ActivationResponse.whisk_error(Messages.abnormal_run))
            reusable = False
        finally:
            self._settle(lease, reusable)
            self._drain()

    def _cold_start(self, job: Job, lease: _Lease) -> None:
        """Create the job's container; on success the lease holds it (claimed) instead of the
        placeholder. Any failure raises ``_StartFailed``: the lease still holds the placeholder."""
        placed = lease.placeholder
        assert placed is not None
        action = job.action
        try:
            spec = self._spec(action.kind, action.limits.memory_mb, f"{job.invocation_namespace}_{action.name}",
                              placed.placement)
            container = self.factory.create(spec)
        except Exception as error:  # an engine that went away raises what it likes
            raise _StartFailed(str(error)) from error
        try:
            proxy = ContainerProxy(container, action.kind, action.limits.memory_mb, prewarmed=False,
                                   clock=self.clock)
            proxy.bind(action, job.invocation_namespace)
            proxy.gpu = placed.placement
        except Exception as error:
            self._submit(container.destroy)
            raise _StartFailed(str(error)) from error
        with self._lock:
            self._memory.move(placed, proxy)
            if self._ledger is not None and placed.placement is not None:
                self._ledger.move(placed, proxy)
            self._claim(proxy, job)
            self._containers.append(proxy)
            lease.placeholder, lease.proxy = None, proxy

    def _awake(self, proxy: ContainerProxy) -> bool:
        """Make a claimed warm container runnable: resume it if it was paused, waiting for a
        pause under way (``pause_lock``). False when it cannot run."""
        with proxy.pause_lock:
            if proxy.suspended:
                try:
                    proxy.container.resume()
                except Exception as error:
                    log.warning("resume of %s failed: %s", proxy.container.id, error)
                    return False
                proxy.suspended = False
        return proxy.container.is_alive()

    def _settle(self, lease: _Lease, reusable: bool) -> None:
        """Give back what a job holds, each item at most once."""
        with self._lock:
            placeholder, lease.placeholder = lease.placeholder, None
            if placeholder is not None:
                self._memory.release(placeholder)
                if self._ledger is not None:
                    self._ledger.release(placeholder)
            proxy, lease.proxy = lease.proxy, None
        if proxy is not None:
            self._release(proxy, reusable)

    def _release(self, proxy: ContainerProxy, reusable: bool) -> None:
        with self._lock:
            proxy.active = max(0, proxy.active - 1)
            proxy.last_used = self.clock.monotonic()
            if not reusable or not proxy.container.is_alive():
                if proxy.active == 0:
                    self._remove_locked(proxy)
                else:
                    proxy.move_to(State.REMOVING)  # destroyed once its other runs finish
                return
            if proxy.state is State.REMOVING:
                if proxy.active == 0:
                    self._remove_locked(proxy)
                return
            if proxy.active == 0:
                proxy.move_to(State.READY)

    def _drain(self) -> None:
        """Start buffered jobs while they fit: of every buffer's head, the oldest first."""
        while True:
            with self._lock:
                started = self._start_a_head()
            if started is None:
                return
            self._submit(self._execute, *started)

    def _start_a_head(self) -> tuple[ContainerProxy, Job] | None:
        heads = sorted(((b[0].arrival, key) for key, b in self._buffers.items() if b))
        for _, key in heads:
            buffer = self._buffers[key]
            placed = self._place(buffer[0].job)
            if not isinstance(placed, str):
                return placed, buffer.popleft().job
        return None

    def _on_mps_change(self, up: bool) -> None:
        """The MPS daemon went down: answer the GPU work waiting here (no GPU takes it now);
        it came back: start what waits."""
        if up:
            self._submit(self._drain)
            return
        assert self.gpu is not None
        if self.gpu.admitting():  # other GPUs (time-sliced) still take it
            return
        refused: list[Job] = []
        with self._lock:
            for key, buffer in self._buffers.items():  # GPU work waits in a GPU's buffer or for host memory
                kept = deque(w for w in buffer if not self._is_gpu(w.job.action))
                refused += [w.job for w in buffer if self._is_gpu(w.job.action)]
                self._buffers[key] = kept
        for job in refused:
            self._fail(job, ActivationResponse.whisk_error(MSG_MPS_DOWN))
        if refused:
            log.error("answered %d waiting GPU activations: the MPS daemon is down", len(refused))
        self._submit(self._drain)  # CPU jobs that waited behind them

    def _fail(self, job: Job, response: ActivationResponse) -> None:
        """An activation that never reached a container (start failure, no room, refused).
        Guarded: a sink that raises must not skip the caller's release."""
        try:
            job.sink.completed(job, instant_activation(job.msg, response, job.action, now_ms()))
        except Exception:
            log.exception("reporting activation %s failed", job.msg.activation_id)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """The one way work reaches the executor: a failure is logged, never lost."""
        try:
            future = self._executor.submit(fn, *args)
        except RuntimeError:  # shut down: the pool is going away
            log.warning("pool shut down: %s not run", getattr(fn, "__qualname__", fn))
            return
        log_failure(future, f"pool task {getattr(fn, '__qualname__', fn)}")

    # ------------------------------------------------------------------ stem cells and idling

    def _replenish_stem_cells(self) -> None:
        if self.gpu is not None:
            for gpu_cell in self.gpu.settings.stem_cells:
                for gpu in list(self._ledger.devices if self._ledger else ()):
                    self._replenish_gpu_stem_cells(gpu_cell, gpu)
        for cell in self.config.stem_cells:
            if self._is_gpu_kind(cell.kind):
                continue  # GPU stem cells are per GPU: GpuSettings.stem_cells
            while not self._stop.is_set():
                token = _Starting(cell.kind, cell.memory_mb)
                with self._lock:
                    have = sum(
                        1 for p in self._containers
                        if p.is_prewarm and p.kind == cell.kind and p.memory_mb == cell.memory_mb
                    ) + self._starting(token)
                    if have >= cell.count or self._used_mb() + cell.memory_mb > self.config.user_memory_mb:
                        break
                    self._memory.commit(token, cell.memory_mb)
                proxy: ContainerProxy | None = None
                try:
                    container = self.factory.create(self._spec(cell.kind, cell.memory_mb, f"prewarm_{cell.kind}"))
                    proxy = ContainerProxy(container, cell.kind, cell.memory_mb, prewarmed=True, clock=self.clock)
                except Exception as error:
                    log.warning("stem cell %s/%d MB failed to start: %s", cell.kind, cell.memory_mb, error)
                finally:
                    with self._lock:
                        if proxy is not None:
                            self._memory.move(token, proxy)
                            self._containers.append(proxy)
                        else:
                            self._memory.release(token)
                if proxy is None:
                    break
        self._drain()

    def _starting(self, like: _Starting) -> int:
        """Stem cells like ``like`` being started (lock held): their tokens hold memory."""
        return sum(1 for key in self._memory.owners() if isinstance(key, _Starting)
                   and (key.kind, key.memory_mb, key.gpu) == (like.kind, like.memory_mb, like.gpu))

    def _is_gpu_kind(self, kind: str) -> bool:
        return self.gpu is not None and is_gpu_kind(kind)

    def _replenish_gpu_stem_cells(self, cell: GpuStemCell, gpu: int) -> None:
        assert self.gpu is not None and self._ledger is not None
        key = (cell.kind, cell.memory_mb, gpu)
        placement = self._placement(gpu, GpuRequest(cell.memory_mb))  # an action's default request
        while not self._stop.is_set():
            token = _Starting(cell.kind, cell.memory_mb, gpu)
            with self._lock:
                have = sum(1 for p in self._containers if p.is_prewarm and p.gpu is not None
                           and (p.kind, p.memory_mb, p.gpu.gpu) == key) + self._starting(token)
                if (have >= cell.count
                        or self._buffered()  # waiting work comes before prewarming (no evict/refill cycles)
                        or self._used_mb() + cell.memory_mb > self.config.user_memory_mb
                        or not self._ledger.admits(gpu, placement.memory_mb)):
                    break
                self._memory.commit(token, cell.memory_mb)
                self._ledger.commit(token, gpu, placement.memory_mb)
            proxy: ContainerProxy | None = None
            try:
                spec = self._spec(cell.kind, cell.memory_mb, f"prewarm_{cell.kind}_gpu{gpu}", placement, stem_cell=True)
                container = self.factory.create(spec)
                report = container.wait_ready(self.gpu.settings.ready_timeout_s)
                if report is None:
                    log.warning("GPU stem cell %s on GPU %d did not get ready: removed", container.id, gpu)
                    container.destroy()
                else:
                    log.info("GPU stem cell %s ready on GPU %d: %s", container.id, gpu, report.get("prewarm"))
                    proxy = ContainerProxy(container, cell.kind, cell.memory_mb, prewarmed=True, clock=self.clock)
                    proxy.gpu = placement
            except Exception as error:
                log.warning("GPU stem cell %s/%d MB on GPU %d failed to start: %s", cell.kind, cell.memory_mb, gpu, error)
            finally:
                with self._lock:
                    if proxy is not None:
                        self._memory.move(token, proxy)
                        self._ledger.move(token, proxy)
                        self._containers.append(proxy)
                    else:
                        self._memory.release(token)
                        self._ledger.release(token)
            if proxy is None:
                break

    def held_models(self, limit: int = locality.MAX_HELD) -> tuple[str, ...]:
        """Digests of the actions whose models this pool's GPU containers hold, most recently
        used first, at most ``limit`` (``invoker.gpu.locality``; pinged as ``held:`` tags)."""
        with self._lock:
            holdings = [locality.holding_of(p) for p in self._containers if locality.holds_model(p)]
        return locality.held_digests(holdings, limit)

    def gpu_snapshot(self) -> dict:
        """Per-GPU state for ``/gpus`` and the metrics."""
        if self.gpu is None or self._ledger is None:
            return {"inventory": {"source": "none", "description": "no GPU layer"}, "gpus": []}
        inventory = self.gpu.inventory.sample()  # NVML's live memory use and utilisation
        ledger = self._ledger
        with self._lock:
            gpus = []
            for device in inventory.devices:
                on_gpu = [p for p in self._containers if p.gpu is not None and p.gpu.gpu == device.index]
                containers = [_gpu_container_json(p, ledger.charge(p)) for p in on_gpu]
                resident = {m.key: m for p in on_gpu for m in p.container.residency.models
                            if m.device.startswith("cuda")}
                gpus.append({
                    **device.to_json(),
                    "capacity_mb": ledger.capacity_mb(device.index),
                    "committed_mb": ledger.committed_mb(device.index),
                    "releasing_mb": ledger.releasing_mb(device.index),
                    "free_mb": ledger.free_mb(device.index),
                    "mps_client_slots": ledger.max_clients.get(device.index),
                    "mps": self.gpu.sharing.mps_on(device.index),
                    "active": sum(p.active for p in on_gpu),
                    "containers": containers,
                    "resident_models": sorted(resident),
                    "resident_bytes": sum(c["awake_bytes"] for c in containers),
                    "held_bytes": sum(c["held_bytes"] for c in containers),
                    "over_request": sum(c["over_request"] for c in containers),
                    # GPU sleep: models awake and asleep (their device size), and the host memory
                    # that holds the asleep ones.
                    "awake_bytes": sum(c["awake_bytes"] for c in containers),
                    "asleep_bytes": sum(c["asleep_bytes"] for c in containers),
                    "sleep_host_bytes": sum(c["sleep_host_bytes"] for c in containers),
                    "asleep_containers": sum(1 for p in on_gpu if p.state is State.ASLEEP),
                    "sleeping_containers": sum(1 for p in on_gpu if p.state is State.SLEEPING),
                })
            stats = {
                "cold_starts": self.cold_starts, "prewarm_starts": self.prewarm_starts,
                "warm_starts": self.warm_starts, "gpu_evictions": self.gpu_evictions,
                "gpu_waits": self.gpu_waits, "gpu_refused": self.gpu_refused, "buffered": self._buffered(),
                "gpu_sleeps": self.gpu_sleeps, "gpu_wakes": self.gpu_wakes,
                "gpu_sleep_failures": self.gpu_sleep_failures, "gpu_sleep_removals": self.gpu_sleep_removals,
                "sleep_host_mb": self._asleep_host.used_mb,
                "sleep_host_budget_mb": self.gpu.settings.sleep_host_budget_mb,
            }
        return {
            "inventory": {"source": inventory.source, "description": inventory.describe()},
            "sharing": self.gpu.sharing_json(),
            "gpus": gpus,
            "stats": stats,
        }

    def _janitor_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._janitor_pass()
            except Exception:  # one bad pass must not end idling and draining for good
                log.exception("pool janitor pass failed")

    def tick(self) -> None:
        """One janitor pass (idle containers paused or removed, buffers drained): the janitor
        thread calls it every second; the simulator calls it on simulated time."""
        self._janitor_pass()

    def _janitor_pass(self) -> None:
        now = self.clock.monotonic()
        sleep_after = self.gpu.settings.sleep_after_s if self.gpu is not None else 0
        with self._lock:
            for proxy in list(self._containers):
                if proxy.is_prewarm or proxy.active or proxy.state is State.SLEEPING:
                    continue
                idle = now - proxy.last_used
                if idle >= self.config.idle_timeout_s:
                    self._remove_locked(proxy)
                elif sleep_after and idle >= sleep_after and self._sleepable(proxy):
                    self._start_sleep(proxy)  # a paused one is resumed first
                elif idle >= self.config.pause_grace_s and proxy.state is State.READY:
                    proxy.move_to(State.PAUSED)
                    self._submit(self._pause, proxy)
        self._drain()

    def _pause(self, proxy: ContainerProxy) -> None:
        try:
            with proxy.pause_lock:  # a run placed meanwhile waits for it in _awake, then resumes
                with self._lock:
                    if proxy.state is not State.PAUSED:
                        return  # claimed again before we got here
                proxy.container.suspend()
                proxy.suspended = True
        except Exception as error:
            log.warning("pause of %s failed, removing it: %s", proxy.container.id, error)
            with self._lock:
                if proxy.active == 0:
                    self._remove_locked(proxy)


CPU_BUFFER = "cpu"  # the run buffer of jobs waiting for host memory


def _gpu_buffer(gpu: int) -> str:
    return f"gpu{gpu}"


@dataclass(frozen=True)
class _Waiting:
    arrival: int  # order of arrival across buffers: the oldest head is tried first
    job: Job


@dataclass(frozen=True, eq=False)
class _Starting:
    """The reservation key of one stem cell being started (compared by identity)."""

    kind: str
    memory_mb: int
    gpu: int | None = None


class _StartFailed(Exception):
    """A cold start's container could not be created (the cause is chained)."""


class _ColdStart(ContainerProxy):
    """Placeholder returned by ``_place`` for 'create a new container for this job'; the key of
    its memory (and GPU) reservations until the container exists."""

    def __init__(self, kind: str, memory_mb: int, placement: GpuPlacement | None = None) -> None:  # noqa: D107
        self.kind = kind
        self.memory_mb = memory_mb
        self.placement = placement


@dataclass(frozen=True)
class _RoomPlan:
    """How room is made on one GPU: containers to put to sleep, or to remove (none: on its way)."""

    gpu: int
    sleeps: tuple[ContainerProxy, ...] = ()
    removals: tuple[ContainerProxy, ...] = ()


@dataclass(frozen=True)
class _Asleep:
    """A sleeping container's sleep: the runtime's report, and what its GPU charge became."""

    report: SleepReport
    held_mb: int  # its charge asleep
    measured: bool  # held_mb from the report's freed memory (True) or the context estimate


@dataclass
class _Lease:
    """What one job holds until ``_settle``: a cold start's placeholder (its reservations), or
    the claimed container."""

    placeholder: _ColdStart | None = None
    proxy: ContainerProxy | None = None


def _holds_gpu_model(proxy: ContainerProxy) -> bool:
    return any(m.device.startswith("cuda") for m in proxy.container.residency.models)


def _gpu_container_json(proxy: ContainerProxy, charge: Charge | None) -> dict:
    residency = proxy.container.residency
    held = sum(n for device, n in residency.held.items() if device.startswith("cuda"))  # it sees one GPU
    return {
        "id": proxy.container.id,
        "action": proxy.action.path if proxy.action else None,
        "stem_cell": proxy.is_prewarm,
        "state": proxy.state.value,
        "active": proxy.active,
        "memory_mb": proxy.gpu.memory_mb,
        "sm_percent": proxy.gpu.sm_percent,
        "resident": [{"key": m.key, "device": m.device, "bytes": m.bytes} for m in residency.models],
        "held_bytes": held,  # what its frameworks report holding on the GPU (not the CUDA context)
        "over_request": held > proxy.gpu.memory_mb * 2**20,  # holds more than it was admitted with
        "charge_mb": charge.memory_mb if charge is not None else 0,  # what the ledger counts now (asleep: shrunk)
        "asleep": [{"key": m.key, "device": m.device, "bytes": m.bytes, "host_bytes": m.host_bytes, "freed": m.freed}
                   for m in residency.asleep],
        "awake_bytes": sum(m.bytes for m in residency.models if m.device.startswith("cuda")),
        "asleep_bytes": sum(m.bytes for m in residency.asleep if m.device.startswith("cuda")),
        # Host memory its asleep models hold, whatever their device (on a CPU stand-in: "cpu").
        "sleep_host_bytes": sum(m.host_bytes for m in residency.asleep),
        "asleep_charge": ({"held_mb": proxy.sleep.held_mb, "measured": proxy.sleep.measured}
                          if proxy.sleep is not None else None),
    }
