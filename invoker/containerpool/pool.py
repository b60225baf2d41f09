"""The container pool: which container runs which activation (OpenWhisk's ``ContainerPool.scala``).

For each job, in order (``rules`` decides, this module carries it out): a warm container
of the same invocation namespace and action with a free slot; a prewarmed stem cell of the
same kind and memory; a new container if the memory fits, after evicting idle containers
(least recently used first) if that makes room; otherwise the job waits in the FIFO run
buffer of the resource it waits for (head of line, so big actions are not starved). There is
one buffer for host memory and one per GPU, so a job waiting for GPU memory never holds up
CPU work that fits. Memory is always the action's ``limits.memory``, never what the
container uses, kept as keyed reservations (``MemoryLedger``) on the members themselves.

Every container is a ``ContainerProxy`` from the moment it is decided on (``STARTING``) until
it is gone; it changes its own state. Every job has one release point: ``_execute`` gives
back the slot it claimed in ``finally``, whatever was raised, and every function handed to
the executor goes through ``_submit``, which logs a failure instead of losing it.

GPU actions (a ``-gpu`` kind, or ``invoker-resources`` naming ``gpu``, when the pool has a
``GpuLayer``) are placed by ``gpu_placement.GpuPlacer``: on a GPU, admitted by GPU memory,
with GPU sleep.
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
from invoker.containerpool import pinned, rules
from invoker.containerpool.activation import InitContext, Job, PoolLimits
from invoker.containerpool.container import ContainerFactory, ContainerSpec
from invoker.containerpool.creation import InitFailed, LimitsRefused, MemberGone, NoRoom
from invoker.containerpool.gpu_placement import GpuPlacer
from invoker.containerpool.memory import MemoryLedger
from invoker.containerpool.proxy import ContainerProxy
from invoker.containerpool.states import Due, State, Timeouts
from invoker.entities import (
    ActivationResponse,
    LimitBounds,
    Messages,
    WhiskAction,
    instant_activation,
)
from invoker.errors import ContainerStartError, GpuRequestError, activation_response_for
from invoker.gpu import locality
from invoker.gpu.layer import GpuLayer, GpuPlacement
from invoker.manifest import StemCell
from invoker.supervision import SupervisedThread, log_failure

log = logging.getLogger(__name__)

CPU_BUFFER = "cpu"  # the run buffer of jobs waiting for host memory


@dataclass(frozen=True)
class PoolConfig:
    user_memory_mb: int = 1024
    pause_grace_s: float = 10.0
    idle_timeout_s: float = 600.0
    stem_cells: tuple[StemCell, ...] = ()
    limits: PoolLimits = field(default_factory=PoolLimits)
    bounds: LimitBounds = field(default_factory=LimitBounds)
    max_workers: int = 64
    container_prefix: str = "wsk0"


@dataclass
class PoolCounts:
    """What the pool has done since it started (``/pool``, ``/gpus``, the metrics)."""

    cold_starts: int = 0
    prewarm_starts: int = 0
    warm_starts: int = 0
    gpu_evictions: int = 0  # idle GPU containers removed to make room on their GPU
    gpu_waits: int = 0  # GPU jobs that had to wait for GPU memory
    gpu_refused: int = 0  # GPU jobs refused: the request exceeds every GPU
    gpu_sleeps: int = 0  # GPU containers put to sleep
    gpu_wakes: int = 0  # asleep GPU containers claimed by a job (its /run wakes the models)
    gpu_sleep_failures: int = 0  # sleeps that gave nothing back
    gpu_sleep_removals: int = 0  # asleep containers removed: over the host budget for sleeping models


class ImageResolver:
    """Maps a kind to the image its containers run; raises KeyError for an unknown kind."""

    def image_for(self, kind: str) -> str:
        raise NotImplementedError


def sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "", name.replace("/", "_").replace("@", "_"))


@dataclass(frozen=True)
class _Waiting:
    arrival: int  # order of arrival across buffers: the oldest head is tried first
    job: Job


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
        self.counts = PoolCounts()
        self._lock = threading.Lock()
        self._timeouts = Timeouts(config.pause_grace_s, config.idle_timeout_s,
                                  gpu.settings.sleep_after_s if gpu is not None else 0.0)
        self._containers: list[ContainerProxy] = []  # every member, starting ones included
        self._memory = MemoryLedger()  # host memory, keyed by member
        self._buffers: dict[str, deque[_Waiting]] = {CPU_BUFFER: deque()}
        self._arrivals = itertools.count()
        self._executor = executor if executor is not None else ThreadPoolExecutor(
            max_workers=config.max_workers, thread_name_prefix="activation")
        self._seq = itertools.count()
        self._stop = threading.Event()
        # Idling, pausing and draining stop if the janitor does: restarted, or fatal (no pings).
        self._janitor = SupervisedThread("pool-janitor", self._janitor_loop, on_fatal, stop=self._stop)
        self.gpu_placer = GpuPlacer(self, gpu) if gpu is not None else None

    # ------------------------------------------------------------------ lifecycle

    def start(self, janitor: bool = True) -> None:
        """``janitor=False``: no janitor thread; the caller calls ``tick`` (the simulator)."""
        self.factory.cleanup()
        if janitor:
            self._janitor.start()
        self.replenish_stem_cells()

    def shutdown(self) -> None:
        self._stop.set()
        self._executor.shutdown(wait=True, cancel_futures=False)
        with self._lock:
            members = list(self._containers)
            self._containers.clear()
            for proxy in members:
                proxy.retire()  # one still starting destroys its container once created
        for proxy in members:
            proxy.destroy()
        self.factory.close()

    # ------------------------------------------------------------------ what it holds

    @property
    def members(self) -> list[ContainerProxy]:
        """The members now, a copy (for tests, benches and the simulator; lock taken)."""
        with self._lock:
            return list(self._containers)

    def _buffered(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    @property
    def buffered(self) -> int:
        with self._lock:
            return self._buffered()

    @property
    def free_memory_mb(self) -> int:
        with self._lock:
            return self.config.user_memory_mb - self._memory.used_mb

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "containers": [repr(p) for p in self._containers],
                "buffered": self._buffered(),
                "used_mb": self._memory.used_mb,
                "memory_owners": len(self._memory.owners()),
                "user_memory_mb": self.config.user_memory_mb,
                "cold_starts": self.counts.cold_starts,
                "prewarm_starts": self.counts.prewarm_starts,
                "warm_starts": self.counts.warm_starts,
            }

    def gpu_snapshot(self) -> dict:
        """Per-GPU state for ``/gpus`` and the metrics."""
        if self.gpu_placer is None:
            return {"inventory": {"source": "none", "description": "no GPU layer"}, "gpus": []}
        return self.gpu_placer.snapshot()

    def gpu_room(self, memory_mb: int) -> bool | None:
        """Whether some GPU admits a container of ``memory_mb`` of GPU memory now (FPC publishes
        no free memory while none does); None on an invoker without GPUs."""
        placer = self.gpu_placer
        if placer is None:
            return None
        with self._lock:
            return any(placer.ledger.admits(g, memory_mb) and not placer.layer.paused(g) for g in placer.ledger.devices)

    def held_models(self, limit: int = locality.MAX_HELD) -> tuple[str, ...]:
        """Digests of the actions whose models this pool's GPU containers hold, most recently
        used first, at most ``limit`` (``invoker.gpu.locality``; pinged as ``held:`` tags)."""
        with self._lock:
            holdings = [locality.holding_of(p) for p in self._containers if rules.holds_model(p)]
        return locality.held_digests(holdings, limit)

    # ------------------------------------------------------------------ scheduling

    def run(self, job: Job) -> None:
        """Schedule a job; it runs now or waits in the run buffer of what it waits for."""
        refusal = self._refusal(job.action)
        if refusal is not None:
            self.fail(job, refusal)
            return
        with self._lock:
            waiting = self._waiting_buffer(job)  # never overtake a job waiting for the same resource
            placed = self._place(job) if waiting is None else waiting
            if isinstance(placed, str):
                self._buffers.setdefault(placed, deque()).append(_Waiting(next(self._arrivals), job))
                return
        self.submit(self._execute, placed, job)

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
        if self.gpu_placer is not None and self.gpu_placer.is_gpu(action):
            return self.gpu_placer.refusal(action)
        return None

    def _waiting_buffer(self, job: Job) -> str | None:
        """The buffer a new job must queue in behind others (lock held), or None: try placing it."""
        if self.gpu_placer is not None and self.gpu_placer.is_gpu(job.action):
            return self.gpu_placer.waiting_buffer(job, self._buffers)
        return CPU_BUFFER if self._buffers[CPU_BUFFER] else None

    def _place(self, job: Job) -> ContainerProxy | str:
        """The member a job runs in, claimed for it (a new one is STARTING), or the name of the
        run buffer it waits in (lock held)."""
        action = job.action
        warm = rules.warm_for(self._containers, job.invocation_namespace, action)
        if warm is not None:
            warm.claim()
            self.counts.warm_starts += 1
            return warm
        if self.gpu_placer is not None and self.gpu_placer.is_gpu(action):
            return self.gpu_placer.place(job)
        memory = action.limits.memory_mb
        stems = rules.stem_cells(self._containers, action.kind, memory)
        if stems:
            return self.take_stem_cell(stems[0], job)
        if not self.make_host_room(memory):
            return CPU_BUFFER
        return self.add_member(job)

    # ------------------------------------------------------------------ effects (lock held)

    def take_stem_cell(self, stem: ContainerProxy, job: Job) -> ContainerProxy:
        stem.bind(job.action, job.invocation_namespace)
        stem.claim()
        self.counts.prewarm_starts += 1
        self.submit(self.replenish_stem_cells)
        return stem

    def make_host_room(self, memory_mb: int) -> bool:
        """Whether ``memory_mb`` of host memory fits now, after evicting idle containers if that
        makes room (``rules.host_evictions``)."""
        capacity, used = self.config.user_memory_mb, self._memory.used_mb
        if rules.fits(used, capacity, memory_mb):
            return True
        for proxy in rules.host_evictions(self._containers, memory_mb - (capacity - used)) or ():
            self.remove(proxy)
        return rules.fits(self._memory.used_mb, capacity, memory_mb)

    def add_member(self, job: Job | None, kind: str = "", memory_mb: int = 0,
                   placement: GpuPlacement | None = None) -> ContainerProxy:
        """A new STARTING member holding its host memory: a job's cold start (claimed for it), or
        a stem cell (``job`` None). Its GPU charge, if any, is the caller's."""
        if job is not None:
            kind, memory_mb = job.action.kind, job.action.limits.memory_mb
        proxy = ContainerProxy(kind, memory_mb, self._lock, self._timeouts, self.clock, gpu=placement)
        self._memory.commit(proxy, memory_mb)
        self._containers.append(proxy)
        if job is not None:
            proxy.bind(job.action, job.invocation_namespace)
            proxy.claim()
            self.counts.cold_starts += 1
        return proxy

    def remove(self, proxy: ContainerProxy) -> None:
        """Take a member out of the pool and destroy it; at most once per member."""
        proxy.retire()
        if proxy not in self._containers:
            return  # already removed
        self._containers.remove(proxy)
        self._memory.release(proxy)  # host memory is free at once, as in the Scala pool
        if self.gpu_placer is not None and self.gpu_placer.holds_charge(proxy):
            self.gpu_placer.removed(proxy)  # its GPU memory is free once it is gone
        else:
            self.submit(proxy.destroy)

    # ------------------------------------------------------------------ execution

    def spec(self, kind: str, memory_mb: int, label: str, placement: GpuPlacement | None = None,
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
            env=self.gpu.container_env(placement, stem_cell), gpu=placement.gpu,
            mounts=self.gpu.mounts(placement.gpu), user=self.gpu.container_user(placement.gpu),
        )

    def _execute(self, proxy: ContainerProxy, job: Job) -> None:
        """Run one placed job. Whatever happens, its slot is given back once, in ``finally``."""
        reusable = retry = False
        try:
            if proxy.container is None:  # starting: this job creates it, or waits for it
                retry = not self._started_for(proxy, job)
            elif not proxy.resume_for_run():
                # Paused and could not be resumed, or died while idle: reschedule on another
                # container, as the Scala invoker does for warm ones.
                retry = True
            if not retry:
                _, reusable = proxy.execute(job, self.config.limits)
        except ContainerStartError as error:
            log.warning("cold start of %s failed: %s", job.action.path, error.__cause__ or error)
            self.fail(job, activation_response_for(error))
        except Exception as error:  # an invoker bug must not lose the activation
            log.exception("activation %s failed inside the invoker", job.msg.activation_id)
            self.fail(job, activation_response_for(error))
            reusable = False
        finally:
            self._release(proxy, reusable)
        if retry:
            self.run(job)
        self.drain()

    def _started_for(self, proxy: ContainerProxy, job: Job) -> bool:
        """The first job of a STARTING member creates its container (``ContainerStartError`` if
        that fails); a later one waits for it: False when it was not created (run the job elsewhere)."""
        with self._lock:
            creator = proxy.take_start()
        if not creator:
            proxy.start_done.wait()
            return proxy.container is not None
        action = job.action
        try:
            spec = self.spec(action.kind, action.limits.memory_mb, f"{job.invocation_namespace}_{action.name}",
                             proxy.gpu)
            proxy.start(self.factory, spec)
        except Exception as error:  # an engine that went away raises what it likes
            raise ContainerStartError(str(error)) from error
        finally:
            proxy.start_done.set()
        return True

    def _release(self, proxy: ContainerProxy, reusable: bool) -> None:
        with self._lock:
            if proxy.release(reusable):
                self.remove(proxy)

    def drain(self) -> None:
        """Start buffered jobs while they fit: of every buffer's head, the oldest first."""
        while True:
            with self._lock:
                started = self._start_a_head()
            if started is None:
                return
            self.submit(self._execute, *started)

    def _start_a_head(self) -> tuple[ContainerProxy, Job] | None:
        heads = sorted(((b[0].arrival, key) for key, b in self._buffers.items() if b))
        for _, key in heads:
            buffer = self._buffers[key]
            placed = self._place(buffer[0].job)
            if not isinstance(placed, str):
                return placed, buffer.popleft().job
        return None

    def take_waiting(self, which: Callable[[Job], bool]) -> list[Job]:
        """Take the waiting jobs ``which`` selects out of every buffer (lock held)."""
        taken: list[Job] = []
        for key, buffer in self._buffers.items():
            taken += [w.job for w in buffer if which(w.job)]
            self._buffers[key] = deque(w for w in buffer if not which(w.job))
        return taken

    def fail(self, job: Job, response: ActivationResponse) -> None:
        """An activation that never reached a container (start failure, no room, refused).
        Guarded: a sink that raises must not skip the caller's release."""
        try:
            job.sink.completed(job, instant_activation(job.msg, response, job.action, self.clock.wall_ms()))
        except Exception:
            log.exception("reporting activation %s failed", job.msg.activation_id)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """The one way work reaches the executor: a failure is logged, never lost."""
        try:
            future = self._executor.submit(fn, *args)
        except RuntimeError:  # shut down: the pool is going away
            log.warning("pool shut down: %s not run", getattr(fn, "__qualname__", fn))
            return
        log_failure(future, f"pool task {getattr(fn, '__qualname__', fn)}")

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ members a front end owns (FPC)

    def create(self, action: WhiskAction, invocation_namespace: str, init: InitContext | None) -> ContainerProxy:
        """A member for ``action`` before any activation (FPC): admitted (host, and GPU memory),
        started (or a stem cell taken), ``/init`` run (``init`` None: left to its first activation,
        as OpenWhisk's FPC invoker does); pinned: only ``delete`` removes it. Raises
        ``LimitsRefused``, ``NoRoom``, ``ContainerStartError`` or ``InitFailed`` (nothing left)."""
        self._check_creatable(action)
        with self._lock:
            proxy = pinned.admit(self, action, invocation_namespace)
        reusable = False
        try:
            if proxy.container is None:
                try:
                    spec = self.spec(action.kind, action.limits.memory_mb,
                                     f"{invocation_namespace}_{action.name}", proxy.gpu)
                    proxy.start(self.factory, spec)
                except Exception as error:  # an engine that went away raises what it likes
                    raise ContainerStartError(str(error)) from error
            failure = proxy.initialize(init, self.config.limits) if init is not None else None
            if failure is not None:
                raise InitFailed(failure)
            reusable = True
        finally:
            self._release(proxy, reusable)  # not reusable: removed, its memory given back
        return proxy

    def _check_creatable(self, action: WhiskAction) -> None:
        problem = self.config.bounds.violation(action.limits, action.code)
        if problem is not None:
            raise LimitsRefused(problem)
        if self.gpu_placer is not None and self.gpu_placer.is_gpu(action):
            try:
                self.gpu_placer.request(action)
            except GpuRequestError as error:
                raise LimitsRefused(str(error)) from error
            refusal = self.gpu_placer.refusal(action)  # MPS down, or larger than every GPU
            if refusal is not None:
                raise NoRoom(str(refusal.result))

    def run_on(self, proxy: ContainerProxy, job: Job) -> bool:
        """Run ``job`` on a created member now, on the caller's thread; whether it can take another
        (if not, it is removed). ``MemberGone``: it could not take this one (nothing ran)."""
        with self._lock:
            if proxy.state is State.REMOVING or proxy not in self._containers:
                raise MemberGone(f"{proxy!r} is being removed")
            proxy.claim()
        reusable = False
        try:
            if not proxy.resume_for_run():
                raise MemberGone(f"{proxy!r} died")
            _, reusable = proxy.execute(job, self.config.limits)
        except MemberGone:
            raise
        except Exception as error:  # an invoker bug must not lose the activation
            log.exception("activation %s failed inside the invoker", job.msg.activation_id)
            self.fail(job, activation_response_for(error))
        finally:
            self._release(proxy, reusable)
            self.drain()
        return reusable

    def delete(self, proxy: ContainerProxy) -> None:
        """Remove a created member: at once when idle, else once its running activations end."""
        with self._lock:
            if proxy.active:
                proxy.retire()  # the last release removes it
            else:
                self.remove(proxy)

    # ------------------------------------------------------------------ stem cells

    def replenish_stem_cells(self) -> None:
        """Start the stem cells that are missing, one at a time per kind, while memory (and on a
        GPU, GPU memory) fits and no job waits: waiting work comes before prewarming."""
        wanted: list[tuple[StemCell, GpuPlacement | None]] = []
        if self.gpu_placer is not None:
            wanted += self.gpu_placer.stem_cells()
        wanted += [(cell, None) for cell in self.config.stem_cells
                   if self.gpu_placer is None or not self.gpu_placer.is_gpu_kind(cell.kind)]
        for cell, placement in wanted:
            while not self._stop.is_set() and self._start_stem_cell(cell, placement):
                pass
        self.drain()

    def _start_stem_cell(self, cell: StemCell, placement: GpuPlacement | None) -> bool:
        """Start one missing stem cell; False when none is missing, none fits, or it failed."""
        gpu = placement.gpu if placement is not None else None
        with self._lock:
            if (not rules.stem_cells_short(self._containers, cell.kind, cell.memory_mb, cell.count, gpu)
                    or self._buffered()
                    or not rules.fits(self._memory.used_mb, self.config.user_memory_mb, cell.memory_mb)
                    or (placement is not None and not self.gpu_placer.admits(placement))):
                return False
            proxy = self.add_member(None, cell.kind, cell.memory_mb, placement)
            if placement is not None:
                self.gpu_placer.charge(proxy, placement)
        label = f"prewarm_{cell.kind}" + (f"_gpu{gpu}" if placement is not None else "")
        ready_timeout = self.gpu.settings.ready_timeout_s if placement is not None else None
        try:
            proxy.start(self.factory, self.spec(cell.kind, cell.memory_mb, label, placement, stem_cell=True),
                        ready_timeout)
        except Exception as error:
            log.warning("stem cell %s/%d MB%s failed to start: %s", cell.kind, cell.memory_mb,
                        f" on GPU {gpu}" if placement is not None else "", error)
            with self._lock:
                self.remove(proxy)
            return False
        return True

    # ------------------------------------------------------------------ idling

    def _janitor_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._janitor_pass()
            except Exception:  # one bad pass must not end idling and draining for good
                log.exception("pool janitor pass failed")

    def tick(self) -> None:
        """One janitor pass (what is due done, buffers drained): the janitor thread calls it
        every second; the simulator calls it on simulated time."""
        self._janitor_pass()

    def _janitor_pass(self) -> None:
        now = self.clock.monotonic()
        with self._lock:
            for proxy in list(self._containers):
                due = rules.due(proxy, now)
                if due is Due.REMOVE:
                    self.remove(proxy)
                elif due is Due.SLEEP and self.gpu_placer is not None:
                    self.gpu_placer.start_sleep(proxy)  # a paused one is resumed first
                elif due is Due.PAUSE:
                    proxy.begin_pause()
                    self.submit(self._pause, proxy)
        self.drain()

    def _pause(self, proxy: ContainerProxy) -> None:
        try:
            proxy.pause()
        except Exception as error:
            log.warning("pause of %s failed, removing it: %s", proxy, error)
            with self._lock:
                if proxy.active == 0 and proxy.state is State.PAUSING:
                    self.remove(proxy)
