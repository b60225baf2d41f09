"""The pool's decisions (``invoker.containerpool.rules``) and its state table
(``invoker.containerpool.states``), tested as decisions: no threads, no clock, no containers."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from owruntime.resident import Residency, ResidentModel
from pool_support import make_action

from invoker.containerpool import rules
from invoker.containerpool.proxy import ContainerProxy
from invoker.containerpool.states import (
    Deadline,
    Due,
    IllegalTransition,
    State,
    Timeouts,
    deadlines_for,
    overdue,
)


@dataclass(frozen=True)
class Action:
    path: str
    version: str = "0.0.1"
    kind: str = "python:3"

    @property
    def identity_key(self) -> tuple:
        return (self.path, self.version)


@dataclass(eq=False)
class M:
    """A member as the rules read it."""

    action: Any = None
    namespace: str | None = "guest"
    state: State = State.READY
    kind: str = "python:3"
    memory_mb: int = 256
    initialized: bool = True
    active: int = 0
    max_concurrency: int = 1
    last_used: float = 0.0
    gpu: Any = None
    sleepless: bool = False
    deadlines: tuple = ()
    pinned: bool = False
    residency: Residency = field(default_factory=Residency)

    @property
    def is_prewarm(self) -> bool:
        return self.action is None


@dataclass(frozen=True)
class Placement:
    gpu: int


A, B = Action("guest/a"), Action("guest/b")
ON_GPU = Residency((ResidentModel("m", "cuda:0", 100),))
ON_CPU = Residency((ResidentModel("m", "cpu", 100),))


def stem(**kw) -> M:
    return M(**{"action": None, "namespace": None, "state": State.STARTED, "initialized": False, **kw})


# --------------------------------------------------------------------------- warm reuse


def test_a_container_serves_only_its_namespace_and_revision():
    mine = M(action=A)
    assert rules.serves(mine, "guest", A)
    assert not rules.serves(mine, "other", A)  # never shared across namespaces
    assert not rules.serves(mine, "guest", Action("guest/a", version="0.0.2"))
    assert not rules.serves(stem(), "guest", A)


@pytest.mark.parametrize(("state", "takes"), [
    (State.STARTING, True), (State.RUNNING, True), (State.READY, True), (State.PAUSING, True),
    (State.PAUSED, True), (State.STARTED, False), (State.SLEEPING, False), (State.ASLEEP, False),
    (State.REMOVING, False)])
def test_which_states_take_a_job(state, takes):
    assert rules.has_capacity(M(action=A, state=state)) is takes


def test_warm_choice_prefers_the_model_on_the_gpu_then_initialised_then_busy_then_recent():
    cold = M(action=A, state=State.STARTING, initialized=False, max_concurrency=4, active=1, last_used=9)
    plain = M(action=A, max_concurrency=4, last_used=5)
    busy = M(action=A, state=State.RUNNING, max_concurrency=4, active=2, last_used=1)
    loaded = M(action=A, gpu=Placement(0), residency=ON_GPU, max_concurrency=4, last_used=0)
    full = M(action=A, state=State.RUNNING, active=1, last_used=99)
    assert rules.warm_for([cold, plain, busy, loaded, full], "guest", A) is loaded
    assert rules.warm_for([cold, plain, busy, full], "guest", A) is busy
    assert rules.warm_for([cold, plain], "guest", A) is plain
    assert rules.warm_for([cold], "guest", A) is cold  # a starting container takes a second job
    assert rules.warm_for([full, M(action=B)], "guest", A) is None


# --------------------------------------------------------------------------- holding, idle, sleep


def test_one_idea_of_holding_a_model():
    assert rules.holds_model(M(action=A, gpu=Placement(0)))
    assert rules.holds_model(M(action=A, gpu=Placement(0), state=State.ASLEEP))
    assert not rules.holds_model(M(action=A))  # a CPU container
    assert not rules.holds_model(M(action=A, gpu=Placement(0), initialized=False, state=State.RUNNING))
    assert not rules.holds_model(M(action=A, gpu=Placement(0), state=State.STARTING))
    assert not rules.holds_model(M(action=A, gpu=Placement(0), state=State.REMOVING))
    assert not rules.holds_model(stem(gpu=Placement(0)))
    assert not rules.model_on_gpu(M(action=A, gpu=Placement(0), residency=ON_CPU))
    assert rules.model_on_gpu(M(action=A, gpu=Placement(0), residency=ON_GPU))


@pytest.mark.parametrize(("member", "idle"), [
    (M(action=A), True), (M(action=A, state=State.PAUSED), True), (M(action=A, state=State.PAUSING), True),
    (M(action=A, state=State.ASLEEP), True), (M(action=A, state=State.SLEEPING), False),
    (M(action=A, state=State.RUNNING, active=1), False), (M(action=A, state=State.REMOVING), False),
    (stem(), False)])
def test_one_idea_of_idle(member, idle):
    assert rules.is_idle(member) is idle


def test_what_can_sleep():
    gpu = {"action": A, "gpu": Placement(0), "residency": ON_CPU}
    assert rules.sleepable(M(**gpu))
    assert rules.sleepable(M(**gpu, state=State.PAUSED))
    assert not rules.sleepable(M(**gpu, sleepless=True))  # its last sleep gave nothing back
    assert not rules.sleepable(M(**gpu, state=State.ASLEEP))
    assert not rules.sleepable(M(action=A, gpu=Placement(0)))  # no model reported
    assert not rules.sleepable(M(action=A, residency=ON_CPU))  # not a GPU container


# --------------------------------------------------------------------------- deadlines


TIMEOUTS = Timeouts(pause_grace_s=10, idle_timeout_s=600, sleep_after_s=30)


def test_each_idle_state_has_its_deadlines():
    assert deadlines_for(State.READY, 100, TIMEOUTS, can_sleep=False) == (
        Deadline(700, Due.REMOVE), Deadline(110, Due.PAUSE))
    assert deadlines_for(State.READY, 100, TIMEOUTS, can_sleep=True) == (
        Deadline(700, Due.REMOVE), Deadline(130, Due.SLEEP), Deadline(110, Due.PAUSE))
    assert deadlines_for(State.PAUSED, 100, TIMEOUTS, can_sleep=True) == (
        Deadline(700, Due.REMOVE), Deadline(130, Due.SLEEP))
    assert deadlines_for(State.ASLEEP, 100, TIMEOUTS, can_sleep=True) == (Deadline(700, Due.REMOVE),)
    for busy in (State.RUNNING, State.STARTING, State.STARTED, State.PAUSING, State.SLEEPING, State.REMOVING):
        assert deadlines_for(busy, 100, TIMEOUTS, can_sleep=True) == ()


def test_when_several_deadlines_passed_removal_wins_then_sleep_then_pause():
    deadlines = deadlines_for(State.READY, 0, TIMEOUTS, can_sleep=True)
    assert overdue(deadlines, 5) is None
    assert overdue(deadlines, 10) is Due.PAUSE
    assert overdue(deadlines, 30) is Due.SLEEP
    assert overdue(deadlines, 600) is Due.REMOVE


def test_due_skips_a_sleep_the_container_can_no_longer_take_and_busy_containers():
    member = M(action=A, gpu=Placement(0), residency=ON_CPU)
    member.deadlines = deadlines_for(State.READY, 0, TIMEOUTS, can_sleep=True)
    assert rules.due(member, 31) is Due.SLEEP
    member.sleepless = True
    assert rules.due(member, 31) is Due.PAUSE
    member.active = 1
    assert rules.due(member, 10_000) is None


# --------------------------------------------------------------------------- stem cells and host memory


def test_stem_cells_match_kind_and_memory_and_starting_ones_count():
    ready, other = stem(), stem(memory_mb=512)
    starting = stem(state=State.STARTING)
    assert rules.stem_cells([ready, other, starting], "python:3", 256) == [ready]
    assert rules.stem_cells_short([ready, starting], "python:3", 256, want=3) == 1
    assert rules.stem_cells_short([ready], "python:3", 256, want=1, gpu=0) == 1  # GPU 0 has none
    assert rules.stem_cells_short([stem(gpu=Placement(0))], "python:3", 256, want=1, gpu=0) == 0


def test_host_admission_is_by_limit():
    assert rules.fits(used_mb=768, capacity_mb=1024, need_mb=256)
    assert not rules.fits(used_mb=769, capacity_mb=1024, need_mb=256)


def test_host_evictions_take_idle_warm_lru_then_stem_cells_and_nothing_if_not_enough():
    old, new = M(action=A, last_used=1), M(action=B, last_used=2)
    cell, busy = stem(), M(action=A, state=State.RUNNING, active=1)
    sleeping = M(action=A, state=State.SLEEPING, last_used=0)
    members = [new, busy, cell, old, sleeping]
    assert rules.host_evictions(members, 256) == [old]
    assert rules.host_evictions(members, 512) == [old, new]
    assert rules.host_evictions(members, 768) == [old, new, cell]
    assert rules.host_evictions(members, 1024) is None  # keep them all: it would not be enough


# --------------------------------------------------------------------------- GPU room


def room(available_mb: int, slots: int | None = None) -> rules.GpuRoom:
    return rules.GpuRoom(gpu=0, capacity_mb=1000, available_mb=available_mb, free_slots=slots)


def plan(members, needed_mb, available_mb, slots=None, new_client=True, sleep_on_pressure=True, spare=None):
    charges = {id(m): m.memory_mb for m in members}
    return rules.room_plan(room(available_mb, slots), members, needed_mb, new_client=new_client,
                           charge_mb=lambda m: charges[id(m)], sleep_frees_mb=lambda m: m.memory_mb - 50,
                           sleep_on_pressure=sleep_on_pressure, spare=spare)


def gpu_member(**kw) -> M:
    return M(**{"action": A, "gpu": Placement(0), "memory_mb": 400, **kw})


def test_room_already_there_or_on_its_way_takes_nothing():
    assert plan([gpu_member()], 300, available_mb=300) == rules.RoomPlan(0)


def test_sleep_comes_before_removal_least_recently_used_first():
    old = gpu_member(residency=ON_GPU, last_used=1)
    new = gpu_member(residency=ON_GPU, last_used=2)
    result = plan([new, old], 300, available_mb=0)
    assert result.sleeps == (old,) and result.removals == ()


def test_removal_order_cannot_sleep_then_asleep_then_stem_cells_then_could_sleep():
    cannot = gpu_member(last_used=5)  # no model reported
    asleep = gpu_member(state=State.ASLEEP, memory_mb=50, last_used=1)
    cell = stem(gpu=Placement(0), memory_mb=100)
    can = gpu_member(residency=ON_GPU, last_used=0)
    members = [can, cell, asleep, cannot]
    # A client slot is short: a sleep frees memory, never the slot, so something is removed.
    result = plan(members, 10, available_mb=1000, slots=0)
    assert result.removals == (cannot,) and result.sleeps == ()
    # Only removals make 950 MB: those that cannot sleep, asleep, stem cells, and last what could sleep.
    result = plan(members, 950, available_mb=0)
    assert result.removals == (cannot, asleep, cell, can) and result.sleeps == ()
    # Without sleep under pressure every idle warm container is one that cannot sleep: LRU first.
    result = plan(members, 900, available_mb=0, sleep_on_pressure=False)
    assert result.removals == (can, cannot, asleep, cell)
    assert plan(members, 2000, available_mb=0) is None  # more than the GPU holds


def test_a_sleep_made_needless_by_a_removal_is_not_started_and_spare_is_never_touched():
    can = gpu_member(residency=ON_GPU, last_used=0)
    cannot = gpu_member(last_used=1)
    result = plan([can, cannot], 400, available_mb=0)
    # The sleep alone frees 350 of 400 MB; the removal needed anyway frees 400: the sleep is dropped.
    assert result.sleeps == () and result.removals == (cannot,)
    assert plan([can], 300, available_mb=0, spare=can) is None


def test_cheapest_plan_prefers_room_on_its_way_then_fewest_removals():
    x, y = gpu_member(), gpu_member()
    sleeps = rules.RoomPlan(1, sleeps=(x,))
    removal = rules.RoomPlan(2, removals=(y,))
    free = {0: 0, 1: 0, 2: 0}
    assert rules.cheapest_plan([None, removal, sleeps], free, {}) is sleeps
    assert rules.cheapest_plan([removal, rules.RoomPlan(0), sleeps], free, {}) == rules.RoomPlan(0)
    assert rules.cheapest_plan([None, None], free, {}) is None


def test_a_waiting_job_queues_for_the_largest_gpu_with_most_coming():
    assert rules.queue_gpu({0: 1000, 1: 1000}, {0: 10, 1: 20}, 500) == 1
    assert rules.queue_gpu({0: 400, 1: 1000}, {0: 400, 1: 20}, 500) == 1  # GPU 0 is too small
    assert rules.queue_gpu({0: 1000, 1: 1000}, {0: 20, 1: 20}, 500) == 0  # a tie: the first


def test_the_host_budget_removes_least_recently_used_asleep_first():
    a, b, c = M(last_used=3), M(last_used=1), M(last_used=2)
    assert rules.over_host_budget({a: 100, b: 100, c: 100}, 150) == [b, c]
    assert rules.over_host_budget({a: 100}, 150) == []


# --------------------------------------------------------------------------- the proxy's transitions


def proxy(stem_cell: bool = False) -> ContainerProxy:
    member = ContainerProxy("python:3", 256, threading.Lock(), TIMEOUTS)
    if not stem_cell:
        member.bind(make_action("a", concurrency=2), "guest")
    return member


def test_a_starting_container_stays_starting_when_claimed_and_states_move_only_as_allowed():
    member = proxy()
    member.claim()
    member.claim()  # a second concurrent job while it starts (its concurrency allowing)
    assert member.state is State.STARTING and member.active == 2
    with pytest.raises(IllegalTransition):
        member.begin_pause()  # nothing to pause before it exists
    assert member.take_start() and not member.take_start()  # one job creates it


def test_a_stem_cell_has_nothing_to_sleep_and_a_run_is_never_put_to_sleep():
    cell = proxy(stem_cell=True)
    cell.state = State.STARTED
    with pytest.raises(IllegalTransition):
        cell.begin_sleep()
    cell.claim()
    assert cell.state is State.RUNNING
    with pytest.raises(IllegalTransition):
        cell.begin_sleep()
    with pytest.raises(IllegalTransition):
        cell.slept(None)  # only through SLEEPING


def test_a_release_sets_the_idle_deadlines_and_a_failed_one_retires():
    member = proxy()
    member.state = State.RUNNING
    member.active = 2
    member.container = _Alive()  # type: ignore[assignment]
    assert member.release(reusable=False) is False and member.state is State.REMOVING  # the other job still runs
    assert member.release(reusable=True) is True  # the last one out removes it
    fresh = proxy()
    fresh.state, fresh.active, fresh.container = State.RUNNING, 1, _Alive()  # type: ignore[assignment]
    assert fresh.release(reusable=True) is False and fresh.state is State.READY
    assert [d.then for d in fresh.deadlines] == [Due.REMOVE, Due.PAUSE]


class _Alive:
    def is_alive(self) -> bool:
        return True


def test_a_pinned_member_is_its_front_ends_alone():
    pinned = M(action=A, gpu=Placement(0), residency=ON_CPU, pinned=True)
    pinned.deadlines = deadlines_for(State.READY, 0, TIMEOUTS, can_sleep=True)
    assert not rules.serves(pinned, "guest", A)  # no pushed job runs on an FPC container
    assert not rules.is_idle(pinned) and not rules.sleepable(pinned)
    assert rules.due(pinned, 10_000) is None
    assert rules.host_evictions([pinned], 1) is None
    assert plan([pinned], 100, available_mb=0) is None  # a GPU room plan leaves it alone
