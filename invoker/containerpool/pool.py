"""The container pool: which container runs which activation (PROTOCOL.md §6.2).

For each job, in order: a warm container of the same (invocation namespace,
action) with free concurrency; a prewarmed stem cell of the same kind and
memory; a new container if the memory fits; the same after evicting idle warm
containers, least recently used first; otherwise the job waits in a FIFO run
buffer (head of line, so big actions are not starved). Memory is always the
action's ``limits.memory``, never what the container really uses.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from invoker.containerpool.container import (
    ContainerError,
    ContainerFactory,
    ContainerSpec,
    now_ms,
)
from invoker.containerpool.proxy import (
    ContainerProxy,
    Job,
    Messages,
    PoolLimits,
    State,
)
from invoker.entities import ActivationResponse, instant_activation

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
    max_workers: int = 64
    container_prefix: str = "wsk0"


class ImageResolver:
    """Maps a kind to the image its containers run; raises KeyError for an unknown kind."""

    def image_for(self, kind: str) -> str:
        raise NotImplementedError


def sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "", name.replace("/", "_").replace("@", "_"))


class ContainerPool:
    def __init__(self, factory: ContainerFactory, images: ImageResolver, config: PoolConfig) -> None:
        self.factory = factory
        self.images = images
        self.config = config
        self._lock = threading.Lock()
        self._containers: list[ContainerProxy] = []  # every live container, prewarms included
        self._starting_prewarm_mb = 0
        self._starting_counts: dict[tuple[str, int], int] = {}
        self._reserved_mb = 0  # cold starts being created
        self._buffer: deque[Job] = deque()
        self._executor = ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="activation")
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._janitor = threading.Thread(target=self._janitor_loop, name="pool-janitor", daemon=True)
        self.cold_starts = 0
        self.prewarm_starts = 0
        self.warm_starts = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.factory.cleanup()
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
        return sum(p.memory_mb for p in self._containers) + self._starting_prewarm_mb + self._reserved_mb

    @property
    def free_memory_mb(self) -> int:
        with self._lock:
            return self.config.user_memory_mb - self._used_mb()

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "containers": [repr(p) for p in self._containers],
                "buffered": len(self._buffer),
                "used_mb": self._used_mb(),
                "user_memory_mb": self.config.user_memory_mb,
                "cold_starts": self.cold_starts,
                "prewarm_starts": self.prewarm_starts,
                "warm_starts": self.warm_starts,
            }

    @property
    def buffered(self) -> int:
        with self._lock:
            return len(self._buffer)

    # ------------------------------------------------------------------ scheduling

    def run(self, job: Job) -> None:
        """Schedule a job; it runs now or waits in the run buffer."""
        if job.action.limits.memory_mb > self.config.user_memory_mb:
            # It could never fit: answer instead of blocking the buffer forever.
            self._fail(job, ActivationResponse.whisk_error(Messages.resource_error))
            return
        with self._lock:
            if self._buffer:
                self._buffer.append(job)
                return
            placed = self._place(job)
            if placed is None:
                self._buffer.append(job)
                return
        self._executor.submit(self._execute, placed, job)

    def _place(self, job: Job) -> ContainerProxy | None:
        """Pick a container for the job (lock held). Returns a proxy with ``active``
        already incremented, or a new placeholder proxy for a cold start, or None."""
        action = job.action
        namespace = job.invocation_namespace
        warm = [
            p
            for p in self._containers
            if p.action is not None
            and p.namespace == namespace
            and p.action.identity_key == action.identity_key
            and p.has_capacity()
            and p.state is not State.REMOVING
        ]
        if warm:
            proxy = max(warm, key=lambda p: (p.initialized, p.active, p.last_used))
            self._claim(proxy, job)
            self.warm_starts += 1
            return proxy
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
            self._executor.submit(self._replenish_stem_cells)
            return stem
        if self._used_mb() + memory > self.config.user_memory_mb:
            self._evict(memory - (self.config.user_memory_mb - self._used_mb()))
        if self._used_mb() + memory > self.config.user_memory_mb:
            return None
        self._reserved_mb += memory
        self.cold_starts += 1
        return _ColdStart(action.kind, memory)

    def _claim(self, proxy: ContainerProxy, job: Job) -> None:
        proxy.active += 1
        proxy.state = State.RUNNING
        proxy.last_used = time.monotonic()

    def _evict(self, needed_mb: int) -> None:
        idle = sorted(
            (p for p in self._containers if not p.is_prewarm and p.active == 0 and p.state is not State.REMOVING),
            key=lambda p: p.last_used,
        )
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
        proxy.state = State.REMOVING
        if proxy in self._containers:
            self._containers.remove(proxy)
        self._executor.submit(proxy.container.destroy)

    # ------------------------------------------------------------------ execution

    def _spec(self, kind: str, memory_mb: int, label: str) -> ContainerSpec:
        image = self.images.image_for(kind)
        name = f"{self.config.container_prefix}_{next(self._seq)}_{sanitize(label)}"
        shares = max(1024 * memory_mb // max(self.config.user_memory_mb, 1), 2)
        return ContainerSpec(name=name, kind=kind, image=image, memory_mb=memory_mb, cpu_shares=shares,
                             labels={"action": label})

    def _execute(self, placed: ContainerProxy, job: Job) -> None:
        proxy = placed
        try:
            if isinstance(placed, _ColdStart):
                proxy = self._cold_start(job)
                if proxy is None:
                    return
            elif proxy.suspended or not proxy.container.is_alive():
                proxy = self._revive(proxy, job)
                if proxy is None:
                    return
            activation, reusable = proxy.execute(job, self.config.limits)
        except Exception:  # an invoker bug must not lose the activation
            log.exception("activation %s failed inside the invoker", job.msg.activation_id)
            self._fail(job, ActivationResponse.whisk_error(Messages.abnormal_run))
            if proxy is not placed or not isinstance(placed, _ColdStart):
                self._release(proxy, reusable=False)
            self._drain()
            return
        self._release(proxy, reusable)
        self._drain()

    def _cold_start(self, job: Job) -> ContainerProxy | None:
        action = job.action
        try:
            spec = self._spec(action.kind, action.limits.memory_mb, f"{job.invocation_namespace}_{action.name}")
            container = self.factory.create(spec)
        except (ContainerError, KeyError) as error:
            log.warning("cold start of %s failed: %s", action.path, error)
            with self._lock:
                self._reserved_mb -= action.limits.memory_mb
            self._fail(job, ActivationResponse.whisk_error(Messages.resource_error))
            self._drain()
            return None
        proxy = ContainerProxy(container, action.kind, action.limits.memory_mb, prewarmed=False)
        proxy.bind(action, job.invocation_namespace)
        with self._lock:
            self._reserved_mb -= action.limits.memory_mb
            self._claim(proxy, job)
            self._containers.append(proxy)
        return proxy

    def _revive(self, proxy: ContainerProxy, job: Job) -> ContainerProxy | None:
        """A warm container picked for a job was paused, or died while idle."""
        if proxy.container.is_alive():
            try:
                with proxy.pause_lock:
                    if proxy.suspended:
                        proxy.container.resume()
                        proxy.suspended = False
                return proxy
            except ContainerError as error:
                log.warning("resume of %s failed: %s", proxy.container.id, error)
        # Reschedule on another container, as the Scala invoker does for warm ones.
        with self._lock:
            proxy.active -= 1
            self._remove_locked(proxy)
        self.run(job)
        return None

    def _release(self, proxy: ContainerProxy, reusable: bool) -> None:
        with self._lock:
            proxy.active = max(0, proxy.active - 1)
            proxy.last_used = time.monotonic()
            if not reusable or not proxy.container.is_alive():
                if proxy.active == 0:
                    self._remove_locked(proxy)
                else:
                    proxy.state = State.REMOVING  # destroyed once its other runs finish
                return
            if proxy.state is State.REMOVING:
                if proxy.active == 0:
                    self._remove_locked(proxy)
                return
            if proxy.active == 0:
                proxy.state = State.READY

    def _drain(self) -> None:
        """Start buffered jobs while they fit, head first."""
        while True:
            with self._lock:
                if not self._buffer:
                    return
                placed = self._place(self._buffer[0])
                if placed is None:
                    return
                job = self._buffer.popleft()
            self._executor.submit(self._execute, placed, job)

    def _fail(self, job: Job, response: ActivationResponse) -> None:
        """An activation that never reached a container (start failure, no room)."""
        job.sink.completed(job, instant_activation(job.msg, response, job.action, now_ms()))

    # ------------------------------------------------------------------ stem cells and idling

    def _replenish_stem_cells(self) -> None:
        for cell in self.config.stem_cells:
            while not self._stop.is_set():
                with self._lock:
                    have = sum(
                        1 for p in self._containers
                        if p.is_prewarm and p.kind == cell.kind and p.memory_mb == cell.memory_mb
                    )
                    starting = self._starting_counts.get((cell.kind, cell.memory_mb), 0)
                    if have + starting >= cell.count or self._used_mb() + cell.memory_mb > self.config.user_memory_mb:
                        break
                    self._starting_counts[(cell.kind, cell.memory_mb)] = starting + 1
                    self._starting_prewarm_mb += cell.memory_mb
                try:
                    container = self.factory.create(self._spec(cell.kind, cell.memory_mb, f"prewarm_{cell.kind}"))
                    proxy: ContainerProxy | None = ContainerProxy(container, cell.kind, cell.memory_mb, prewarmed=True)
                except (ContainerError, KeyError) as error:
                    log.warning("stem cell %s/%d MB failed to start: %s", cell.kind, cell.memory_mb, error)
                    proxy = None
                with self._lock:
                    self._starting_counts[(cell.kind, cell.memory_mb)] -= 1
                    self._starting_prewarm_mb -= cell.memory_mb
                    if proxy is not None:
                        self._containers.append(proxy)
                if proxy is None:
                    break
        self._drain()

    def _janitor_loop(self) -> None:
        while not self._stop.wait(1.0):
            now = time.monotonic()
            with self._lock:
                for proxy in list(self._containers):
                    if proxy.is_prewarm or proxy.active:
                        continue
                    idle = now - proxy.last_used
                    if idle >= self.config.idle_timeout_s:
                        self._remove_locked(proxy)
                    elif idle >= self.config.pause_grace_s and proxy.state is State.READY:
                        proxy.state = State.PAUSED
                        self._executor.submit(self._pause, proxy)
            self._drain()

    def _pause(self, proxy: ContainerProxy) -> None:
        try:
            with proxy.pause_lock:
                with self._lock:
                    if proxy.state is not State.PAUSED:
                        return  # claimed again before we got here
                proxy.container.suspend()
                proxy.suspended = True
        except ContainerError as error:
            log.warning("pause of %s failed, removing it: %s", proxy.container.id, error)
            with self._lock:
                if proxy.active == 0:
                    self._remove_locked(proxy)


class _ColdStart(ContainerProxy):
    """Placeholder returned by ``_place`` for 'create a new container for this job'."""

    def __init__(self, kind: str, memory_mb: int) -> None:  # noqa: D107 - no container yet
        self.kind = kind
        self.memory_mb = memory_mb
