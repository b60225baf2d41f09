"""What an invoker advertises to the controller about the models it holds, as the locality
rule (issue #13 item 3, ``invoker/gpu/locality.py`` on branch ``locality``) will: the digest of
each action (sha256 of its fully qualified name) whose model a live GPU container of the node
holds, most recently used first, at most ``LIMIT`` of them, sent with every ping (1 s).

Kept here, in one place, until that module is merged; then ``action_digest`` and ``held_digests``
call it instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

from invoker.containerpool.pool import ContainerPool
from invoker.containerpool.proxy import State

LIMIT = 32  # digests per ping
PING_INTERVAL_S = 1.0


@lru_cache(maxsize=65536)
def action_digest(fqn: str) -> str:
    return hashlib.sha256(fqn.encode()).hexdigest()


def held_digests(pool: ContainerPool, limit: int = LIMIT) -> frozenset[str]:
    """The digests a node would ping now: actions with a model resident on one of its GPUs."""
    holding = [p for p in list(pool._containers)
               if p.action is not None and p.gpu is not None and p.state is not State.REMOVING
               and p.container.residency.models]
    holding.sort(key=lambda p: p.last_used, reverse=True)
    out: list[str] = []
    for proxy in holding:
        digest = action_digest(proxy.action.path)  # namespace/name, as the controller hashes it
        if digest not in out:
            out.append(digest)
            if len(out) == limit:
                break
    return frozenset(out)


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
