"""The pool's decisions, as pure functions over what it holds (OpenWhisk's ``ContainerPool.schedule``,
``remove`` and ``memoryConsumptionOf`` are the model: decisions apart from effects).

Each question has one rule here: which warm container serves a job, which stem cell, whether
a job fits, what is idle, what holds a model, what can sleep, what is due, and how room is
made (on the host and on a GPU). The functions read members through ``Member`` (a
``ContainerProxy`` is one) and numbers the caller passes in; they take no lock, read no
clock and change nothing, so their tests need no threads, no time and no containers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from owruntime.resident import Residency

from invoker.containerpool.states import CLAIMABLE, IDLE, Due, State, overdue
from invoker.gpu.ledger import has_room


class ActionView(Protocol):
    path: str
    version: str
    kind: str

    @property
    def identity_key(self) -> Any: ...


class Member(Protocol):
    """What the rules read of a container in the pool."""

    kind: str
    memory_mb: int
    state: State
    action: Any  # ActionView | None
    namespace: str | None
    initialized: bool
    active: int
    max_concurrency: int
    last_used: float
    gpu: Any  # GpuPlacement | None
    sleepless: bool
    deadlines: tuple
    pinned: bool  # a front end's own (FPC): only that front end runs on it, moves it or removes it

    @property
    def residency(self) -> Residency: ...

    @property
    def is_prewarm(self) -> bool: ...


# --------------------------------------------------------------------------- warm reuse


def serves(member: Member, namespace: str, action: ActionView) -> bool:
    """A container is a pushed job's when it runs the same action (same revision) for the same
    invocation namespace (containers are never shared across namespaces) and no front end has
    pinned it for its own work."""
    return (not member.pinned and member.action is not None and member.namespace == namespace
            and member.action.identity_key == action.identity_key)


def has_capacity(member: Member) -> bool:
    """A free concurrency slot in a state that takes jobs (a starting container takes a second
    concurrent job, as Scala's ``WarmingColdData`` does)."""
    return member.active < member.max_concurrency and member.state in CLAIMABLE


def warm_for(members: Iterable[Member], namespace: str, action: ActionView) -> Member | None:
    """The warm container a job runs in: its action's, with a free slot; one with the model on
    its GPU first, then an initialised one, then the busiest (packing), then the latest used."""
    warm = [m for m in members if serves(m, namespace, action) and has_capacity(m)]
    return max(warm, key=lambda m: (model_on_gpu(m), m.initialized, m.active, m.last_used), default=None)


# --------------------------------------------------------------------------- what a container holds


def holds_model(member: Member) -> bool:
    """The one idea of "this container holds its action's model": a GPU container bound to an
    action, initialised, neither starting nor going away (asleep counts: a wake-up away)."""
    return (member.gpu is not None and member.action is not None and member.namespace is not None
            and member.initialized and member.state not in (State.STARTING, State.REMOVING))


def model_on_gpu(member: Member) -> bool:
    """It holds its model and the runtime reports a model awake on a CUDA device now."""
    return holds_model(member) and any(m.device.startswith("cuda") for m in member.residency.models)


def is_idle(member: Member) -> bool:
    """The one idea of idle, for idling, eviction and the room plan alike: bound to an action
    (stem cells are not), no job, at rest or pausing (a pause is cheap to undo; a sleep under
    way is not idle until it has ended). A pinned member is its front end's, never the pool's to
    pause, sleep, evict or time out."""
    return (not member.is_prewarm and not member.pinned and member.active == 0
            and (member.state in IDLE or member.state is State.PAUSING))


def sleepable(member: Member) -> bool:
    """An idle container holding a model the runtime reports, awake, not known to refuse."""
    return (holds_model(member) and not member.pinned and member.active == 0 and member.state in (State.READY, State.PAUSED)
            and not member.sleepless and bool(member.residency.models))


def due(member: Member, now: float) -> Due | None:
    """What an idle container's state deadlines say is due at ``now`` (a sleep only while it
    can still sleep)."""
    if member.is_prewarm or member.active or member.pinned:
        return None
    deadlines = tuple(d for d in member.deadlines if d.then is not Due.SLEEP or sleepable(member))
    return overdue(deadlines, now)


# --------------------------------------------------------------------------- stem cells


def stem_cells(members: Iterable[Member], kind: str, memory_mb: int) -> list[Member]:
    """Idle stem cells of a kind and memory (a GPU caller filters them by placement)."""
    return [m for m in members if m.is_prewarm and m.state is State.STARTED
            and m.kind == kind and m.memory_mb == memory_mb]


def stem_cells_short(members: Iterable[Member], kind: str, memory_mb: int, want: int, gpu: Any = None) -> int:
    """How many stem cells of a kind and memory (on one GPU, or off the GPUs) are missing;
    those starting count as there."""
    have = sum(1 for m in members if m.is_prewarm and m.state in (State.STARTED, State.STARTING)
               and m.kind == kind and m.memory_mb == memory_mb and _gpu_of(m) == gpu)
    return max(0, want - have)


def _gpu_of(member: Member) -> Any:
    return member.gpu.gpu if member.gpu is not None else None


# --------------------------------------------------------------------------- host memory


def fits(used_mb: int, capacity_mb: int, need_mb: int) -> bool:
    """The one admission rule for host memory: a container's ``limits.memory``, never its use."""
    return used_mb + need_mb <= capacity_mb


def host_evictions(members: Iterable[Member], needed_mb: int) -> list[Member] | None:
    """Idle containers whose removal frees ``needed_mb`` of host memory: warm ones least
    recently used first, then idle stem cells (which never time out, so they must not keep a
    job waiting for good). None when even all of them would not be enough: keep them."""
    members = list(members)
    candidates = sorted((m for m in members if is_idle(m)), key=lambda m: m.last_used)
    candidates += [m for m in members if m.is_prewarm and m.state is State.STARTED]
    victims, freed = [], 0
    for member in candidates:
        if freed >= needed_mb:
            break
        victims.append(member)
        freed += member.memory_mb
    return victims if freed >= needed_mb else None


# --------------------------------------------------------------------------- GPU room


@dataclass(frozen=True)
class RoomPlan:
    """How room is made on one GPU: containers to put to sleep, to remove (none: on its way)."""

    gpu: Any
    sleeps: tuple[Member, ...] = ()
    removals: tuple[Member, ...] = ()


@dataclass(frozen=True)
class GpuRoom:
    """One GPU as a room plan sees it."""

    gpu: Any
    capacity_mb: int
    available_mb: int  # free, plus what removals and sleeps under way will free
    free_slots: int | None  # MPS client slots free or on their way; None: no limit


def room_plan(room: GpuRoom, members: Sequence[Member], needed_mb: int, *, new_client: bool,
              charge_mb: Callable[[Member], int], sleep_frees_mb: Callable[[Member], int],
              sleep_on_pressure: bool, spare: Member | None = None) -> RoomPlan | None:
    """How ``needed_mb`` (and a client slot, for a ``new_client``) becomes free on a GPU:
    nothing when it is free or on its way; else idle containers holding models put to sleep,
    least recently used first; where that is not enough (a sleep frees memory, never its
    client slot), removals too, in this order: idle containers that cannot sleep, asleep
    ones, idle stem cells (so stem cells of another size never keep a job waiting for good),
    and last those that could sleep, each least recently used first. None: nothing makes
    room. ``members``: the GPU's; ``spare`` is never touched."""
    if room.capacity_mb < needed_mb:
        return None
    available = room.available_mb
    slots = room.free_slots if new_client else None
    if has_room(available, slots, needed_mb):
        return RoomPlan(room.gpu)
    idle = sorted((m for m in members if m is not spare and is_idle(m)), key=lambda m: m.last_used)
    can_sleep = [m for m in idle if sleepable(m)] if sleep_on_pressure else []
    sleeps: list[Member] = []
    for member in can_sleep:
        if available >= needed_mb:
            break
        sleeps.append(member)
        available += sleep_frees_mb(member)
    stems = [m for m in members if m is not spare and m.is_prewarm and m.state is State.STARTED]
    removable = ([m for m in idle if m not in can_sleep and m.state is not State.ASLEEP]
                 + [m for m in idle if m.state is State.ASLEEP] + stems + can_sleep)
    removals: list[Member] = []
    for member in removable:
        if has_room(available, slots, needed_mb):
            break
        if member in sleeps:  # removed instead of put to sleep
            sleeps.remove(member)
            available -= sleep_frees_mb(member)
        removals.append(member)
        available += charge_mb(member)  # asleep: its shrunk charge
        slots = None if slots is None else slots + 1
    if not has_room(available, slots, needed_mb):
        return None
    # Sleeps that became needless once others were removed are not started.
    while sleeps and has_room(available - sleep_frees_mb(sleeps[-1]), slots, needed_mb):
        available -= sleep_frees_mb(sleeps.pop())
    return RoomPlan(room.gpu, sleeps=tuple(sleeps), removals=tuple(removals))


def cheapest_plan(plans: Iterable[RoomPlan | None], free_mb: Mapping[Any, int],
                  loads: Mapping[Any, int]) -> RoomPlan | None:
    """Of the GPUs' plans (in device order): the first where room is already on its way (take
    nothing more), else the one with the fewest removals, then sleeps, then the most free memory
    and the least load. None: no GPU can make room."""
    best: tuple[tuple, RoomPlan] | None = None
    for plan in plans:
        if plan is None:
            continue
        if not plan.sleeps and not plan.removals:
            return plan
        rank = (len(plan.removals), len(plan.sleeps), -free_mb[plan.gpu], loads.get(plan.gpu, 0))
        if best is None or rank < best[0]:
            best = (rank, plan)
    return best[1] if best is not None else None


def queue_gpu(capacity_mb: Mapping[Any, int], coming_mb: Mapping[Any, int], request_mb: int) -> Any:
    """The GPU a waiting GPU job queues for: of those large enough (else all), the one with the
    most memory free or on its way, the first on a tie."""
    order = list(capacity_mb)
    large = [g for g in order if capacity_mb[g] >= request_mb] or order
    return max(large, key=lambda g: (coming_mb[g], -order.index(g)))


def over_host_budget(asleep_mb: Mapping[Member, int], budget_mb: int) -> list[Member]:
    """Asleep containers to remove, least recently used first, until the host memory their
    models hold is within ``budget_mb``."""
    used = sum(asleep_mb.values())
    victims = []
    for member in sorted(asleep_mb, key=lambda m: m.last_used):
        if used <= budget_mb:
            break
        victims.append(member)
        used -= asleep_mb[member]
    return victims
