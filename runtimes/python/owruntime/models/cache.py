"""The model cache: loaded models stay resident in the warm container, one per (key, device).

Every resident model is registered in :data:`owruntime.resident.REGISTRY` (what the server
reports to the invoker) and unregistered when evicted. ``max_bytes`` bounds the device memory
the cache may hold per device; the least recently used models are evicted to make room.
A model that can sleep (:mod:`.sleep`) reports its own sleep and wake-up to the registry
through the :class:`~owruntime.resident.Registration` the cache gives it; asleep it holds no
device memory, so it does not count against ``max_bytes``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from ..resident import REGISTRY, Registration, Registry


class Resident(Protocol):
    @property
    def nbytes(self) -> int: ...

    def close(self) -> None: ...


class ModelCache:
    def __init__(self, registry: Registry = REGISTRY, max_bytes: int | None = None) -> None:
        self.registry = registry
        self.max_bytes = max_bytes  # per device; None: no bound
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self._models: OrderedDict[tuple[str, str], Resident] = OrderedDict()

    def get_or_load(self, key: str, device: str, load: Callable[[], Resident]) -> Resident:
        """The resident model for (key, device); ``load()`` runs once, even when called concurrently."""
        with self._lock:
            if (m := self._models.get((key, device))) is not None:
                self._models.move_to_end((key, device))
                return m
            loading = self._loading.setdefault((key, device), threading.Lock())
        with loading:
            with self._lock:
                if (m := self._models.get((key, device))) is not None:
                    return m
            model = load()
            with self._lock:
                self._models[(key, device)] = model
                self._loading.pop((key, device), None)
                victims = self._over_budget(device, keep=(key, device))
            for k, v in victims:
                self._close(k, v)
            if hasattr(model, "registration"):  # it reports its own sleep and wake-up
                model.registration = Registration(self.registry, key, device)
            self.registry.register(key, device, model.nbytes)
            return model

    def peek(self, key: str, device: str) -> Resident | None:
        """The model for (key, device) if resident (awake or asleep), without touching its age."""
        with self._lock:
            return self._models.get((key, device))

    def _over_budget(self, device: str, keep: tuple[str, str]) -> list[tuple[tuple[str, str], Resident]]:
        if self.max_bytes is None:
            return []
        victims = []
        on_device = [k for k in self._models if k[1] == device]
        total = sum(self._models[k].nbytes for k in on_device)
        for k in on_device:  # oldest first
            if total <= self.max_bytes:
                break
            if k != keep and self._models[k].nbytes:  # evicting an asleep model frees nothing
                total -= self._models[k].nbytes
                victims.append((k, self._models.pop(k)))
        return victims

    def _close(self, k: tuple[str, str], model: Resident) -> None:
        if hasattr(model, "registration"):
            model.registration = None  # no report of a wake-up after the eviction
        self.registry.unregister(k[0], k[1])
        model.close()

    def evict(self, key: str, device: str | None = None) -> int:
        """Drop the model(s) with this key (on ``device``, or on all); -> how many."""
        with self._lock:
            gone = [(k, self._models.pop(k)) for k in list(self._models)
                    if k[0] == key and device in (None, k[1])]
        for k, m in gone:
            self._close(k, m)
        return len(gone)

    def clear(self) -> None:
        for key, device in list(self._models):
            self.evict(key, device)

    def keys(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._models)
