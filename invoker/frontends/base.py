"""The interface of a protocol front end (OpenWhisk's ``InvokerProvider`` SPI), and what the
invoker gives every front end: its identity, the pool, the broker, the stores.

The service owns the order of a shutdown: ``stop`` (no new work) before the pool drains, and
``close`` (the last words: a disabled ping, a revoked lease) once records are written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from invoker.containerpool.pool import ContainerPool
from invoker.frontends.completions import AckPolicy, StorePolicy
from invoker.manifest import RuntimesManifest
from invoker.messages import InvokerInstanceId
from invoker.messaging import KafkaSettings, Producer
from invoker.store.activations import ActivationStore
from invoker.store.entities import EntityStore

CLASSIC = "classic"
FPC = "fpc"
SCHEDULERS = (CLASSIC, FPC)

Fatal = Callable[[BaseException], None]


@dataclass(frozen=True)
class InvokerParts:
    """What a front end drives and reports with; the service builds it once."""

    instance: InvokerInstanceId
    kafka: KafkaSettings
    pool: ContainerPool
    producer: Producer
    entities: EntityStore
    activations: ActivationStore
    manifest: RuntimesManifest
    runnable_kind: Callable[[str], bool]
    describe: Callable[[], InvokerInstanceId]  # this invoker now: its tags (GPU sharing, held models)
    fatal: Callable[[str], Fatal]  # fatal(what) -> the callback that stops the invoker for good
    failed: threading.Event  # set once a thread the invoker cannot live without is gone
    store_policy: StorePolicy = StorePolicy()
    ack_policy: AckPolicy = AckPolicy()


class FrontEnd(Protocol):
    """One protocol over the pool."""

    name: str
    enabled: bool  # as /isEnabled answers

    def start(self) -> None:
        """Take work (after the pool started)."""

    def stop(self) -> None:
        """Take no new work; what was taken still finishes (the pool drains it)."""

    def close(self) -> None:
        """After the pool and the record writer are done: say goodbye and let go of connections."""

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether it takes work within ``timeout_s`` (a consumer group joined, a lease granted)."""

    @property
    def healthy(self) -> bool:
        """Whether it should be given work now."""

    def set_enabled(self, enabled: bool) -> None:
        """``/enable`` and ``/disable``: advertise itself, or stop being chosen."""
