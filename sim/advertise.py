"""What an invoker advertises to the controller about the models it holds: the real pool's
``held_models`` (``invoker/gpu/locality.py``: the digest of each action whose model a GPU
container of the node holds, most recently used first, at most `locality.MAX_HELD`), read at every ping (1 s),
and the controller's view of the last ping of each invoker."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from invoker.containerpool.pool import ContainerPool
from invoker.gpu import locality

LIMIT = locality.MAX_HELD  # digests per ping
PING_INTERVAL_S = 1.0


@lru_cache(maxsize=65536)
def action_digest(invocation_namespace: str, action_path: str, version: str) -> str:
    return locality.action_digest(invocation_namespace, action_path, version)


def held_digests(pool: ContainerPool, limit: int = LIMIT) -> frozenset[str]:
    """The digests a node pings now (``ContainerPool.held_models``)."""
    return frozenset(pool.held_models(limit))


@dataclass
class Advertisement:
    held: frozenset[str] = frozenset()


@dataclass
class Board:
    """The controller's view of every invoker's last advertisement, indexed by digest."""

    n: int
    ads: list[Advertisement] = field(default_factory=list)
    holders: dict[str, set[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ads = [Advertisement() for _ in range(self.n)]

    def grow(self, n: int) -> None:
        """Invokers joined: they have advertised nothing yet."""
        self.ads.extend(Advertisement() for _ in range(n - self.n))
        self.n = n

    def update(self, invoker: int, held: frozenset[str]) -> None:
        old = self.ads[invoker].held
        if old == held:
            return
        for digest in old - held:
            owners = self.holders[digest]
            owners.discard(invoker)
            if not owners:
                del self.holders[digest]
        for digest in held - old:
            self.holders.setdefault(digest, set()).add(invoker)
        self.ads[invoker] = Advertisement(held)
