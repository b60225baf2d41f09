"""Model locality across invokers: which actions' models a GPU invoker holds, told to the controller.

A GPU invoker adds one resource tag per action whose warm GPU container it holds to its health
pings (``held:<digest>``); the patched controller (``controller_patch/scala/GpuRouting.scala``,
``whisk.loadbalancer.gpu-routing.prefer-holders``) tries the invokers that hold an action before
its classic walk, so GPU work goes where its model is already loaded. A stock controller keeps
the tags and ignores them (``controller_patch/README.md`` has where in its sources).

What identifies "the action's model" is what decides warm reuse in the pool, as far as the
controller can compute it in ``publish``: the invocation namespace (containers are never shared
across namespaces) and the action's fully qualified name with its version (a container of
another version is never reused: the version changes with every update of the action)::

    key    = "<invocation namespace>|<namespace>[/<package>]/<name>@<version>"
    digest = sha256(utf-8 key), first 12 hex characters

In Scala: ``msg.user.namespace.name.asString + "|" + action.fullyQualifiedName(true).asString``.
Neither side can contain ``|`` (entity names are ``[\\w@ .-]``), so a key names one triple.
12 hex characters (48 bits) keep a ping with 256 held tags near 5 KB while a false match of a
digest against an invoker's 256 is about 1 in 10^12; a false match only reorders candidates (the
controller still checks capacity), it never misroutes work to an invoker that cannot run it.

The rest of this module is the routing in Python, the same walk as the controller's
(``ShardingContainerPoolBalancer``: home invoker and step from the action's hash, then
``home, home+step, ...``), for the simulator and the tests: :func:`prefer_holders` is the rule.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

HELD_TAG_PREFIX = "held:"
DIGEST_HEX_CHARS = 12
# Held tags per ping, by default (--gpu-held-tags). 256, not 32: after a scale-out (every
# action's home moves) 32 won back 0.6 of 6.2 points of cold starts in the simulation, 256 all
# of them, as a node holds far more than 32 models (README, "Membership changes").
MAX_HELD = 256

def action_key(invocation_namespace: str, action_path: str, version: str) -> str:
    """``action_path``: ``namespace[/package]/name`` with no leading slash (``WhiskAction.path``)."""
    return f"{invocation_namespace}|{action_path}@{version}"


def action_digest(invocation_namespace: str, action_path: str, version: str) -> str:
    key = action_key(invocation_namespace, action_path, version)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:DIGEST_HEX_CHARS]


def held_tag(digest: str) -> str:
    return HELD_TAG_PREFIX + digest


def held_digests_of(tags: Iterable[str]) -> set[str]:
    """The digests an invoker's tags say it holds (what the controller reads from a ping)."""
    return {t[len(HELD_TAG_PREFIX):] for t in tags if t.startswith(HELD_TAG_PREFIX)}


class _Action(Protocol):
    path: str
    version: str


class HolderView(Protocol):
    """What :func:`holding_of` reads of a container that holds a model (``rules.holds_model``)."""

    action: _Action | None
    namespace: str | None
    last_used: float


@dataclass(frozen=True)
class Holding:
    digest: str
    last_used: float  # time.monotonic() of its last activation


def holding_of(proxy: HolderView) -> Holding:
    assert proxy.action is not None and proxy.namespace is not None
    return Holding(action_digest(proxy.namespace, proxy.action.path, proxy.action.version), proxy.last_used)


def held_digests(holdings: Iterable[Holding], limit: int = MAX_HELD) -> tuple[str, ...]:
    """Distinct digests, most recently used first, at most ``limit`` (several containers of one
    action count once, by their most recent use)."""
    latest: dict[str, float] = {}
    for h in holdings:
        if h.last_used > latest.get(h.digest, -math.inf):
            latest[h.digest] = h.last_used
    ranked = sorted(latest, key=lambda d: (-latest[d], d))
    return tuple(ranked[:max(0, limit)])


def held_tags(digests: Iterable[str]) -> tuple[str, ...]:
    """The ping's tags for these digests, sorted: a ping changes only when the set does, not
    with every activation's change of recency (each change re-reads the invoker at the controller)."""
    return tuple(sorted(held_tag(d) for d in set(digests)))


# --------------------------------------------------------------------------- the controller's walk


def java_string_hash(text: str) -> int:
    """``String.hashCode`` of the JVM: over UTF-16 code units, 32-bit two's complement."""
    units = text.encode("utf-16-be")
    h = 0
    for i in range(0, len(units), 2):
        h = (31 * h + int.from_bytes(units[i:i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def generate_hash(namespace: str, action: str) -> int:
    """``ShardingContainerPoolBalancer.generateHash``: the invocation namespace and the action's
    name without version (``ns/pkg/name``). ``.abs`` of Int.MinValue stays negative, as on the JVM."""
    h = java_string_hash(namespace) ^ java_string_hash(action)
    return h if h == -(1 << 31) else abs(h)


def pairwise_coprime_numbers_until(x: int) -> list[int]:
    primes: list[int] = []
    for cur in range(1, x + 1):
        if math.gcd(cur, x) == 1 and all(math.gcd(i, cur) == 1 for i in primes):
            primes.append(cur)
    return primes


def start(hash_: int, size: int) -> tuple[int, int] | None:
    """``GpuRouting.start``: (home index, step) over a pool of ``size``; None for an empty pool.
    ``math.abs(h % n)`` on the JVM is ``abs(h) % n`` (the remainder takes the dividend's sign)."""
    steps = pairwise_coprime_numbers_until(size)
    if size == 0 or not steps:
        return None
    return abs(hash_) % size, steps[abs(hash_) % len(steps)]


def classic_walk(size: int, home: int, step: int) -> list[int]:
    """The pool indexes ``schedule`` tries, in order: ``home, home+step, ...`` (every index once,
    the step being coprime with the size). ``schedule`` then falls back to a random healthy one."""
    return [(home + k * step) % size for k in range(size)]


def prefer_holders(walk: Sequence[int], held: Mapping[int, set[str]], digest: str) -> list[int]:
    """The rule: the invokers holding ``digest`` first, in walk order, then the others in walk
    order. Each candidate is still taken only if it is healthy and has capacity, and when none is,
    the classic random fallback applies: this only orders them. (The controller runs it as a
    holder pass before its unchanged ``schedule``, which walks them all again: the same order,
    except that a holder found full may be taken in the second pass if capacity freed meanwhile.)"""
    holders = [i for i in walk if digest in held.get(i, ())]
    return holders + [i for i in walk if digest not in held.get(i, ())]
