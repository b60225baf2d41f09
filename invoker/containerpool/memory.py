"""Host memory of the pool as keyed reservations, the shape of ``GpuLedger``.

Every owner of memory is a key: a member of the pool (its proxy), from the moment it is
decided on (STARTING) until it is removed. Used memory is the sum over the
keys, as the Scala pool sums its maps (``memoryConsumptionOf``), so a leak shows up as a
listable owner, never as a drifting counter; releasing is removing a key, and releasing
twice is harmless.

Not thread-safe by itself: the pool calls it under its own lock.
"""

from __future__ import annotations

from collections.abc import Hashable


class MemoryLedger:
    def __init__(self) -> None:
        self._owners: dict[Hashable, int] = {}

    @property
    def used_mb(self) -> int:
        return sum(self._owners.values())

    def commit(self, key: Hashable, memory_mb: int) -> None:
        # A container of 0 MB or less would be unlimited, or would add capacity: never admitted.
        if memory_mb <= 0:
            raise ValueError(f"a memory reservation must be positive, not {memory_mb} MB")
        if key in self._owners:
            raise ValueError(f"{key!r} already holds memory")
        self._owners[key] = memory_mb

    def release(self, key: Hashable) -> None:
        self._owners.pop(key, None)

    def reserved_mb(self, key: Hashable) -> int:
        return self._owners.get(key, 0)

    def owners(self) -> list[Hashable]:
        return list(self._owners)
