"""``python -m invoker --id N``: the invoker process, as OpenWhisk deploys it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from invoker.config import ConfigError, InvokerConfig, load_config
from invoker.containerpool.backends import BACKENDS, BackendOptions
from invoker.containerpool.container import ContainerFactory
from invoker.containerpool.pool import PoolConfig
from invoker.frontends.completions import AckPolicy, StorePolicy
from invoker.gpu.inventory import load_inventory
from invoker.gpu.layer import GpuLayer, GpuSettings
from invoker.gpu.mps import MpsError
from invoker.gpu.request import GPU_TAG
from invoker.manifest import RuntimesManifest
from invoker.messaging import KafkaSettings
from invoker.service import Invoker, InvokerSettings, instance_id, pool_limits
from invoker.store.database import Database

if TYPE_CHECKING:
    from invoker.frontends.fpc import FpcSettings

log = logging.getLogger("invoker")


def make_factory(config: InvokerConfig, env: Mapping[str, str]) -> ContainerFactory:
    options = BackendOptions(
        owner=f"wsk{config.unique_name or ''}{config.instance}", api_host=config.resolved_api_host(env),
        docker_network=config.docker_network, docker_publish_host=config.docker_publish_host,
        docker_ulimits=config.docker_ulimits, docker_tmpfs_mb=config.docker_tmpfs,
        docker_log_max_mb=config.docker_log_max, docker_storage_mb=config.docker_storage,
    )
    return BACKENDS[config.backend].create(options)


def make_gpu_layer(config: InvokerConfig, manifest: RuntimesManifest, factory: ContainerFactory) -> GpuLayer | None:
    """The GPU layer, when the node has GPUs (detected, or declared with --gpus)."""
    inventory = load_inventory(config.gpus)
    if not inventory.devices:
        return None
    cells = config.gpu_stem_cells
    if cells is None:
        cells = tuple(c for c in manifest.stem_cells()
                      if manifest.kinds[c.kind].is_gpu)
    settings = GpuSettings(reserved_mb=config.gpu_reserved, stem_cells=cells, prewarm=tuple(config.gpu_prewarm),
                           mps_client_uid=config.gpu_mps_uid if factory.chooses_user else None,
                           mps_max_clients=config.gpu_mps_max_clients,
                           sleep_on_pressure=config.gpu_sleep_on_pressure, sleep_after_s=config.gpu_sleep_after,
                           sleep_host_budget_mb=config.gpu_sleep_host_budget,
                           sleep_context_mb=config.gpu_sleep_context)
    return GpuLayer.start(inventory, settings, config.gpu_mps, mps_dir=Path(config.gpu_mps_dir))


def open_databases(config: InvokerConfig) -> tuple[Database, Database, str]:
    if config.couchdb_url:
        from invoker.store.couchdb import CouchServer

        server = CouchServer(config.couchdb_url, config.couchdb_username, config.couchdb_password)
        where = f"CouchDB at {config.couchdb_url}"
    else:
        from invoker.store.embedded import EmbeddedServer, Retention

        # Records only: actions are kept however many and however old.
        retention = Retention(config.embedded_activations_keep, config.embedded_activations_ttl)
        server = EmbeddedServer(config.embedded_store_dir, retention={config.db_activations: retention})
        where = (f"embedded store ({config.embedded_store_dir or 'in memory'}; "
                 f"activations: {retention.describe()})")
    whisks, activations = server.database(config.db_whisks), server.database(config.db_activations)
    for db in (whisks, activations):
        db.ensure_exists()
    return whisks, activations, where


def build_invoker(config: InvokerConfig, kafka_hosts: str, env: Mapping[str, str] | None = None,
                  whisks: Database | None = None, activations: Database | None = None) -> Invoker:
    env = os.environ if env is None else env
    manifest = RuntimesManifest.load(config.runtimes_manifest)
    if whisks is None or activations is None:
        whisks, activations, where = open_databases(config)
        log.info("store: %s", where)
    factory = make_factory(config, env)
    gpu = make_gpu_layer(config, manifest, factory)
    tags = tuple(config.tags) + ((gpu.sharing.tag,) if gpu is not None else ())
    if gpu is not None and config.scheduler == "fpc" and GPU_TAG not in tags:
        # FPC's ContainerManager sends an action annotated invoker-resources ["gpu"] only to
        # invokers whose tags include every resource it names.
        tags = (GPU_TAG, *tags)
    instance = instance_id(config.instance, config.user_memory, tags, config.dedicated_namespaces,
                           config.unique_name, config.displayed_name)
    settings = InvokerSettings(
        instance=instance,
        kafka=KafkaSettings(
            bootstrap_servers=kafka_hosts,
            topic_prefix=config.topic_prefix,
            session_timeout_ms=config.kafka_session_timeout_ms,
            heartbeat_interval_ms=config.kafka_heartbeat_interval_ms,
            max_poll_interval_ms=config.kafka_max_poll_interval_ms,
            fetch_max_wait_ms=config.kafka_fetch_max_wait_ms,
            producer_delivery_timeout_ms=config.kafka_delivery_timeout_ms,
        ),
        pool=PoolConfig(
            user_memory_mb=config.user_memory.megabytes,
            pause_grace_s=config.pause_grace,
            idle_timeout_s=config.idle_container,
            stem_cells=manifest.stem_cells() if factory.prewarms_stem_cells else (),
            limits=pool_limits(config.payload_max),
            bounds=config.limit_bounds(),
            container_prefix=f"wsk{config.unique_name or ''}{config.instance}",
        ),
        store_policy=StorePolicy(config.store_blocking, config.store_non_blocking),
        max_peek=config.max_peek,
        http_bind=config.bind,
        http_port=config.port,
        http_username=config.invoker_username,
        http_password=config.invoker_password,
        metrics_auth=config.metrics_auth,
        ack_policy=AckPolicy(deadline_s=config.ack_deadline),
        store_deadline_s=config.store_deadline,
        held_tags=config.gpu_held_tags,
        scheduler=config.scheduler,
        fpc=fpc_settings(config) if config.scheduler == "fpc" else None,
    )
    return Invoker(settings, factory, manifest, whisks, activations, gpu=gpu)


def fpc_settings(config: InvokerConfig) -> FpcSettings:
    """The FPC front end's settings (imported here: grpc and etcd only where FPC is spoken)."""
    from invoker.fpc.lease import LeaseConfig
    from invoker.frontends.fpc import FpcSettings
    from invoker.frontends.fpc_container import PullSettings

    return FpcSettings(etcd_hosts=config.etcd_hosts, cluster_name=config.cluster_name,
                       lease=LeaseConfig(ttl_s=config.etcd_lease_timeout),
                       pull=PullSettings(fetch_timeout_s=config.fpc_fetch_timeout))


@contextlib.contextmanager
def kafka_hosts_for(config: InvokerConfig) -> Iterator[str]:
    """The configured brokers, or an embedded one for the lifetime of the block."""
    if config.kafka_hosts:
        yield config.kafka_hosts
        return
    from invoker.embedded.broker import EmbeddedKafka

    with EmbeddedKafka() as broker:
        log.info("no KAFKA_HOSTS: started the embedded Kafka-protocol broker at %s", broker.bootstrap_servers)
        yield broker.bootstrap_servers


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as error:
        print(f"invoker: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, str(config.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with kafka_hosts_for(config) as hosts:
        try:
            invoker = build_invoker(config, hosts)
        except MpsError as error:
            print(f"invoker: {error}", file=sys.stderr)
            return 2
        invoker.start()
        while not stop.wait(0.5) and not invoker.failed.is_set():
            pass
        log.info("stopping: finishing activations in flight")
        invoker.stop()
    if invoker.failed.is_set():
        log.critical("exiting: a thread the invoker cannot live without is gone")
        return 1
    return 0
