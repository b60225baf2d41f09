"""Admission of a member a front end creates before any activation (FPC's creation): which
container it will be. Called by ``ContainerPool.create`` under the pool's lock.

In order: a stem cell of the action's kind and memory (on a GPU: one whose placement is the
action's GPU request, on the GPU with the most free memory; the GPU invoker's prewarmed
containers serve FPC's creations as they serve pushed work), else a new member admitted by
host memory and, for a GPU action, by GPU memory on the GPU with the most free memory.
Nothing waits here: what does not fit now is ``NoRoom``, and the scheduler tries elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from invoker.containerpool import rules
from invoker.containerpool.creation import NoRoom
from invoker.containerpool.proxy import ContainerProxy
from invoker.entities import WhiskAction
from invoker.gpu.layer import GpuPlacement

if TYPE_CHECKING:
    from invoker.containerpool.pool import ContainerPool


def admit(pool: ContainerPool, action: WhiskAction, namespace: str) -> ContainerProxy:
    """A claimed, pinned member for ``action`` (the pool's lock held), or ``NoRoom``."""
    memory = action.limits.memory_mb
    placer = pool.gpu_placer
    placement: GpuPlacement | None = None
    stems = rules.stem_cells(pool._containers, action.kind, memory)
    if placer is not None and placer.is_gpu(action):
        request = placer.request(action)
        stems = [p for p in stems if p.gpu is not None and not placer.layer.paused(p.gpu.gpu)
                 and p.gpu == placer.placement(p.gpu.gpu, request)]  # its MPS limits are the action's
        if stems:
            return _from_stem_cell(pool, max(stems, key=lambda p: placer.ledger.free_mb(p.gpu.gpu)),
                                   action, namespace)
        gpus = [g for g in placer.ledger.candidates(request.memory_mb, {}) if not placer.layer.paused(g)]
        if not gpus:
            raise NoRoom(f"no GPU has {request.memory_mb} MB of GPU memory free")
        placement = placer.placement(gpus[0], request)
    else:
        stems = [p for p in stems if p.gpu is None]
        if stems:
            return _from_stem_cell(pool, stems[0], action, namespace)
    if not pool.make_host_room(memory):
        raise NoRoom(f"{memory} MB of host memory is not free ({pool.config.user_memory_mb - pool._memory.used_mb} MB are)")
    proxy = pool.add_member(None, action.kind, memory, placement)
    if placement is not None:
        placer.charge(proxy, placement)
    pool.counts.cold_starts += 1
    return pin(proxy, action, namespace)


def _from_stem_cell(pool: ContainerPool, stem: ContainerProxy, action: WhiskAction, namespace: str) -> ContainerProxy:
    pool.counts.prewarm_starts += 1
    pool.submit(pool.replenish_stem_cells)
    return pin(stem, action, namespace)


def pin(proxy: ContainerProxy, action: WhiskAction, namespace: str) -> ContainerProxy:
    proxy.bind(action, namespace)
    proxy.claim()  # while it starts and initialises
    proxy.pinned = True  # only its front end removes it: no reuse by pushed work, no eviction, no idling
    return proxy
