"""Controller policies: which invoker an activation is sent to.

``Classic`` is OpenWhisk's ``ShardingContainerPoolBalancer`` as the controller patch runs it
for GPU work (``controller_patch/scala/GpuRouting.scala``, ``openwhisk-gpu-routing.patch``):
home invoker = ``generateHash(namespace, action) % n``, step size = one of the pairwise coprime
numbers below ``n`` picked by the same hash; walk from home by that step acquiring the action's
memory in the invoker's slots (``NestedSemaphore``, concurrency 1: plain memory); after n + 1
steps, a random healthy invoker, forced. ``LeastLoaded`` sends to the invoker with the smallest
share of its slots in use, ties round robin. ``Locality`` prefers, in the classic walk order, an invoker whose last
ping advertised the action's model, then walks as ``Classic`` does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

from invoker.gpu.locality import (
    generate_hash,
    java_string_hash,
    pairwise_coprime_numbers_until,
    start,
)
from sim.advertise import Board, action_digest

__all__ = ["POLICIES", "Classic", "LeastLoaded", "Locality", "Slots", "generate_hash", "java_string_hash",
           "pairwise_coprime_numbers_until"]

VERSION = "0.0.1"  # every simulated action's version (sim/cluster.py writes its documents so)


@dataclass
class Slots:
    """Each invoker's memory slots as this controller sees them (one controller: all its user memory)."""

    capacity_mb: list[int]
    free_mb: list[int] = field(default_factory=list)
    usable: list[bool] = field(default_factory=list)  # InvokerHealth.status.isUsable: the walk skips the rest

    def __post_init__(self) -> None:
        if not self.free_mb:
            self.free_mb = list(self.capacity_mb)
        if not self.usable:
            self.usable = [True] * len(self.capacity_mb)

    def add(self, capacity_mb: int) -> None:
        """A new invoker joins the list (OpenWhisk appends it: existing indexes keep their slots)."""
        self.capacity_mb.append(capacity_mb)
        self.free_mb.append(capacity_mb)
        self.usable.append(True)

    def healthy(self) -> list[int]:
        return [i for i, ok in enumerate(self.usable) if ok]

    def try_acquire(self, invoker: int, mb: int) -> bool:
        if self.usable[invoker] and self.free_mb[invoker] >= mb:
            self.free_mb[invoker] -= mb
            return True
        return False

    def force_acquire(self, invoker: int, mb: int) -> None:
        self.free_mb[invoker] -= mb

    def release(self, invoker: int, mb: int) -> None:
        self.free_mb[invoker] += mb


class Policy(Protocol):
    name: str

    def resize(self, n: int) -> None:
        """The pool of invokers changed size (an invoker joined)."""

    def choose(self, namespace: str, fqn: str, memory_mb: int, slots: Slots) -> tuple[int, bool]:
        """The invoker to send to (its slots already acquired) and whether it was forced (overload)."""


class Classic:
    name = "classic"

    def __init__(self, n: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.resize(n)

    def resize(self, n: int) -> None:
        """The GPU pool now has ``n`` invokers (``GpuRouting.pool``: new step sizes; every
        action's home and step are ``hash mod n`` again)."""
        self.n = n
        self._starts: dict[str, tuple[int, int]] = {}

    def start(self, namespace: str, fqn: str) -> tuple[int, int]:
        """``GpuRouting.start``: (home invoker, step size)."""
        found = self._starts.get(fqn)
        if found is None:
            found = start(generate_hash(namespace, fqn), self.n)  # the controller patch's rule
            assert found is not None, "an empty GPU pool"
            self._starts[fqn] = found
        return found

    def walk(self, namespace: str, fqn: str) -> list[int]:
        """The invokers ``schedule`` tries, in order (n + 2 probes, as its ``stepsDone`` runs to n + 1)."""
        index, step = self.start(namespace, fqn)
        order = []
        for _ in range(self.n + 2):
            order.append(index)
            index = (index + step) % self.n
        return order

    def choose(self, namespace: str, fqn: str, memory_mb: int, slots: Slots) -> tuple[int, bool]:
        index, step = self.start(namespace, fqn)
        for _ in range(self.n + 2):
            if slots.try_acquire(index, memory_mb):
                return index, False
            index = (index + step) % self.n
        healthy = slots.healthy()  # schedule's fallback: a random healthy invoker
        chosen = healthy[self.rng.randrange(len(healthy))]
        slots.force_acquire(chosen, memory_mb)
        return chosen, True


class LeastLoaded:
    name = "least-loaded"

    def __init__(self, n: int) -> None:
        self.n = n
        self._next = 0  # ties go round robin: at low load all invokers tie, and index order would pick one

    def resize(self, n: int) -> None:
        self.n = n

    def choose(self, namespace: str, fqn: str, memory_mb: int, slots: Slots) -> tuple[int, bool]:
        n, start = self.n, self._next
        self._next = (start + 1) % n
        free, capacity = slots.free_mb, slots.capacity_mb
        best = min(slots.healthy(), key=lambda i: (1 - free[i] / capacity[i], (i - start) % n))
        if slots.try_acquire(best, memory_mb):
            return best, False
        slots.force_acquire(best, memory_mb)
        return best, True


class Locality:
    """Model-locality aware: invokers advertise (in their pings) the actions whose models they
    hold, a bounded set; the controller prefers the first invoker in the classic walk order that
    advertised the action and has room in its slots, else walks as ``Classic``."""

    name = "locality"

    def __init__(self, n: int, seed: int, board: Board) -> None:
        self.classic = Classic(n, seed)
        self.board = board  # every invoker's advertisement as of its last ping
        self.local_hits = 0

    def resize(self, n: int) -> None:
        self.classic.resize(n)

    def choose(self, namespace: str, fqn: str, memory_mb: int, slots: Slots) -> tuple[int, bool]:
        holders = self.board.holders.get(action_digest(namespace, fqn, VERSION))
        if holders:
            n = self.classic.n
            home, step = self.classic.start(namespace, fqn)
            inverse = pow(step, -1, n) if n > 1 else 0
            # position of invoker i in the walk: k with home + k * step = i (mod n)
            for invoker in sorted(holders, key=lambda i: ((i - home) * inverse) % n if n > 1 else 0):
                if slots.try_acquire(invoker, memory_mb):
                    self.local_hits += 1
                    return invoker, False
        return self.classic.choose(namespace, fqn, memory_mb, slots)


POLICIES = ("classic", "least-loaded", "locality")
