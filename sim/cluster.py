"""A simulated OpenWhisk GPU cluster: one controller (a policy from ``sim.policies``) and N
invoker nodes, each the project's real ``ContainerPool`` and ``GpuLayer`` on simulated time,
its GPUs declared (no NVML), shared through MPS as on a node (``SimMpsDaemon``).

An arrival at the controller picks a function (Zipf), the policy picks an invoker and takes
memory in its slots; the job reaches the invoker's pool half a dispatch round trip later; the
pool's completion (``ActivationSink.completed``) releases the slots and is recorded, latency
measured on the simulated clock plus the other half of the round trip. Every invoker's janitor
pass (``ContainerPool.tick``) and ping run once per simulated second, staggered.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from invoker.containerpool.activation import Job
from invoker.containerpool.pool import ContainerPool, ImageResolver, PoolConfig
from invoker.entities import WhiskAction, WhiskActivation, action_document
from invoker.gpu.inventory import GpuDevice, Inventory
from invoker.gpu.layer import GpuLayer, GpuSettings
from invoker.gpu.mps import SharingStatus
from invoker.manifest import StemCell
from invoker.messages import (
    ActivationMessage,
    ControllerInstanceId,
    FullyQualifiedEntityName,
    Identity,
    TransactionId,
)
from sim.advertise import LIMIT, PING_INTERVAL_S, Board, held_digests
from sim.container import SimContainerFactory, SimMpsDaemon
from sim.costs import MB, CostTable
from sim.kernel import Kernel, SimClock, SimExecutor
from sim.metrics import PolicyStats
from sim.policies import Classic, LeastLoaded, Locality, Policy, Slots
from sim.workload import NAMESPACE, Function, Population

KIND = "python:3-gpu"
SAMPLE_INTERVAL_S = 10.0  # GPU memory utilisation is sampled this often


@dataclass(frozen=True)
class ClusterConfig:
    gpus: int
    gpus_per_node: int = 4
    host_memory_per_gpu_mb: int = 80 * 1024  # user memory per GPU = its GPU memory: the controller's slots count GPU memory
    stem_cells: tuple[tuple[int, int], ...] = ((1024, 1), (2048, 1))  # (memory MB, count) per GPU
    pause_grace_s: float = 10.0  # PoolConfig defaults, OpenWhisk's
    idle_timeout_s: float = 600.0
    sleep_on_pressure: bool = True  # GpuSettings: GPU sleep (issue #20), the pool's default
    sleep_host_budget_mb: int = GpuSettings.sleep_host_budget_mb  # host memory the asleep models may hold
    advertise_limit: int = LIMIT  # held digests per ping (invoker.gpu.locality.MAX_HELD)
    slo_factor: float = 5.0  # a call meets its SLO when its latency <= slo_factor x its warm latency
    seed: int = 1

    def node_sizes(self) -> list[int]:
        """GPUs per node: ceil(gpus / gpus_per_node) nodes, GPUs spread as evenly as possible."""
        nodes = math.ceil(self.gpus / self.gpus_per_node)
        base, extra = divmod(self.gpus, nodes)
        return [base + (1 if i < extra else 0) for i in range(nodes)]


class _Images(ImageResolver):
    def image_for(self, kind: str) -> str:
        return "sim-runtime"


class SimInvoker:
    """One invoker node: the real pool and GPU layer with simulated containers."""

    def __init__(self, index: int, gpus: int, kernel: Kernel, clock: SimClock, executor: SimExecutor,
                 costs: CostTable, functions: dict[str, Function], config: ClusterConfig) -> None:
        self.index = index
        self.gpus = gpus
        memory = int(costs.gpu_memory_mb.value)
        inventory = Inventory(tuple(GpuDevice(index=g, memory_total_mb=memory) for g in range(gpus)), "declared")
        settings = GpuSettings(
            reserved_mb=int(costs.mps_server_memory_mb.value),
            stem_cells=tuple(StemCell(KIND, mb, count) for mb, count in config.stem_cells),
            prewarm=("torch",), mps_check_interval_s=0, mps_max_clients=int(costs.mps_clients.value),
            sleep_on_pressure=config.sleep_on_pressure, sleep_host_budget_mb=config.sleep_host_budget_mb)
        layer = GpuLayer(inventory, SharingStatus(True, "simulated MPS", tuple(str(i) for i in range(gpus))), settings,
                         SimMpsDaemon())
        self.factory = SimContainerFactory(clock, costs, functions)
        self.user_memory_mb = gpus * config.host_memory_per_gpu_mb
        self.pool = ContainerPool(
            self.factory, _Images(),
            PoolConfig(user_memory_mb=self.user_memory_mb, pause_grace_s=config.pause_grace_s,
                       idle_timeout_s=config.idle_timeout_s, container_prefix=f"sim{index}"),
            gpu=layer, clock=clock, executor=executor)


@dataclass(frozen=True)
class MembershipChange:
    """The GPU invokers change at ``at_s`` seconds of trace time. ``add_nodes``: nodes of
    ``gpus_per_node`` GPUs join (OpenWhisk appends them to the invoker list: the GPU pool's size N
    changes, so every action's home ``hash mod N`` and step size change). ``fail``: these invokers
    stop (the controller sees them unhealthy at once; N does not change, the walk skips them;
    their calls already dispatched still complete). ``window_s``: the calls arriving this long
    after the change are also counted apart (``RunResult.window``)."""

    at_s: float
    add_nodes: int = 0
    fail: tuple[int, ...] = ()
    window_s: float = 600.0


@dataclass
class RunResult:
    policy: str
    gpus: int
    nodes: int
    stats: PolicyStats
    sim_seconds: float
    wall_seconds: float
    events: int
    green_threads: int
    pool_counts: dict[str, int] = field(default_factory=dict)
    local_hits: int | None = None
    errors: list[str] = field(default_factory=list)
    unfinished: int = 0  # calls still waiting ``drain_limit_s`` after the last arrival
    window: PolicyStats | None = None  # the calls arriving in a ``MembershipChange``'s window

    def summary(self) -> dict:
        s = self.stats
        done = max(1, s.completed)
        return {
            "policy": self.policy, "gpus": self.gpus, "nodes": self.nodes,
            "arrivals": s.arrivals, "completed": s.completed, "unfinished": self.unfinished, "duplicates": s.duplicates, "failed": s.failed,
            "p50_ms": round(s.latency.percentile(50) * 1000, 2),
            "p99_ms": round(s.latency.percentile(99) * 1000, 2),
            "mean_ms": round(s.latency.total_s / done * 1000, 2),
            "cold_start_share": round(s.paid_init / done, 4),
            "slo_attainment": round(s.slo_met / done, 4),
            "gpu_memory_committed": round(s.gpu_committed_sum / max(1, s.gpu_memory_samples), 4),
            "gpu_memory_resident": round(s.gpu_resident_sum / max(1, s.gpu_memory_samples), 4),
            "forced_by_controller": s.forced,
            "live_containers_peak": s.live_containers_peak,
            **self.pool_counts,
            "locality_hits": self.local_hits,
            "sim_seconds": round(self.sim_seconds, 1),
            "wall_seconds": round(self.wall_seconds, 2),
            "events": self.events, "green_threads": self.green_threads,
            "events_per_second": round(self.events / max(self.wall_seconds, 1e-9)),
            "activations_per_second": round(s.completed / max(self.wall_seconds, 1e-9)),
            "errors": self.errors[:5],
            **({"after_change": window_summary(self.window)} if self.window is not None else {}),
        }


def window_summary(s: PolicyStats) -> dict:
    done = max(1, s.completed)
    return {"arrivals": s.arrivals, "completed": s.completed,
            "p50_ms": round(s.latency.percentile(50) * 1000, 2), "p99_ms": round(s.latency.percentile(99) * 1000, 2),
            "cold_start_share": round(s.paid_init / done, 4), "slo_attainment": round(s.slo_met / done, 4)}


class Cluster:
    def __init__(self, config: ClusterConfig, policy: str, population: Population, costs: CostTable) -> None:
        self.config = config
        self.costs = costs
        self.population = population
        self.kernel = Kernel()
        self.clock = SimClock(self.kernel)
        self.executor = SimExecutor(self.kernel)
        functions = {f.name: f for f in population.functions}
        self.invokers = [SimInvoker(i, g, self.kernel, self.clock, self.executor, costs, functions, config)
                         for i, g in enumerate(config.node_sizes())]
        n = len(self.invokers)
        self.slots = Slots([inv.user_memory_mb for inv in self.invokers])
        self.board = Board(n)
        self.policy: Policy = _make_policy(policy, n, config.seed, self.board)
        self.stats = PolicyStats()
        self.one_way_s = costs.dispatch_round_trip.value / 2
        self._inflight: dict[str, tuple[float, Function, int]] = {}
        self._ids = itertools.count()
        self._identity = Identity(subject=f"{NAMESPACE}-subject", namespace_name=NAMESPACE,
                                  namespace_uuid="00000000-0000-4000-8000-000000000000",
                                  authkey={"api_key": "sim"}, rights=("ACTIVATE",))
        self._actions: dict[str, WhiskAction] = {}
        self._rng = random.Random(config.seed)
        self._arrivals: Iterator[float | tuple[float, Function]] = iter(())
        self._arrivals_done = False
        self._last_arrival = 0.0
        self._gpu_capacity_mb = sum(inv.pool.gpu_placer.ledger.capacity_mb(g) for inv in self.invokers
                                    for g in inv.pool.gpu_placer.ledger.devices)
        self._functions = functions
        self._change: MembershipChange | None = None
        self._window_from = self._window_to = math.inf
        self.window: PolicyStats | None = None
        self._failed: set[int] = set()

    # ------------------------------------------------------------------ set-up

    def _action(self, fn: Function) -> WhiskAction:
        action = self._actions.get(fn.name)
        if action is None:
            doc = action_document(NAMESPACE, fn.name, KIND, None, False)
            # concurrency 1: the pool's init_lock is never contended (sim/kernel.py); no logs to collect
            doc["limits"].update(memory=fn.memory_mb, concurrency=1, logs=0, timeout=300_000)
            doc["_rev"] = "1-sim"
            action = self._actions[fn.name] = WhiskAction.from_document(doc, "def main(args):\n    return args\n")
        return action

    def _start(self, offset: float) -> None:
        for i, invoker in enumerate(self.invokers):
            self.executor.submit(invoker.pool.start, False)
            self.kernel.at(offset + PING_INTERVAL_S * (i + 1) / len(self.invokers), self._tick, i)
        self.kernel.at(offset, self._sample)

    # ------------------------------------------------------------------ events

    def _change_membership(self, change: MembershipChange) -> None:
        for i in change.fail:
            self._failed.add(i)
            self.slots.usable[i] = False
            self.board.update(i, frozenset())  # no pings: the controller keeps no holder tag of it usable
        if change.add_nodes:
            for k in range(change.add_nodes):
                i = len(self.invokers)
                invoker = SimInvoker(i, self.config.gpus_per_node, self.kernel, self.clock, self.executor,
                                     self.costs, self._functions, self.config)
                self.invokers.append(invoker)
                self.slots.add(invoker.user_memory_mb)
                self._gpu_capacity_mb += sum(invoker.pool.gpu_placer.ledger.capacity_mb(g) for g in invoker.pool.gpu_placer.ledger.devices)
                self.executor.submit(invoker.pool.start, False)
                self.kernel.after(PING_INTERVAL_S * (k + 1) / change.add_nodes, self._tick, i)
            self.board.grow(len(self.invokers))
            self.policy.resize(len(self.invokers))

    def _tick(self, i: int) -> None:
        invoker = self.invokers[i]
        invoker.pool.tick()  # a failed node's pool still drains the calls it had (its pings are gone)
        if isinstance(self.policy, Locality) and i not in self._failed:
            self.board.update(i, held_digests(invoker.pool, self.config.advertise_limit))
        self.kernel.after(PING_INTERVAL_S, self._tick, i)

    def _sample(self) -> None:
        committed = resident = 0
        live = 0
        for invoker in self.invokers:
            ledger = invoker.pool.gpu_placer.ledger
            committed += sum(ledger.committed_mb(g) for g in ledger.devices)
            for proxy in invoker.pool._containers:
                if proxy.container is None:
                    continue  # decided on, not created yet
                live += 1
                resident += sum(m.bytes for m in proxy.residency.models) / MB
        self.stats.sample_gpu(committed / self._gpu_capacity_mb, resident / self._gpu_capacity_mb, live)
        self.kernel.after(SAMPLE_INTERVAL_S, self._sample)

    def _arrive(self, now: float, fn: Function | None) -> None:
        fn = fn or self.population.pick(self._rng)
        action = self._action(fn)
        invoker, forced = self.policy.choose(NAMESPACE, fn.fqn, fn.memory_mb, self.slots)
        self.stats.arrivals += 1
        self.stats.forced += forced
        aid = f"{next(self._ids):032x}"
        self._inflight[aid] = (now, fn, invoker)
        if self._window_from <= now < self._window_to:
            self.window.arrivals += 1
        msg = ActivationMessage(
            transid=TransactionId.new(aid, self.clock.wall_ms()),
            action=FullyQualifiedEntityName(NAMESPACE, fn.name, "0.0.1"), revision=action.rev,
            user=self._identity, activation_id=aid, root_controller_index=ControllerInstanceId("0"), blocking=True)
        job = Job(msg=msg, action=action, arguments={}, init_env={}, sink=self)
        self.kernel.after(self.one_way_s, self.invokers[invoker].pool.run, job)
        self._next_arrival()

    def _next_arrival(self) -> None:
        item = next(self._arrivals, None)
        if item is None:
            self._arrivals_done = True
            return
        t, fn = item if isinstance(item, tuple) else (item, None)
        self._last_arrival = t
        self.kernel.at(t, self._arrive, t, fn)

    # ------------------------------------------------------------------ ActivationSink

    def result_ready(self, job: Job, activation: WhiskActivation) -> None:
        pass

    def completed(self, job: Job, activation: WhiskActivation) -> None:
        entry = self._inflight.pop(job.msg.activation_id, None)
        if entry is None:
            self.stats.duplicates += 1
            return
        arrived, fn, invoker = entry
        self.slots.release(invoker, fn.memory_mb)
        latency = self.kernel.now + self.one_way_s - arrived
        stats = self.stats
        stats.completed += 1
        stats.latency.add(latency)
        if activation.response.status_code != 0:
            stats.failed += 1
        if any(key == "initTime" for key, _ in activation.annotations):
            stats.paid_init += 1
        if latency <= self.config.slo_factor * fn.warm_latency_s and activation.response.status_code == 0:
            stats.slo_met += 1
        if self._window_from <= arrived < self._window_to:
            self._record(self.window, latency, fn, activation)

    def _record(self, stats: PolicyStats, latency: float, fn: Function, activation: WhiskActivation) -> None:
        stats.completed += 1
        stats.latency.add(latency)
        ok = activation.response.status_code == 0
        stats.failed += not ok
        stats.paid_init += any(key == "initTime" for key, _ in activation.annotations)
        stats.slo_met += ok and latency <= self.config.slo_factor * fn.warm_latency_s

    # ------------------------------------------------------------------ run

    def change_at(self, change: MembershipChange, warm_up_s: float = 60.0) -> None:
        """Schedule a membership change (before ``run``; ``at_s`` in trace time, as the arrivals)."""
        self._change = change
        self._window_from = change.at_s + warm_up_s
        self._window_to = self._window_from + change.window_s
        self.window = PolicyStats()
        self.kernel.at(self._window_from, self._change_membership, change)

    def run(self, arrivals: Iterator[float | tuple[float, Function]], warm_up_s: float = 60.0,
            drain_limit_s: float = 3600.0) -> RunResult:
        """Start the pools (their stem cells warm up for ``warm_up_s`` before the first arrival),
        feed the arrivals (shifted by ``warm_up_s``; a time, the function drawn by popularity, or
        a (time, function) pair) and run until every call has completed, or ``drain_limit_s``
        after the last arrival: what is still waiting then is reported as ``unfinished``."""
        self._arrivals = ((a[0] + warm_up_s, a[1]) if isinstance(a, tuple) else a + warm_up_s for a in arrivals)
        started = time.perf_counter()
        self._start(0.0)
        self._next_arrival()
        kernel = self.kernel
        self.kernel.run(stop=lambda: self._arrivals_done and (
            not self._inflight or kernel.now > self._last_arrival + drain_limit_s))
        wall = time.perf_counter() - started
        counts: dict[str, int] = {"cold_starts": 0, "prewarm_starts": 0, "warm_starts": 0,
                                  "gpu_evictions": 0, "gpu_waits": 0, "gpu_sleeps": 0, "gpu_wakes": 0,
                                  "containers_created": 0}
        for invoker in self.invokers:
            pool = invoker.pool
            counts["cold_starts"] += pool.counts.cold_starts
            counts["prewarm_starts"] += pool.counts.prewarm_starts
            counts["warm_starts"] += pool.counts.warm_starts
            counts["gpu_evictions"] += pool.counts.gpu_evictions
            counts["gpu_waits"] += pool.counts.gpu_waits
            counts["gpu_sleeps"] += pool.counts.gpu_sleeps
            counts["gpu_wakes"] += pool.counts.gpu_wakes
            counts["containers_created"] += invoker.factory.created
        return RunResult(
            policy=self.policy.name, gpus=self.config.gpus, nodes=len(self.invokers), stats=self.stats,
            sim_seconds=self.kernel.now, wall_seconds=wall, events=self.kernel.events,
            green_threads=self.executor.started, pool_counts=counts,
            local_hits=getattr(self.policy, "local_hits", None),
            errors=[repr(e) for e in self.kernel.errors], unfinished=len(self._inflight), window=self.window)


def _make_policy(name: str, n: int, seed: int, board: Board) -> Policy:
    if name == "classic":
        return Classic(n, seed)
    if name == "least-loaded":
        return LeastLoaded(n)
    if name == "locality":
        return Locality(n, seed, board)
    raise ValueError(f"unknown policy {name!r}: classic, least-loaded or locality")
