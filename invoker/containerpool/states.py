"""A pool container's states, the moves between them, and each state's deadline.

The names are those of OpenWhisk's ``ContainerProxy.scala`` (``Starting``, ``Started``,
``Running``, ``Ready``, ``Pausing``, ``Paused``, ``Removing``), plus GPU sleep's two.
Every state says what the engine has really done: ``PAUSING`` means ``docker pause`` is
under way, ``PAUSED`` that it finished (a job claimed meanwhile resumes it first), so no
flag beside the state has to be believed. Pure data and functions: ``proxy`` applies them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.Enum):
    STARTING = "starting"  # its container is being created: a cold start, or a stem cell warming
    STARTED = "started"  # a stem cell, created and warm, bound to no action
    RUNNING = "running"  # at least one activation in flight
    READY = "ready"  # warm and idle
    PAUSING = "pausing"  # ``docker pause`` under way
    PAUSED = "paused"
    SLEEPING = "sleeping"  # GPU: ``POST /sleep`` under way; its charge is still whole
    ASLEEP = "asleep"  # GPU: models in host memory; its charge shrunk to what it still holds
    REMOVING = "removing"


class IllegalTransition(RuntimeError):
    """A state change that ``ALLOWED`` does not list: a bug in the pool."""


# Every state change a container may make. A claim does not change PAUSING, PAUSED or STARTING:
# the engine has not resumed or created it yet, and the claiming job makes that move itself
# (``ContainerProxy.resume_for_run``, ``started``). Waking from ASLEEP has no state of its own:
# the claim grows the GPU charge and moves to RUNNING under the pool's lock, and the next
# ``/run`` wakes the models.
ALLOWED: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.STARTED, State.RUNNING, State.REMOVING}),
    State.STARTED: frozenset({State.RUNNING, State.REMOVING}),
    State.RUNNING: frozenset({State.READY, State.REMOVING}),
    State.READY: frozenset({State.RUNNING, State.PAUSING, State.SLEEPING, State.REMOVING}),
    State.PAUSING: frozenset({State.PAUSED, State.RUNNING, State.READY, State.REMOVING}),
    State.PAUSED: frozenset({State.RUNNING, State.SLEEPING, State.REMOVING}),
    State.SLEEPING: frozenset({State.ASLEEP, State.READY, State.REMOVING}),
    State.ASLEEP: frozenset({State.RUNNING, State.REMOVING}),
    State.REMOVING: frozenset({State.REMOVING}),
}

# An idle container (bound to an action, no job) is in one of these: the one idea of idle that
# idling, eviction and the room plan share. SLEEPING and PAUSING are moves under way, not rest.
IDLE = frozenset({State.READY, State.PAUSED, State.ASLEEP})
# Claimable by a job of its action (while it has a free concurrency slot). ASLEEP is claimed
# only through a wake (its GPU charge grows first), SLEEPING not before its sleep has ended.
CLAIMABLE = frozenset({State.STARTING, State.RUNNING, State.READY, State.PAUSING, State.PAUSED})


class Due(enum.Enum):
    """What happens to an idle container when its state's deadline passes."""

    PAUSE = "pause"
    SLEEP = "sleep"
    REMOVE = "remove"


@dataclass(frozen=True)
class Timeouts:
    """The idle deadlines: OpenWhisk's ``pauseGrace`` and ``idleContainer``, and GPU sleep's."""

    pause_grace_s: float
    idle_timeout_s: float
    sleep_after_s: float = 0.0  # 0: a GPU container sleeps only under memory pressure


@dataclass(frozen=True)
class Deadline:
    at: float  # on the pool's clock
    then: Due


def deadlines_for(state: State, last_used: float, timeouts: Timeouts, can_sleep: bool) -> tuple[Deadline, ...]:
    """The deadlines of an idle container in ``state``, the one that wins when several have
    passed first (removal, then sleep, then pause); none for a container that is not idle (a
    stem cell never times out)."""
    if state not in IDLE:
        return ()
    deadlines = [Deadline(last_used + timeouts.idle_timeout_s, Due.REMOVE)]
    if can_sleep and timeouts.sleep_after_s and state in (State.READY, State.PAUSED):
        deadlines.append(Deadline(last_used + timeouts.sleep_after_s, Due.SLEEP))
    if state is State.READY:
        deadlines.append(Deadline(last_used + timeouts.pause_grace_s, Due.PAUSE))
    return tuple(deadlines)


def overdue(deadlines: tuple[Deadline, ...], now: float) -> Due | None:
    """What is due at ``now``: the first deadline passed, in the order ``deadlines_for`` gives."""
    return next((d.then for d in deadlines if now >= d.at), None)
