"""The container pool: which container runs which activation (PROTOCOL.md §6.2).

For each job, in order: a warm container of the same (invocation namespace,
action) with free concurrency; a prewarmed stem cell of the same kind and
memory; a new container if the memory fits; the same after evicting idle warm
containers, least recently used first; otherwise the job waits in a FIFO run
buffer (head of line, so big actions are not starved). Memory is always the
action's ``limits.memory``, never what the container really uses.

GPU actions (a ``-gpu`` kind, when the pool has a ``GpuLayer``) are placed on a GPU as
well: a warm container of the same action, preferring one whose runtime reports a model
resident on a GPU (``X-OW-Resident``); else a GPU stem cell of the same kind, memory and
GPU request, on the GPU with the most free GPU memory and the least load; else a cold
start on such a GPU, after evicting idle warm GPU containers there (least recently used)
when that makes room; else the job waits. GPU memory is admitted by the action's GPU
request (``invoker.gpu.request``) and never over-committed: an evicted container's GPU
memory counts as used until the container is really gone.
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
from invoker.entities import ActivationResponse, WhiskAction, instant_activation
from invoker.gpu.layer import GpuLayer, GpuPlacement, GpuStemCell
from invoker.gpu.ledger import GpuLedger, has_room
from invoker.gpu.request import ANNOTATION as GPU_ANNOTATION
from invoker.gpu.request import GpuRequest, GpuRequestError, is_gpu_kind, parse_request

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


MSG_MPS_DOWN = ("GPU sharing (MPS) is down on this invoker: it admits no GPU activation until it is back; "
                "the controller sends GPU work elsewhere meanwhile.")


class ContainerPool:
    def __init__(self, factory: ContainerFactory, images: ImageResolver, config: PoolConfig,
                 gpu: GpuLayer | None = None) -> None:
        self.factory = factory
        self.images = images
        self.config = config
        self.gpu = gpu
        self._ledger = GpuLedger(gpu.inventory, gpu.settings.reserved_mb, gpu.client_limits()) if gpu else None
        self._gpu_starting: dict[tuple[str, int, int], int] = {}  # (kind, memory, gpu) -> stem cells starting
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
        if gpu is not None:
            gpu.listeners.append(self._on_mps_change)
        self.cold_starts = 0
        self.prewarm_starts = 0
        self.warm_starts = 0
        self.gpu_evictions = 0  # idle warm GPU containers removed to make room on their GPU
        self.gpu_waits = 0  # GPU jobs that had to wait for GPU memory
        self.gpu_refused = 0  # GPU jobs refused: the request exceeds every GPU

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
        if self._is_gpu(job.action):
            refusal = self._gpu_refusal(job.action)
            if refusal is not None:
                self._fail(job, refusal)
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
            self._executor.submit(self._replenish_stem_cells)
            return stem
        if self._used_mb() + memory > self.config.user_memory_mb:
            self._evict(memory - (self.config.user_memory_mb - self._used_mb()))
        if self._used_mb() + memory > self.config.user_memory_mb:
            return None
        self._reserved_mb += memory
        self.cold_starts += 1
        return _ColdStart(action.kind, memory)

    # ------------------------------------------------------------------ GPU placement

    def _is_gpu(self, action: WhiskAction) -> bool:
        return self.gpu is not None and is_gpu_kind(action.kind)

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

    def _place_gpu(self, job: Job) -> ContainerProxy | None:
        """Stem cell, else cold start on a GPU that admits the request, else None (lock held)."""
        assert self._ledger is not None
        action = job.action
        request = self._gpu_request(action)
        memory = action.limits.memory_mb
        loads = self._gpu_loads()
        ledger = self._ledger
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
            self._executor.submit(self._replenish_stem_cells)
            return stem
        candidates = [g for g in ledger.candidates(request.memory_mb, loads) if not self.gpu.paused(g)]
        if not candidates:
            self._evict_gpu(request.memory_mb, loads)
            self.gpu_waits += 1
            return None  # drained once the evicted containers are gone, or when memory frees
        if self._used_mb() + memory > self.config.user_memory_mb:
            self._evict(memory - (self.config.user_memory_mb - self._used_mb()))
        if self._used_mb() + memory > self.config.user_memory_mb:
            return None
        placeholder = _ColdStart(action.kind, memory, self._placement(candidates[0], request))
        ledger.commit(placeholder, candidates[0], request.memory_mb)
        self._reserved_mb += memory
        self.cold_starts += 1
        return placeholder

    def _evict_gpu(self, needed_mb: int, loads: dict[int, int]) -> None:
        """Remove idle warm containers (least recently used first, then idle stem cells) on the
        one GPU where that makes room for ``needed_mb`` with the fewest evictions; nothing if
        no GPU can."""
        assert self._ledger is not None
        ledger = self._ledger
        best: tuple[tuple, list[ContainerProxy]] | None = None
        for gpu in ledger.devices:
            if ledger.capacity_mb(gpu) < needed_mb:
                continue
            available = ledger.free_mb(gpu) + ledger.releasing_mb(gpu)
            slots = ledger.free_clients(gpu)  # MPS client slots (None: no limit)
            if slots is not None:
                slots += ledger.releasing_clients(gpu)
            if has_room(available, slots, needed_mb):
                return  # room is already on its way: wait for it, evict nothing more
            on_gpu = [p for p in self._containers
                      if p.gpu is not None and p.gpu.gpu == gpu and p.active == 0 and p.state is not State.REMOVING]
            # Idle warm containers, least recently used first; then idle stem cells, so that
            # stem cells of another request class can never keep a job waiting for good.
            idle = sorted((p for p in on_gpu if not p.is_prewarm), key=lambda p: p.last_used)
            idle += [p for p in on_gpu if p.is_prewarm and p.state is State.STARTED]
            victims: list[ContainerProxy] = []
            for proxy in idle:
                if has_room(available, slots, needed_mb):
                    break
                victims.append(proxy)
                available += proxy.gpu.memory_mb
                slots = None if slots is None else slots + 1
            if has_room(available, slots, needed_mb):
                rank = (len(victims), -ledger.free_mb(gpu), loads.get(gpu, 0))
                if best is None or rank < best[0]:
                    best = (rank, victims)
        if best is None:
            return
        for proxy in best[1]:
            log.info("evicting idle %s from GPU %d to make room", proxy, proxy.gpu.gpu)
            self.gpu_evictions += 1
            self._remove_locked(proxy)

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
        if self._ledger is not None and self._ledger.charge(proxy) is not None:
            self._ledger.mark_releasing(proxy)
            self._executor.submit(self._destroy_gpu_container, proxy)
        else:
            self._executor.submit(proxy.container.destroy)

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
        proxy = placed
        try:
            if isinstance(placed, _ColdStart):
                proxy = self._cold_start(job, placed)
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

    def _cold_start(self, job: Job, placed: _ColdStart) -> ContainerProxy | None:
        action = job.action
        try:
            spec = self._spec(action.kind, action.limits.memory_mb, f"{job.invocation_namespace}_{action.name}",
                              placed.placement)
            container = self.factory.create(spec)
        except (ContainerError, KeyError) as error:
            log.warning("cold start of %s failed: %s", action.path, error)
            with self._lock:
                self._reserved_mb -= action.limits.memory_mb
                if self._ledger is not None:
                    self._ledger.release(placed)
            self._fail(job, ActivationResponse.whisk_error(Messages.resource_error))
            self._drain()
            return None
        proxy = ContainerProxy(container, action.kind, action.limits.memory_mb, prewarmed=False)
        proxy.bind(action, job.invocation_namespace)
        proxy.gpu = placed.placement
        with self._lock:
            self._reserved_mb -= action.limits.memory_mb
            if self._ledger is not None and placed.placement is not None:
                self._ledger.move(placed, proxy)
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

    def _on_mps_change(self, up: bool) -> None:
        """The MPS daemon went down: answer the GPU work waiting here (no GPU takes it now);
        it came back: start what waits."""
        if up:
            self._executor.submit(self._drain)
            return
        assert self.gpu is not None
        if self.gpu.admitting():  # other GPUs (time-sliced) still take it
            return
        with self._lock:
            refused = [j for j in self._buffer if self._is_gpu(j.action)]
            for job in refused:
                self._buffer.remove(job)
        for job in refused:
            self._fail(job, ActivationResponse.whisk_error(MSG_MPS_DOWN))
        if refused:
            log.error("answered %d waiting GPU activations: the MPS daemon is down", len(refused))
        self._executor.submit(self._drain)  # CPU jobs that waited behind them

    def _fail(self, job: Job, response: ActivationResponse) -> None:
        """An activation that never reached a container (start failure, no room)."""
        job.sink.completed(job, instant_activation(job.msg, response, job.action, now_ms()))

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

    def _is_gpu_kind(self, kind: str) -> bool:
        return self.gpu is not None and is_gpu_kind(kind)

    def _replenish_gpu_stem_cells(self, cell: GpuStemCell, gpu: int) -> None:
        assert self.gpu is not None and self._ledger is not None
        key = (cell.kind, cell.memory_mb, gpu)
        placement = self._placement(gpu, GpuRequest(cell.memory_mb))  # an action's default request
        while not self._stop.is_set():
            token = object()
            with self._lock:
                have = sum(1 for p in self._containers if p.is_prewarm and p.gpu is not None
                           and (p.kind, p.memory_mb, p.gpu.gpu) == key)
                starting = self._gpu_starting.get(key, 0)
                if (have + starting >= cell.count
                        or self._buffer  # waiting work comes before prewarming (no evict/refill cycles)
                        or self._used_mb() + cell.memory_mb > self.config.user_memory_mb
                        or not self._ledger.admits(gpu, placement.memory_mb)):
                    break
                self._gpu_starting[key] = starting + 1
                self._starting_prewarm_mb += cell.memory_mb
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
                    proxy = ContainerProxy(container, cell.kind, cell.memory_mb, prewarmed=True)
                    proxy.gpu = placement
            except (ContainerError, KeyError) as error:
                log.warning("GPU stem cell %s/%d MB on GPU %d failed to start: %s", cell.kind, cell.memory_mb, gpu, error)
            with self._lock:
                self._gpu_starting[key] -= 1
                self._starting_prewarm_mb -= cell.memory_mb
                if proxy is not None:
                    self._ledger.move(token, proxy)
                    self._containers.append(proxy)
                else:
                    self._ledger.release(token)
            if proxy is None:
                break

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
                containers = [_gpu_container_json(p) for p in on_gpu]
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
                    "resident_bytes": sum(m.bytes for p in on_gpu for m in p.container.residency.models
                                          if m.device.startswith("cuda")),
                    "held_bytes": sum(c["held_bytes"] for c in containers),
                    "over_request": sum(c["over_request"] for c in containers),
                })
            stats = {
                "cold_starts": self.cold_starts, "prewarm_starts": self.prewarm_starts,
                "warm_starts": self.warm_starts, "gpu_evictions": self.gpu_evictions,
                "gpu_waits": self.gpu_waits, "gpu_refused": self.gpu_refused, "buffered": len(self._buffer),
            }
        return {
            "inventory": {"source": inventory.source, "description": inventory.describe()},
            "sharing": self.gpu.sharing_json(),
            "gpus": gpus,
            "stats": stats,
        }

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

    def __init__(self, kind: str, memory_mb: int, placement: GpuPlacement | None = None) -> None:  # noqa: D107
        self.kind = kind
        self.memory_mb = memory_mb
        self.placement = placement


def _holds_gpu_model(proxy: ContainerProxy) -> bool:
    return any(m.device.startswith("cuda") for m in proxy.container.residency.models)


def _gpu_container_json(proxy: ContainerProxy) -> dict:
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
    }
