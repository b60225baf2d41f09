"""The invoker service: wires the pool, stores, broker and one protocol front end
(``invoker.frontends``: classic or fpc, ``--scheduler``) together, and serves the invoker's small HTTP API (``/ping``, ``/enable``, ``/disable``,
``/isEnabled``) like ``DefaultInvokerServer``, plus ``/pool``, ``/gpus`` (per-GPU
state as JSON) and ``/metrics`` (Prometheus text). Only ``/ping`` and ``/metrics`` answer
without the basic auth (``/metrics`` too with ``metrics_auth``)."""

from __future__ import annotations

import base64
import dataclasses
import hmac
import json
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from invoker.containerpool.activation import PoolLimits
from invoker.containerpool.container import ContainerFactory
from invoker.containerpool.pool import ContainerPool, ImageResolver, PoolConfig
from invoker.frontends.base import CLASSIC, FPC, SCHEDULERS, FrontEnd, InvokerParts
from invoker.frontends.classic import ClassicFrontEnd, ClassicSettings
from invoker.frontends.completions import AckPolicy, StorePolicy
from invoker.gpu import locality, metrics
from invoker.gpu.layer import GpuLayer
from invoker.manifest import RuntimesManifest
from invoker.messages import ByteSize, InvokerInstanceId
from invoker.messaging import ActivationFeed, KafkaSettings, Producer
from invoker.reactive import InvokerReactive
from invoker.store.activations import ActivationStore
from invoker.store.database import Database
from invoker.store.entities import EntityStore

log = logging.getLogger(__name__)



class ManifestImages(ImageResolver):
    """Kinds → images from the manifest, limited to what the backend can run."""

    def __init__(self, manifest: RuntimesManifest, factory: ContainerFactory, registry: str | None = None) -> None:
        self.manifest = manifest
        self.factory = factory
        self.backend = factory.name
        self.registry = registry

    def runnable(self, kind: str) -> bool:
        runtime = self.manifest.resolve(kind)
        if runtime is None:
            return False
        families = self.factory.runtime_families
        if families is not None:
            return runtime.family in families
        return self.factory.has_image(runtime.image.resolve(self.registry))

    def image_for(self, kind: str) -> str:
        runtime = self.manifest.resolve(kind)
        if runtime is None or not self.runnable(kind):
            raise KeyError(f"kind {kind!r} cannot run on the {self.backend} backend")
        return runtime.image.resolve(self.registry)


@dataclass(frozen=True)
class InvokerSettings:
    instance: InvokerInstanceId
    kafka: KafkaSettings
    pool: PoolConfig
    store_policy: StorePolicy = StorePolicy()
    max_peek: int | None = None
    http_bind: str = "127.0.0.1"
    http_port: int | None = None  # None: no HTTP endpoint
    http_username: str = "invoker.user"
    http_password: str = "invoker.pass"
    # /metrics behind the same basic auth; off: open to a scrape without credentials (it names
    # no tenant's action, container or model, see invoker.gpu.metrics).
    metrics_auth: bool = False
    ping_interval_s: float = 1.0
    ack_policy: AckPolicy = AckPolicy()
    # How long an activation record is retried before it is given up (None: until written).
    store_deadline_s: float | None = None
    # Pings stop once records have failed to be written for this long: the controller
    # then sends its work elsewhere instead of to an invoker that cannot record it.
    store_outage_unhealthy_s: float = 5.0
    # GPU invokers: at most this many held:<digest> tags in pings (invoker.gpu.locality); 0: none.
    held_tags: int = locality.MAX_HELD
    scheduler: str = CLASSIC  # the protocol front end (invoker.frontends): classic or fpc
    fpc: Any = None  # FpcSettings (invoker.frontends.fpc) when scheduler is fpc


class Invoker:
    def __init__(
        self,
        settings: InvokerSettings,
        factory: ContainerFactory,
        manifest: RuntimesManifest,
        whisks: Database,
        activations: Database,
        gpu: GpuLayer | None = None,
    ) -> None:
        self.settings = settings
        self.manifest = manifest
        self.gpu = gpu
        images = ManifestImages(manifest, factory)
        # Set when a thread the invoker cannot live without is gone for good: pings stop,
        # and the process exits non-zero (cli.main waits on it).
        self.failed = threading.Event()
        self.pool = ContainerPool(factory, images, settings.pool, gpu, on_fatal=self._fatal("container pool janitor"))
        self.producer = Producer(settings.kafka)
        self.entity_store = EntityStore(whisks)
        self.activation_store = ActivationStore(activations, deadline_s=settings.store_deadline_s,
                                                on_fatal=self._fatal("activation record writer"))
        self.parts = InvokerParts(
            instance=settings.instance, kafka=settings.kafka, pool=self.pool, producer=self.producer,
            entities=self.entity_store, activations=self.activation_store, manifest=manifest,
            runnable_kind=images.runnable, describe=self.instance_now, fatal=self._fatal, failed=self.failed,
            store_policy=settings.store_policy, ack_policy=settings.ack_policy,
        )
        self.frontend: FrontEnd = make_frontend(settings, self.parts)
        self._http: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ the classic front end's parts

    def _classic(self) -> ClassicFrontEnd:
        if not isinstance(self.frontend, ClassicFrontEnd):
            raise AttributeError(f"the {self.frontend.name} front end has no classic feed")
        return self.frontend

    @property
    def feed(self) -> ActivationFeed:
        return self._classic().feed

    @property
    def reactive(self) -> InvokerReactive:
        return self._classic().reactive

    @property
    def topic(self) -> str:
        return self._classic().topic

    @property
    def enabled(self) -> bool:
        return self.frontend.enabled

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.pool.start()
        self.frontend.start()
        if self.settings.http_port is not None:
            self._start_http()
        log.info(
            "invoker%d up (%s scheduler): userMemory %s, tags %s, backend %s, GPUs: %s",
            self.settings.instance.instance, self.frontend.name, self.settings.instance.user_memory.to_json(),
            list(self.settings.instance.tags), self.pool.factory.name,
            f"{self.gpu.inventory.describe()}, {self.gpu.sharing.mode} ({self.gpu.sharing.reason})"
            if self.gpu is not None else "none",
        )

    def stop(self) -> None:
        """Graceful: stop taking work, say we are disabled, finish what is in flight."""
        self.frontend.stop()
        self.pool.shutdown()
        if self.gpu is not None:
            self.gpu.stop()
        self.activation_store.close(timeout=30)  # records still failing stay uncommitted: replayed
        try:
            self.frontend.close()
            self.producer.flush()
        finally:
            self.producer.close()
        if self._http is not None:
            self._http.shutdown()

    def _fatal(self, what: str):
        def fatal(error: BaseException) -> None:
            log.critical("%s is gone for good (%r): the invoker stops pinging and exits", what, error)
            self.failed.set()
        return fatal

    @property
    def healthy(self) -> bool:
        return self.frontend.healthy

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        """Until the front end takes work (a consumer group joined, a lease granted)."""
        return self.frontend.wait_ready(timeout_s)

    # ------------------------------------------------------------------ health

    def instance_now(self) -> InvokerInstanceId:
        """This invoker as pings show it. On a GPU invoker: its GPU sharing tag says whether MPS
        is down, and ``held:<digest>`` tags name the actions whose models its GPU containers hold
        (sorted, so the tags change only when that set does)."""
        instance, gpu = self.settings.instance, self.pool.gpu
        if gpu is None:
            return instance
        tags = instance.tags
        if gpu.sharing.tag in tags and gpu.tag() != gpu.sharing.tag:
            tags = tuple(gpu.tag() if t == gpu.sharing.tag else t for t in tags)
        if self.settings.held_tags > 0:
            tags += locality.held_tags(self.pool.held_models(self.settings.held_tags))
        return instance if tags == instance.tags else dataclasses.replace(instance, tags=tags)

    def set_enabled(self, enabled: bool) -> None:
        self.frontend.set_enabled(enabled)

    # ------------------------------------------------------------------ HTTP

    def _start_http(self) -> None:
        invoker = self
        expected = "Basic " + base64.b64encode(
            f"{self.settings.http_username}:{self.settings.http_password}".encode()
        ).decode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args) -> None:  # no access log on stderr
                pass

            def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                given = self.headers.get("Authorization", "")
                if hmac.compare_digest(given.encode(), expected.encode()):
                    return True
                self._reply(401, b'{"error":"The supplied authentication is invalid"}')
                return False

            def do_GET(self) -> None:
                if self.path == "/ping":
                    self._reply(200, b"pong", "text/plain")
                elif self.path == "/isEnabled":
                    if self._authorized():
                        self._reply(200, json.dumps({"enabled": invoker.enabled}).encode())
                elif self.path == "/pool":  # every tenant's actions: the admin's only
                    if self._authorized():
                        self._reply(200, json.dumps(invoker.pool.snapshot()).encode())
                elif self.path == "/pool/count":  # FPCInvokerServer's: the containers this invoker holds
                    if self._authorized():
                        self._reply(200, json.dumps(len(invoker.pool.members)).encode())
                elif self.path == "/gpus":  # every tenant's actions and model paths: the admin's only
                    if self._authorized():
                        self._reply(200, json.dumps(invoker.pool.gpu_snapshot()).encode())
                elif self.path == "/metrics":
                    if not invoker.settings.metrics_auth or self._authorized():
                        self._reply(200, metrics.render(invoker.pool.gpu_snapshot()).encode(), metrics.CONTENT_TYPE)
                else:
                    self._reply(404, b'{"error":"not found"}')

            def do_POST(self) -> None:
                if self.path in ("/enable", "/disable"):
                    if self._authorized():
                        invoker.set_enabled(self.path == "/enable")
                        self._reply(200, f"{self.path[1:]}d".encode(), "text/plain")
                else:
                    self._reply(404, b'{"error":"not found"}')

        self._http = ThreadingHTTPServer((self.settings.http_bind, self.settings.http_port), Handler)
        threading.Thread(target=self._http.serve_forever, name="invoker-http", daemon=True).start()


def make_frontend(settings: InvokerSettings, parts: InvokerParts) -> FrontEnd:
    """The front end ``settings.scheduler`` names (OpenWhisk's InvokerProvider SPI)."""
    if settings.scheduler == CLASSIC:
        return ClassicFrontEnd(parts, ClassicSettings(settings.max_peek, settings.ping_interval_s,
                                                      settings.store_outage_unhealthy_s))
    if settings.scheduler == FPC:
        from invoker.frontends.fpc import FpcFrontEnd  # grpc and etcd only where FPC is spoken

        return FpcFrontEnd(parts, settings.fpc)
    raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, not {settings.scheduler!r}")


def instance_id(instance: int, user_memory: ByteSize, tags=(), dedicated=(), unique_name=None,
                displayed_name=None) -> InvokerInstanceId:
    return InvokerInstanceId(
        instance=instance, user_memory=user_memory, tags=tuple(tags), dedicated_namespaces=tuple(dedicated),
        unique_name=unique_name, displayed_name=displayed_name,
    )


def pool_limits(payload_max: ByteSize) -> PoolLimits:
    return PoolLimits(max_payload_bytes=payload_max.bytes, truncation_bytes=payload_max.bytes)
