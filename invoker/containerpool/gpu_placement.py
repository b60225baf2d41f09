"""GPU actions in the pool: placement on a GPU, admission by GPU memory, and GPU sleep.

A GPU action goes, in order, to: a warm container of its action (the pool's ``rules.warm_for``,
one with its model on the GPU first); an asleep container of its action, woken (its charge
grown back to the request under the lock before its ``/run`` wakes the models; no room:
room is made and the job waits, as for a cold start); a GPU stem cell of the same kind,
memory and GPU request, on the GPU with the most free memory and the least load; a cold
start on such a GPU; else room is made (``rules.room_plan``: idle containers put to sleep
before any is destroyed) and the job waits in that GPU's buffer. GPU memory is admitted by
the action's GPU request (``invoker.gpu.request``) and never over-committed: a removed
container's memory, and what a sleep under way will free, count as used until they are.

GPU sleep (``invoker.gpu.sleep``): SLEEPING, then ASLEEP with the charge shrunk to what the
runtime says it still holds as far as the invoker can check it (a report that does not add up
is ignored), its MPS client slot still taken, the host memory of its models
counted against ``GpuSettings.sleep_host_budget_mb`` (least recently used asleep containers
removed beyond it). ``GpuPlacer`` holds the GPU ledgers and works under the pool's lock.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from invoker.containerpool import rules
from invoker.containerpool.activation import Job
from invoker.containerpool.container import SleepReport
from invoker.containerpool.memory import MemoryLedger
from invoker.containerpool.proxy import ContainerProxy
from invoker.containerpool.states import State
from invoker.entities import ActivationResponse, WhiskAction
from invoker.errors import activation_response_for
from invoker.gpu import metrics
from invoker.gpu.layer import GpuLayer, GpuPlacement
from invoker.gpu.ledger import Charge, GpuLedger
from invoker.gpu.request import ANNOTATION as GPU_ANNOTATION
from invoker.gpu.request import (
    RESOURCES_ANNOTATION,
    GpuRequest,
    GpuRequestError,
    is_gpu_kind,
    needs_gpu,
    parse_request,
)
from invoker.gpu.sleep import asleep_charge_mb, expected_charge_mb, host_mb, implausible
from invoker.manifest import StemCell

if TYPE_CHECKING:
    from invoker.containerpool.pool import ContainerPool

log = logging.getLogger(__name__)

MSG_MPS_DOWN = ("GPU sharing (MPS) is down on this invoker: it admits no GPU activation until it is back; "
                "the controller sends GPU work elsewhere meanwhile.")


def gpu_buffer(gpu: str) -> str:
    """The run buffer of the jobs waiting for memory on one GPU."""
    return f"gpu:{gpu}"


@dataclass(frozen=True)
class AsleepRecord:
    """A container's sleep: the runtime's report, and what its GPU charge became."""

    report: SleepReport
    held_mb: int  # its charge asleep
    measured: bool  # held_mb from the report's freed memory (True) or the context estimate


class GpuPlacer:
    def __init__(self, pool: ContainerPool, layer: GpuLayer) -> None:
        self.pool = pool
        self.layer = layer
        self.settings = layer.settings
        self.ledger = GpuLedger(layer.inventory, layer.settings.reserved_mb, layer.client_limits())
        # Host memory the models of asleep containers hold (keyed by member). Not part of the
        # pool's host memory: a container's is already reserved whole by its ``limits.memory``
        # (its pinned weights are inside it, awake or asleep). A budget of its own on top.
        self.asleep_host = MemoryLedger()
        layer.listeners.append(self._on_mps_change)

    # ------------------------------------------------------------------ what is a GPU action

    def is_gpu(self, action: WhiskAction) -> bool:
        return needs_gpu(action.kind, action.annotation(RESOURCES_ANNOTATION))

    def is_gpu_kind(self, kind: str) -> bool:
        return is_gpu_kind(kind)

    def request(self, action: WhiskAction) -> GpuRequest:
        return parse_request(action.annotation(GPU_ANNOTATION), action.limits.memory_mb)

    def placement(self, gpu: str, request: GpuRequest) -> GpuPlacement:
        return GpuPlacement(gpu, request.memory_mb, request.sm_on(self.layer.memory_total_mb(gpu)))

    def refusal(self, action: WhiskAction) -> ActivationResponse | None:
        """Why a GPU action can never run here (MPS down, bad request, bigger than every GPU)."""
        if not self.layer.admitting():
            return ActivationResponse.whisk_error(MSG_MPS_DOWN)
        try:
            request = self.request(action)
        except GpuRequestError as error:
            return activation_response_for(error)
        with self.pool._lock:
            if self.ledger.fits_anywhere(request.memory_mb):
                return None
            self.pool.counts.gpu_refused += 1
            largest = max((self.ledger.capacity_mb(g) for g in self.ledger.devices), default=0)
        log.warning("refused %s: GPU request %d MB, largest GPU admits %d MB", action.path, request.memory_mb, largest)
        return ActivationResponse.developer_error(
            f"The action's GPU memory request of {request.memory_mb} MB exceeds what any GPU of this "
            f"invoker can admit ({largest} MB).")

    # ------------------------------------------------------------------ placement (lock held)

    def waiting_buffer(self, job: Job, buffers: Mapping[str, deque]) -> str | None:
        """The GPU buffer a new GPU job queues in while any GPU job waits; else None."""
        if not any(b for key, b in buffers.items() if key.startswith("gpu")):
            return None
        return gpu_buffer(self._queue_gpu(self.request(job.action).memory_mb))

    def _queue_gpu(self, request_mb: int) -> str:
        ledger = self.ledger
        return rules.queue_gpu({g: ledger.capacity_mb(g) for g in ledger.devices},
                               {g: ledger.free_mb(g) + ledger.releasing_mb(g) for g in ledger.devices}, request_mb)

    def _members(self) -> list[ContainerProxy]:
        return self.pool._containers

    def _loads(self) -> dict[str, int]:
        """Jobs per GPU in created containers. A cold start's job counts once its container
        exists, as before the pool kept starting members (counting it from the start changed
        the 10-GPU simulation by under 1 %: p99 -1 %, cold starts -0.1 %; not adopted here)."""
        loads: dict[str, int] = {}
        for proxy in self._members():
            if proxy.gpu is not None and proxy.container is not None:
                loads[proxy.gpu.gpu] = loads.get(proxy.gpu.gpu, 0) + proxy.active
        return loads

    def place(self, job: Job) -> ContainerProxy | str:
        """Wake, stem cell, cold start, else the buffer of the GPU it waits for."""
        action, ledger, layer = job.action, self.ledger, self.layer
        request = self.request(action)
        loads = self._loads()
        woken = self._place_asleep(job)
        if woken is not None:
            return woken
        stems = [p for p in rules.stem_cells(self._members(), action.kind, action.limits.memory_mb)
                 if p.gpu is not None and not layer.paused(p.gpu.gpu)
                 and p.gpu == self.placement(p.gpu.gpu, request)]  # its MPS limits are the action's
        if stems:
            stem = min(stems, key=lambda p: (-ledger.free_mb(p.gpu.gpu), loads.get(p.gpu.gpu, 0)))
            return self.pool.take_stem_cell(stem, job)
        candidates = [g for g in ledger.candidates(request.memory_mb, loads) if not layer.paused(g)]
        if not candidates:
            target = self._make_room(request.memory_mb, loads)
            self.pool.counts.gpu_waits += 1
            # Drained once the removed containers are gone, or when memory frees.
            return gpu_buffer(self._queue_gpu(request.memory_mb) if target is None else target)
        if not self.pool.make_host_room(action.limits.memory_mb):
            return gpu_buffer(candidates[0])
        placement = self.placement(candidates[0], request)
        proxy = self.pool.add_member(job, placement=placement)
        self.charge(proxy, placement)
        return proxy

    def _place_asleep(self, job: Job) -> ContainerProxy | str | None:
        """An asleep container of the job's action, woken; its GPU has no room: room is made
        there and the job waits in that GPU's buffer; none can be made: None (a stem cell or a
        cold start elsewhere). A container of the action going to sleep: the job waits for it."""
        ledger = self.ledger
        mine = [p for p in self._members() if p.state in (State.ASLEEP, State.SLEEPING)
                and rules.serves(p, job.invocation_namespace, job.action) and not self.layer.paused(p.gpu.gpu)]
        for proxy in sorted((p for p in mine if p.state is State.ASLEEP), key=lambda p: -p.last_used):
            if ledger.can_grow(proxy, proxy.gpu.memory_mb):
                ledger.resize(proxy, proxy.gpu.memory_mb)  # before its /run wakes the models
                self.asleep_host.release(proxy)
                proxy.woken()
                proxy.claim()
                self.pool.counts.gpu_wakes += 1
                self.pool.counts.warm_starts += 1
                return proxy
            grow = proxy.gpu.memory_mb - ledger.charge(proxy).memory_mb
            plan = self._room_plan(proxy.gpu.gpu, grow, new_client=False, spare=proxy)
            if plan is not None:
                self._carry_out(plan)
                self.pool.counts.gpu_waits += 1
                return gpu_buffer(proxy.gpu.gpu)
        sleeping = [p for p in mine if p.state is State.SLEEPING]
        if sleeping:
            self.pool.counts.gpu_waits += 1
            return gpu_buffer(sleeping[0].gpu.gpu)  # placed on it once its sleep has ended
        return None

    def _make_room(self, needed_mb: int, loads: dict[str, int]) -> str | None:
        """Make room for a new container on the one GPU where that costs least; the GPU where
        room is coming, or None."""
        ledger = self.ledger
        plans = [self._room_plan(g, needed_mb, new_client=True) for g in ledger.devices]
        plan = rules.cheapest_plan(plans, {g: ledger.free_mb(g) for g in ledger.devices}, loads)
        if plan is None:
            return None
        self._carry_out(plan)
        return plan.gpu

    def _room_plan(self, gpu: str, needed_mb: int, new_client: bool,
                   spare: ContainerProxy | None = None) -> rules.RoomPlan | None:
        ledger = self.ledger
        slots = ledger.free_clients(gpu)
        room = rules.GpuRoom(gpu, ledger.capacity_mb(gpu), ledger.free_mb(gpu) + ledger.releasing_mb(gpu),
                             None if slots is None else slots + ledger.releasing_clients(gpu))
        on_gpu = [p for p in self._members() if p.gpu is not None and p.gpu.gpu == gpu]
        return rules.room_plan(room, on_gpu, needed_mb, new_client=new_client,
                               charge_mb=lambda p: ledger.charge(p).memory_mb, sleep_frees_mb=self._sleep_frees_mb,
                               sleep_on_pressure=self.settings.sleep_on_pressure, spare=spare)

    def _carry_out(self, plan: rules.RoomPlan) -> None:
        for proxy in plan.sleeps:
            log.info("putting idle %s to sleep on GPU %s to make room", proxy, plan.gpu)
            self.start_sleep(proxy)
        for proxy in plan.removals:
            log.info("evicting idle %s from GPU %s to make room", proxy, plan.gpu)
            self.pool.counts.gpu_evictions += 1
            self.pool.remove(proxy)

    # ------------------------------------------------------------------ charges (lock held)

    def stem_cells(self) -> list[tuple[StemCell, GpuPlacement]]:
        """The GPU stem cells wanted: each configured one on every GPU, at an action's default request."""
        return [(cell, self.placement(gpu, GpuRequest(cell.memory_mb)))
                for cell in self.settings.stem_cells for gpu in list(self.ledger.devices)]

    def admits(self, placement: GpuPlacement) -> bool:
        return self.ledger.admits(placement.gpu, placement.memory_mb)

    def charge(self, proxy: ContainerProxy, placement: GpuPlacement) -> None:
        self.ledger.commit(proxy, placement.gpu, placement.memory_mb)

    def holds_charge(self, proxy: ContainerProxy) -> bool:
        return self.ledger.charge(proxy) is not None

    def removed(self, proxy: ContainerProxy) -> None:
        """A member left the pool: its GPU memory is free once its container is gone."""
        self.asleep_host.release(proxy)
        if proxy.container is None:  # never created: nothing to wait for
            self.ledger.release(proxy)
            return
        self.ledger.mark_releasing(proxy)
        self.pool.submit(self._destroy, proxy)

    def _destroy(self, proxy: ContainerProxy) -> None:
        try:
            proxy.destroy()
        finally:
            with self.pool._lock:
                self.ledger.release(proxy)
            self.pool.drain()  # waiting jobs first, then stem cells get what is left
            if not self.pool.stopping:
                self.pool.replenish_stem_cells()

    # ------------------------------------------------------------------ GPU sleep

    def _sleep_frees_mb(self, proxy: ContainerProxy) -> int:
        """What putting an awake container to sleep is expected to free on its GPU."""
        return self.ledger.charge(proxy).memory_mb - self._expected_asleep_mb(proxy)

    def _expected_asleep_mb(self, proxy: ContainerProxy) -> int:
        return expected_charge_mb(self.ledger.charge(proxy).memory_mb, self.settings.sleep_context_mb)

    def start_sleep(self, proxy: ContainerProxy) -> None:
        """SLEEPING (lock held): what it should free counts as on its way until it answers."""
        paused = proxy.begin_sleep()
        self.ledger.mark_shrinking(proxy, self._expected_asleep_mb(proxy))
        self.pool.submit(self._sleep, proxy, paused)

    def _sleep(self, proxy: ContainerProxy, paused: bool) -> None:
        """``POST /sleep`` (a paused container resumed first); the answer is booked in
        ``_slept``, whatever happens here."""
        report = SleepReport(False, problem="not sent")
        try:
            report = proxy.sleep_call(paused, self.settings.sleep_timeout_s)
        except Exception as error:  # a backend that cannot resume it: it cannot run either
            log.warning("sleep of %s failed: %s", proxy, error)
            report = SleepReport(False, problem=f"{type(error).__name__}: {error}")
            with self.pool._lock:
                if proxy.state is State.SLEEPING:
                    self.pool.remove(proxy)
        finally:
            with self.pool._lock:
                self._book(proxy, report)
            self.pool.drain()

    def _book(self, proxy: ContainerProxy, report: SleepReport) -> None:
        """``_slept``, after which the container is out of SLEEPING whatever it raised: a
        container left there would never run nor be removed (the janitor skips SLEEPING)."""
        try:
            self._slept(proxy, report)
        except Exception:
            log.exception("booking the sleep of %s failed: removing it (what it holds is unknown)", proxy)
            if proxy.state is State.SLEEPING:
                self.pool.remove(proxy)

    def _stays_awake(self, proxy: ContainerProxy) -> None:
        """SLEEPING -> READY with its whole charge; not tried again until it runs."""
        self.ledger.mark_shrinking(proxy, None)
        proxy.stayed_awake()
        self.pool.counts.gpu_sleep_failures += 1

    def _slept(self, proxy: ContainerProxy, report: SleepReport) -> None:
        """Book a sleep's answer (lock held): the charge shrinks only now, to what the runtime
        says it still holds as far as the invoker can check it (``invoker.gpu.sleep``); nothing
        given back, or a report that does not add up: awake again, not tried until it runs."""
        if proxy.state is not State.SLEEPING:
            return  # removed meanwhile: its removal released everything
        counts = self.pool.counts
        if not report.slept:
            self._stays_awake(proxy)
            log.info("%s did not go to sleep (%s): %s", proxy, report.problem or "nothing to sleep",
                     [k.get("reason") for k in report.kept])
            return
        admitted = self.ledger.charge(proxy).memory_mb
        memory_limit = proxy.container.spec.memory_mb
        wrong = implausible(report, admitted, memory_limit)
        if wrong is not None:  # the tenant's process says what it cannot have done
            self._stays_awake(proxy)
            log.warning("ignored the sleep report of %s (counted awake): %s", proxy, wrong)
            return
        held, measured = asleep_charge_mb(admitted, report, proxy.residency, self.settings.sleep_context_mb)
        self.ledger.resize(proxy, held)
        self.asleep_host.commit(proxy, host_mb(report, proxy.residency, memory_limit))
        proxy.slept(AsleepRecord(report, held, measured))
        counts.gpu_sleeps += 1
        log.info("%s asleep: holds %d MB on GPU %s (%s), %d host bytes", proxy, held, proxy.gpu.gpu,
                 "measured" if measured else "estimated", report.host_bytes)
        asleep = {p: self.asleep_host.reserved_mb(p) for p in self.asleep_host.owners()}
        for victim in rules.over_host_budget(asleep, self.settings.sleep_host_budget_mb):
            log.info("host budget for sleeping models (%d MB) exceeded: removing %s",
                     self.settings.sleep_host_budget_mb, victim)
            counts.gpu_sleep_removals += 1
            self.pool.remove(victim)

    # ------------------------------------------------------------------ MPS and reporting

    def _on_mps_change(self, up: bool) -> None:
        """The MPS daemon went down: answer the GPU work waiting here (no GPU takes it now);
        it came back: start what waits."""
        if up or self.layer.admitting():  # other GPUs (time-sliced) still take it
            self.pool.submit(self.pool.drain)
            return
        with self.pool._lock:
            refused = self.pool.take_waiting(lambda job: self.is_gpu(job.action))
        for job in refused:
            self.pool.fail(job, ActivationResponse.whisk_error(MSG_MPS_DOWN))
        if refused:
            log.error("answered %d waiting GPU activations: the MPS daemon is down", len(refused))
        self.pool.submit(self.pool.drain)  # CPU jobs that waited behind them

    def snapshot(self) -> dict:
        """Per-GPU state for ``/gpus`` and the metrics."""
        inventory = self.layer.inventory.sample()  # NVML's live memory use and utilisation
        ledger, counts = self.ledger, self.pool.counts
        with self.pool._lock:
            gpus = []
            for device in inventory.devices:
                key = device.key
                on_gpu = [p for p in self._members() if p.gpu is not None and p.gpu.gpu == key]
                containers = [_container_json(p, ledger.charge(p)) for p in on_gpu]
                resident = {m.key for p in on_gpu for m in p.residency.models if m.device.startswith("cuda")}
                gpus.append({
                    **device.to_json(),
                    "capacity_mb": ledger.capacity_mb(key),
                    "committed_mb": ledger.committed_mb(key),
                    "releasing_mb": ledger.releasing_mb(key),
                    "free_mb": ledger.free_mb(key),
                    "key": key,
                    "mps_client_slots": ledger.max_clients.get(key),
                    "mps": self.layer.devices[key].mode == "mps",
                    "sharing": self.layer.devices[key].mode,
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
                "cold_starts": counts.cold_starts, "prewarm_starts": counts.prewarm_starts,
                "warm_starts": counts.warm_starts, "gpu_evictions": counts.gpu_evictions,
                "gpu_waits": counts.gpu_waits, "gpu_refused": counts.gpu_refused,
                "buffered": self.pool._buffered(),
                "gpu_sleeps": counts.gpu_sleeps, "gpu_wakes": counts.gpu_wakes,
                "gpu_sleep_failures": counts.gpu_sleep_failures, "gpu_sleep_removals": counts.gpu_sleep_removals,
                "sleep_host_mb": self.asleep_host.used_mb,
                "sleep_host_budget_mb": self.settings.sleep_host_budget_mb,
            }
        return {
            "inventory": {"source": inventory.source, "description": inventory.describe()},
            "sharing": self.layer.sharing_json(),
            "gpus": gpus,
            "stats": stats,
        }


def _container_json(proxy: ContainerProxy, charge: Charge | None) -> dict:
    residency = proxy.residency
    held = sum(n for device, n in residency.held.items() if device.startswith("cuda"))  # it sees one GPU
    return {
        "id": proxy.container.id if proxy.container is not None else None,
        "metrics_id": metrics.opaque_id(proxy.container.id) if proxy.container is not None else None,
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
