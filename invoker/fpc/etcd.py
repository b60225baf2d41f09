"""A small etcd v3 client: the calls the FPC protocol makes, with the invoker's own errors.

Built on ``etcd3gw`` (etcd's gRPC gateway, JSON over HTTP at ``/v3/``; etcd >= 3.4), which
needs no protobuf of its own: the ``etcd3`` package (0.12) breaks on protobuf >= 4. This is
the one seam where etcd3gw's and requests' exceptions become ``EtcdError``s.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from etcd3gw import exceptions as gw_errors
from etcd3gw.client import Etcd3Client
from etcd3gw.lease import Lease

from invoker.errors import InvokerError

log = logging.getLogger(__name__)

DEFAULT_PORT = 2379
T = TypeVar("T")


class EtcdError(InvokerError):
    """etcd did not do what was asked."""


class EtcdUnavailable(EtcdError):
    """No etcd endpoint answered (refused, timed out, or a 5xx from the gateway)."""


class LeaseNotFound(EtcdError):
    """etcd does not know the lease (it expired, was revoked, or etcd lost its data)."""


@dataclass(frozen=True)
class EtcdEndpoint:
    host: str
    port: int = DEFAULT_PORT

    @classmethod
    def parse_hosts(cls, hosts: str) -> tuple[EtcdEndpoint, ...]:
        """``whisk.etcd.hosts``: ``host:port`` entries, comma-separated (Ansible's
        ``etcd_connect_string``); an ``http://`` prefix is allowed."""
        endpoints = []
        for entry in hosts.split(","):
            entry = entry.strip().removeprefix("http://")
            if not entry:
                continue
            host, sep, port = entry.rpartition(":")
            if not sep:
                host, port = entry, str(DEFAULT_PORT)
            if not host or not port.isdigit():
                raise ValueError(f"not an etcd endpoint: {entry!r}")
            endpoints.append(cls(host, int(port)))
        if not endpoints:
            raise ValueError(f"no etcd endpoint in {hosts!r}")
        return tuple(endpoints)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _lease_not_found(error: gw_errors.Etcd3Exception) -> bool:
    # The gateway answers 404 with gRPC's message "etcdserver: requested lease not found".
    return "lease not found" in (error.detail_text or "")


class EtcdClient:
    """Key-value and lease calls against one etcd cluster; safe to share between threads.

    Calls go to the first endpoint that answers; a call that finds no endpoint answering
    raises ``EtcdUnavailable``. Values are text (the protocol's values are JSON or numbers).
    """

    def __init__(self, endpoints: Sequence[EtcdEndpoint], timeout_s: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self.endpoints = tuple(endpoints)
        self.timeout_s = timeout_s
        self._clients = [Etcd3Client(host=e.host, port=e.port, timeout=timeout_s) for e in self.endpoints]
        self._current = 0
        # requests.Session is not documented as thread-safe; calls are short, so one at a time.
        self._lock = threading.Lock()

    @classmethod
    def from_hosts(cls, hosts: str, timeout_s: float = 2.0) -> EtcdClient:
        return cls(EtcdEndpoint.parse_hosts(hosts), timeout_s)

    def _call(self, what: str, fn: Callable[[Etcd3Client], T]) -> T:
        with self._lock:
            last: Exception | None = None
            for attempt in range(len(self._clients)):
                index = (self._current + attempt) % len(self._clients)
                try:
                    result = fn(self._clients[index])
                except (gw_errors.ConnectionFailedError, gw_errors.ConnectionTimeoutError,
                        gw_errors.InternalServerError) as error:
                    last = error
                    continue
                except gw_errors.Etcd3Exception as error:
                    if _lease_not_found(error):
                        raise LeaseNotFound(f"etcd {what}: {error.detail_text}") from error
                    raise EtcdError(f"etcd {what} failed: {error.detail_text or error!r}") from error
                except (OSError, ValueError, KeyError) as error:
                    # requests' other failures, or an answer that is not the gateway's JSON.
                    raise EtcdError(f"etcd {what} failed: {error!r}") from error
                self._current = index
                return result
            where = ", ".join(str(e) for e in self.endpoints)
            raise EtcdUnavailable(f"etcd {what}: no endpoint answered ({where}): "
                                  f"{getattr(last, 'detail_text', None) or last!r}") from last

    # ---- leases

    def grant(self, ttl_s: int) -> int:
        """A new lease of ``ttl_s`` seconds; its id."""
        return self._call("lease grant", lambda c: c.lease(ttl_s).id)

    def keep_alive_once(self, lease_id: int) -> int:
        """Renew the lease; the TTL it has again. ``LeaseNotFound`` when etcd has it no more."""
        ttl = self._call("lease keep-alive", lambda c: Lease(lease_id, c).refresh())
        if ttl <= 0:  # the gateway leaves TTL out for an unknown lease: refresh() gives -1
            raise LeaseNotFound(f"etcd lease {lease_id:x} not found")
        return ttl

    def revoke(self, lease_id: int) -> None:
        """Revoke the lease: etcd deletes every key bound to it at once."""
        self._call("lease revoke", lambda c: Lease(lease_id, c).revoke())

    def time_to_live(self, lease_id: int) -> int:
        """Seconds the lease has left; ``LeaseNotFound`` when it is gone."""
        def ask(c: Etcd3Client) -> int:
            reply = c.post(c.get_url("/kv/lease/timetolive"), json={"ID": lease_id})
            # The gateway's JSON leaves zero values out: no TTL is a lease in its last second.
            return int(reply.get("TTL", 0))

        ttl = self._call("lease time-to-live", ask)
        if ttl < 0:
            raise LeaseNotFound(f"etcd lease {lease_id:x} not found")
        return ttl

    # ---- keys

    def put(self, key: str, value: str, lease_id: int | None = None) -> None:
        """Write ``key``; bound to the lease when one is given (``LeaseNotFound`` if gone)."""
        self._call(f"put {key}", lambda c: c.put(key, value, lease=Lease(lease_id, c) if lease_id is not None else None))

    def get(self, key: str) -> str | None:
        values = self._call(f"get {key}", lambda c: c.get(key))
        return values[0].decode("utf-8") if values else None

    def get_prefix(self, prefix: str) -> dict[str, str]:
        """Every key under ``prefix`` with its value."""
        items = self._call(f"get prefix {prefix}", lambda c: c.get_prefix(prefix))
        return {meta["key"].decode("utf-8"): value.decode("utf-8") for value, meta in items}

    def delete(self, key: str) -> bool:
        """Delete ``key``; whether it was there."""
        return bool(self._call(f"delete {key}", lambda c: c.delete(key)))

    def close(self) -> None:
        with self._lock:
            for client in self._clients:
                client.session.close()
