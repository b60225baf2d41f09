"""The invoker's etcd lease: granted, kept alive every 500 ms, granted again when lost.

As OpenWhisk's ``LeaseKeepAliveService`` (C/service/LeaseKeepAliveService.scala): a lease of
``whisk.etcd.lease.timeout`` seconds (10), renewed every 500 ms, its id written under
``whisk/instance/invoker{N}/lease`` with the lease itself. Every key the invoker writes is
bound to this lease, so all of them vanish within the TTL of the invoker's death.

Unlike the Scala service, a keep-alive that cannot reach etcd does not give the lease up: it
tries again every tick, and only etcd saying "lease not found" (it expired meanwhile, or etcd
lost its data) leads to a new lease. Each new lease is announced to the listener, which writes
the invoker's keys again under it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from invoker.fpc.etcd import EtcdClient, EtcdError, LeaseNotFound
from invoker.supervision import RestartPolicy, SupervisedThread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseConfig:
    ttl_s: int = 10  # whisk.etcd.lease.timeout
    keep_alive_interval_s: float = 0.5  # LeaseKeepAliveService's fixed rate
    # While etcd cannot be reached: one log line per this many seconds, not one per tick.
    complain_every_s: float = 10.0


class LeaseListener(Protocol):
    """Told of the lease's life, on the keeper's thread. A listener that raises ``EtcdError``
    is called again at the next tick, until it returns."""

    def lease_granted(self, lease_id: int) -> None:
        """A new lease: every key must be written again under it."""

    def lease_renewed(self, lease_id: int) -> None:
        """The lease was renewed (every tick): a chance to retry writes that failed."""

    def lease_lost(self, lease_id: int) -> None:
        """etcd no longer has the lease: its keys are gone; a new one is being granted."""


class LeaseKeeper:
    """Holds one lease for ``key`` on a supervised thread; ``start``, then ``stop``."""

    def __init__(self, client: EtcdClient, key: str, listener: LeaseListener,
                 on_fatal: Callable[[BaseException], None], config: LeaseConfig = LeaseConfig(),
                 policy: RestartPolicy | None = None) -> None:
        self.client = client
        self.key = key
        self.listener = listener
        self.config = config
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._lease_id: int | None = None
        self._announced = False  # the listener has taken the current lease
        self._grants = 0
        self._last_complaint = float("-inf")
        self._thread = SupervisedThread(f"etcd-lease {key}", self._run, on_fatal, policy or RestartPolicy(),
                                        stop=self._stop)

    # ---- what the invoker sees

    @property
    def lease_id(self) -> int | None:
        """The lease in force, or None while there is none."""
        return self._lease_id

    @property
    def grants(self) -> int:
        """How many leases were granted so far (a new one after each loss)."""
        return self._grants

    @property
    def alive(self) -> bool:
        return self._thread.alive

    def wait_for_lease(self, timeout_s: float) -> int | None:
        """The lease once granted and announced to the listener; None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._lease_id is None or not self._announced:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)
            return self._lease_id

    def start(self) -> None:
        self._thread.start()

    def stop(self, revoke: bool = True, timeout_s: float = 5.0) -> None:
        """Stop renewing. ``revoke``: revoke the lease now, so its keys go at once (a clean
        shutdown) instead of at the end of the TTL (what a crash leaves)."""
        self._stop.set()
        self._thread.join(timeout_s)
        lease_id = self._lease_id
        if revoke and lease_id is not None:
            try:
                self.client.revoke(lease_id)
            except LeaseNotFound:
                pass  # already gone, and its keys with it
            except EtcdError as error:
                log.warning("could not revoke etcd lease %x; its keys expire within %d s: %s",
                            lease_id, self.config.ttl_s, error)
        self._set_lease(None)

    # ---- the thread

    def _run(self) -> None:
        # The first tick at once, then one per interval (a fixed delay between ticks).
        while not self._stop.is_set():
            self._tick()
            self._stop.wait(self.config.keep_alive_interval_s)

    def _tick(self) -> None:
        try:
            lease_id = self._lease_id
            if lease_id is None:
                lease_id = self._grant()
            else:
                self.client.keep_alive_once(lease_id)
            if not self._announced:
                self.listener.lease_granted(lease_id)
                with self._changed:
                    self._announced = True
                    self._changed.notify_all()
            else:
                self.listener.lease_renewed(lease_id)
        except LeaseNotFound as error:
            lost = self._lease_id
            self._set_lease(None)
            if lost is not None:
                log.warning("etcd lease %x is lost (%s); granting a new one", lost, error)
                self.listener.lease_lost(lost)
        except EtcdError as error:
            now = time.monotonic()
            if now - self._last_complaint >= self.config.complain_every_s:
                self._last_complaint = now
                log.warning("etcd lease %s: %s; trying again every %.1f s", self.key, error,
                            self.config.keep_alive_interval_s)

    def _grant(self) -> int:
        lease_id = self.client.grant(self.config.ttl_s)
        try:
            # The lease key holds the lease id, bound to the lease (LeaseKeepAliveService).
            self.client.put(self.key, str(lease_id), lease_id)
        except EtcdError:
            self._revoke_quietly(lease_id)
            raise
        self._grants += 1
        self._set_lease(lease_id)
        log.info("granted etcd lease %x (TTL %d s) for %s", lease_id, self.config.ttl_s, self.key)
        return lease_id

    def _revoke_quietly(self, lease_id: int) -> None:
        try:
            self.client.revoke(lease_id)
        except EtcdError:
            pass  # it expires on its own within the TTL

    def _set_lease(self, lease_id: int | None) -> None:
        with self._changed:
            self._lease_id = lease_id
            self._announced = False
            self._changed.notify_all()
