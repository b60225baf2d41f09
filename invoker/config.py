"""Invoker configuration, read the way OpenWhisk's invoker container reads it.

Every setting has a command-line option and the environment variables an
OpenWhisk deployment already sets for its Scala invoker (``KAFKA_HOSTS``,
``CONFIG_whisk_couchdb_*``, ``CONFIG_whisk_containerPool_userMemory``, ...), so
the Python invoker drops into the same Ansible roles and Helm charts. Settings
that only this invoker has use the ``INVOKER_`` prefix. ``--help`` lists them all.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from invoker.containerpool.backends import BACKENDS
from invoker.containerpool.pool import PoolConfig
from invoker.entities import LimitBounds
from invoker.gpu.inventory import parse_declared
from invoker.gpu.layer import GpuSettings
from invoker.gpu.locality import MAX_HELD
from invoker.gpu.request import parse_size_mb
from invoker.manifest import StemCell
from invoker.messages import ByteSize

# The defaults are the pool's and the GPU layer's own, written once there.
_POOL = PoolConfig()
_GPU = GpuSettings()


class ConfigError(ValueError):
    """A setting has a value the invoker cannot use."""


def parse_duration_s(text: str) -> float:
    """Typesafe-config durations as OpenWhisk writes them: ``10 seconds``, ``10 s``, ``500 ms``, ``2 minutes``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match:
        raise ConfigError(f"not a duration: {text!r}")
    value, unit = float(match.group(1)), match.group(2).lower()
    factors = {"": 1, "s": 1, "second": 1, "seconds": 1, "ms": 0.001, "millis": 0.001, "milliseconds": 0.001,
               "m": 60, "min": 60, "minute": 60, "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600,
               "d": 86400, "day": 86400, "days": 86400}
    if unit not in factors:
        raise ConfigError(f"unknown duration unit in {text!r}")
    return value * factors[unit]


def parse_positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ConfigError(f"must be at least 1, not {value}")
    return value


def parse_non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ConfigError(f"must be at least 0, not {value}")
    return value


def parse_positive_duration_s(text: str) -> float:
    value = parse_duration_s(text)
    if value <= 0:
        raise ConfigError(f"must be longer than 0, not {text!r}")
    return value


def parse_etcd_hosts(text: str) -> str:
    from invoker.fpc.etcd import EtcdEndpoint  # checked here, connected to by the FPC front end

    EtcdEndpoint.parse_hosts(text)
    return text


def parse_list(text: str) -> tuple[str, ...]:
    """OpenWhisk passes tags as ``gpu,fast`` (and Ansible as ``['gpu']``)."""
    cleaned = text.strip().strip("[]")
    return tuple(t.strip().strip("'\"") for t in cleaned.split(",") if t.strip().strip("'\""))


def parse_bool(text: str) -> bool:
    return str(text).strip().lower() in ("1", "true", "yes", "on")


def parse_ulimits(text: str) -> dict[str, tuple[int, int]]:
    """Docker's ``--ulimit`` syntax, comma-separated: ``nofile=1024:1024,nproc=512``."""
    limits: dict[str, tuple[int, int]] = {}
    for item in parse_list(text):
        match = re.fullmatch(r"([a-z]+)=(\d+)(?::(\d+))?", item)
        if not match:
            raise ConfigError(f"not a ulimit (name=soft[:hard]): {item!r}")
        soft = int(match.group(2))
        limits[match.group(1)] = (soft, int(match.group(3) or soft))
    return limits


def parse_declared_gpus(text: str) -> str:
    """Validated here so that a bad declaration stops the invoker at start."""
    parse_declared(text)
    return text


def parse_gpu_stem_cells(text: str) -> tuple[StemCell, ...]:
    """``python:3-gpu:2048MB:1[,...]``: kind, container memory, count per GPU."""
    cells = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        parts = item.rsplit(":", 2)
        if len(parts) != 3:
            raise ConfigError(f"GPU stem cell {item!r} must be kind:memory:count, e.g. python:3-gpu:2048MB:1")
        kind, memory, count = parts
        try:
            cells.append(StemCell(kind.strip().lower(), parse_size_mb(memory), int(count)))
        except ValueError as error:
            raise ConfigError(f"GPU stem cell {item!r}: {error}") from error
    return tuple(cells)


def parse_mps_mode(text: str) -> str:
    mode = text.strip().lower()
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"must be auto, on or off, not {text!r}")
    return mode


SCHEDULERS = ("classic", "fpc")


def parse_scheduler(text: str) -> str:
    """``classic`` or ``fpc``, or OpenWhisk's own ``whisk.spi.InvokerProvider`` class name: one
    ending in ``FPCInvokerReactive`` speaks FPC, ``InvokerReactive`` the classic protocol."""
    value = text.strip()
    if value.lower() in SCHEDULERS:
        return value.lower()
    last = value.rsplit(".", 1)[-1]
    if last.endswith("FPCInvokerReactive"):
        return "fpc"
    if last == "InvokerReactive":
        return "classic"
    raise ConfigError(f"must be classic, fpc, or an InvokerProvider class (…InvokerReactive, "
                      f"…FPCInvokerReactive), not {text!r}")


@dataclass(frozen=True)
class Setting:
    dest: str
    option: str
    env: tuple[str, ...]
    default: Any
    help: str
    parse: Any = str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("scheduler", "--scheduler", ("INVOKER_SCHEDULER", "CONFIG_whisk_spi_InvokerProvider"), "classic",
            "Protocol: classic (OpenWhisk 1.0: activations pushed on invokerN, health pings) or fpc "
            "(OpenWhisk 2.0's scheduler: containers created on invokerN, activations pulled over gRPC, "
            "registration in etcd). OpenWhisk's InvokerProvider class names are read too.", parse_scheduler),
    Setting("etcd_hosts", "--etcd-hosts", ("CONFIG_whisk_etcd_hosts",), "127.0.0.1:2379",
            "FPC: etcd endpoints, host:port comma-separated.", parse_etcd_hosts),
    Setting("cluster_name", "--cluster-name", ("CONFIG_whisk_cluster_name",), "whisk",
            "FPC: the cluster name every etcd key starts with."),
    Setting("etcd_lease_timeout", "--etcd-lease-timeout", ("CONFIG_whisk_etcd_lease_timeout",), 10,
            "FPC: TTL in seconds of the invoker's etcd lease (its keys vanish this long after it dies).",
            parse_positive_int),
    Setting("fpc_fetch_timeout", "--fpc-fetch-timeout", ("INVOKER_FPC_FETCH_TIMEOUT",), "30 s",
            "FPC: deadline of one long poll to the scheduler.", parse_positive_duration_s),
    Setting("kafka_hosts", "--kafka-hosts", ("KAFKA_HOSTS",), None,
            "Kafka bootstrap servers, host:port[,host:port]. Unset: start the embedded broker."),
    Setting("topic_prefix", "--topic-prefix", ("CONFIG_whisk_kafka_topics_prefix",), "", "Prefix of every Kafka topic."),
    Setting("kafka_session_timeout_ms", "--kafka-session-timeout-ms",
            ("CONFIG_whisk_kafka_consumer_sessionTimeoutMs",), 30_000, "Consumer group session timeout.", int),
    Setting("kafka_heartbeat_interval_ms", "--kafka-heartbeat-interval-ms",
            ("CONFIG_whisk_kafka_consumer_heartbeatIntervalMs",), 3_000, "Consumer heartbeat interval.", int),
    Setting("kafka_max_poll_interval_ms", "--kafka-max-poll-interval-ms",
            ("CONFIG_whisk_kafka_consumer_maxPollIntervalMs",), 300_000,
            "Consumer max poll interval (also the group join wait on some brokers).", int),
    Setting("kafka_delivery_timeout_ms", "--kafka-delivery-timeout-ms",
            ("CONFIG_whisk_kafka_producer_deliveryTimeoutMs",), 30000,
            "How long the Kafka producer retries a record itself; acks are retried beyond it (--ack-deadline).",
            int),
    Setting("kafka_fetch_max_wait_ms", "--kafka-fetch-max-wait-ms", ("CONFIG_whisk_kafka_consumer_fetchMaxWaitMs",),
            500, "Longest a fetch may wait at the broker for new records.", int),
    Setting("couchdb_protocol", "--couchdb-protocol", ("CONFIG_whisk_couchdb_protocol",), "http", "CouchDB protocol."),
    Setting("couchdb_host", "--couchdb-host", ("CONFIG_whisk_couchdb_host",), None,
            "CouchDB host. Unset: use the embedded store."),
    Setting("couchdb_port", "--couchdb-port", ("CONFIG_whisk_couchdb_port",), 5984, "CouchDB port.", int),
    Setting("couchdb_username", "--couchdb-username", ("CONFIG_whisk_couchdb_username",), None, "CouchDB user."),
    Setting("couchdb_password", "--couchdb-password", ("CONFIG_whisk_couchdb_password",), None,
            "CouchDB password (never logged).", str, True),
    Setting("db_whisks", "--db-whisks", ("CONFIG_whisk_couchdb_databases_WhiskEntity", "DB_WHISK_ACTIONS"),
            "whisk_local_whisks", "Database of actions."),
    Setting("db_activations", "--db-activations",
            ("CONFIG_whisk_couchdb_databases_WhiskActivation", "DB_WHISK_ACTIVATIONS"),
            "whisk_local_activations", "Database of activation records."),
    Setting("embedded_store_dir", "--embedded-store-dir", ("INVOKER_EMBEDDED_STORE_DIR",), None,
            "Directory the embedded store persists to (in memory when unset)."),
    Setting("embedded_activations_keep", "--embedded-activations-keep", ("INVOKER_EMBEDDED_ACTIVATIONS_KEEP",),
            10_000, "Embedded store: activation records kept, the newest (older ones are purged).",
            parse_positive_int),
    Setting("embedded_activations_ttl", "--embedded-activations-ttl", ("INVOKER_EMBEDDED_ACTIVATIONS_TTL",), None,
            "Embedded store: age after which an activation record is purged, e.g. '7 days' (unset: no age bound).",
            parse_positive_duration_s),
    Setting("user_memory", "--user-memory", ("CONFIG_whisk_containerPool_userMemory",), f"{_POOL.user_memory_mb} m",
            "Memory for action containers, advertised to the controller (e.g. 2048m).",
            lambda t: ByteSize.parse(t)),
    Setting("tags", "--tags", ("CONFIG_whisk_invoker_resource_tags",), "",
            "Resource tags in pings, comma-separated (e.g. gpu).", parse_list),
    Setting("dedicated_namespaces", "--dedicated-namespaces", ("CONFIG_whisk_invoker_dedicated_namespaces",), "",
            "Namespaces this invoker is reserved for (comma-separated).", parse_list),
    Setting("runtimes_manifest", "--runtimes-manifest", ("RUNTIMES_MANIFEST",), None,
            "Runtimes manifest JSON text. Unset: the project's invoker/runtimes.json."),
    Setting("api_host", "--api-host", ("__OW_API_HOST",), None,
            "API host given to actions as __OW_API_HOST (else built from WHISK_API_HOST_PROTO/NAME/PORT)."),
    Setting("pause_grace", "--pause-grace", ("CONFIG_whisk_containerProxy_timeouts_pauseGrace",), f"{_POOL.pause_grace_s:g} seconds",
            "Idle time before a warm container is paused.", parse_duration_s),
    Setting("idle_container", "--idle-container", ("CONFIG_whisk_containerProxy_timeouts_idleContainer",),
            f"{_POOL.idle_timeout_s:g} seconds", "Idle time before a warm container is removed.", parse_duration_s),
    Setting("payload_max", "--payload-max", ("CONFIG_whisk_activation_payload_max",), "1048576 B",
            "Largest activation result kept whole.", lambda t: ByteSize.parse(t)),
    # Action limits, checked again before a run (the controller checks them on write): the same
    # keys as OpenWhisk's whisk.memory, whisk.timeLimit, whisk.logLimit, whisk.concurrencyLimit.
    Setting("memory_min", "--memory-min", ("CONFIG_whisk_memory_min",), "128 m",
            "Smallest action memory limit.", lambda t: ByteSize.parse(t)),
    Setting("memory_max", "--memory-max", ("CONFIG_whisk_memory_max",), None,
            "Largest action memory limit (unset: what the pool's user memory holds).", lambda t: ByteSize.parse(t)),
    Setting("time_limit_min", "--time-limit-min", ("CONFIG_whisk_timeLimit_min",), "100 ms",
            "Shortest action time limit.", parse_duration_s),
    Setting("time_limit_max", "--time-limit-max", ("CONFIG_whisk_timeLimit_max",), "5 minutes",
            "Longest action time limit.", parse_duration_s),
    Setting("log_limit_min", "--log-limit-min", ("CONFIG_whisk_logLimit_min",), "0 m",
            "Smallest action log limit.", lambda t: ByteSize.parse(t)),
    Setting("log_limit_max", "--log-limit-max", ("CONFIG_whisk_logLimit_max",), "10 m",
            "Largest action log limit.", lambda t: ByteSize.parse(t)),
    Setting("concurrency_min", "--concurrency-min", ("CONFIG_whisk_concurrencyLimit_min",), 1,
            "Smallest intra-container concurrency limit.", int),
    Setting("concurrency_max", "--concurrency-max", ("CONFIG_whisk_concurrencyLimit_max",), 500,
            "Largest intra-container concurrency limit.", int),
    Setting("exec_size_limit", "--exec-size-limit", ("CONFIG_whisk_execSizeLimit",), "48 m",
            "Largest action code.", lambda t: ByteSize.parse(t)),
    Setting("store_blocking", "--store-blocking-result-level",
            ("CONFIG_whisk_activation_storeBlockingResultLevel",), "STORE_ALWAYS",
            "Which blocking activations are stored: STORE_ALWAYS, STORE_FAILURES, STORE_FAILURES_NOT_APPLICATION_ERRORS."),
    Setting("store_non_blocking", "--store-non-blocking-result-level",
            ("CONFIG_whisk_activation_storeNonBlockingResultLevel",), "STORE_ALWAYS",
            "The same for non-blocking activations."),
    Setting("port", "--port", ("PORT",), 8085, "Port of the invoker's HTTP endpoint (/ping, /enable, /disable).", int),
    Setting("bind", "--bind", ("INVOKER_BIND",), "127.0.0.1", "Address the HTTP endpoint binds to."),
    Setting("invoker_username", "--invoker-username", ("CONFIG_whisk_invoker_username",), "invoker.user",
            "Basic-auth user of /enable, /disable, /isEnabled, /pool and /gpus."),
    Setting("invoker_password", "--invoker-password", ("CONFIG_whisk_invoker_password",), "invoker.pass",
            "Basic-auth password of /enable, /disable, /isEnabled, /pool and /gpus (never logged).", str, True),
    Setting("metrics_auth", "--metrics-auth", ("INVOKER_METRICS_AUTH",), False,
            "Whether /metrics needs the same basic auth (it names no tenant's action or model either way).",
            parse_bool),
    Setting("backend", "--backend", ("INVOKER_BACKEND",), "process",
            "Container backend: " + "; ".join(f"{b.name} ({b.summary})" for b in BACKENDS.values()) + "."),
    Setting("docker_network", "--docker-network", ("CONFIG_whisk_containerFactory_containerArgs_network",), None,
            "Docker backend: network for action containers, reached at their container address. "
            "Unset: the default network, reached through a port published on --docker-publish-host."),
    Setting("docker_publish_host", "--docker-publish-host", ("INVOKER_DOCKER_PUBLISH_HOST",), "127.0.0.1",
            "Docker backend: host address the runtime port is published on."),
    Setting("docker_ulimits", "--docker-ulimits", ("INVOKER_DOCKER_ULIMITS",), "",
            "Docker backend: ulimits of action containers, e.g. nofile=1024:1024 (none by default; "
            "pids are limited by a cgroup).", parse_ulimits),
    Setting("docker_tmpfs", "--docker-tmpfs-size", ("INVOKER_DOCKER_TMPFS_SIZE",), "256 MB",
            "Docker backend: most for each of the tmpfs on /tmp and /action of an action container "
            "(the image is read-only; at most half the action's memory, which tmpfs counts against).",
            parse_size_mb),
    Setting("docker_log_max", "--docker-log-max-size", ("INVOKER_DOCKER_LOG_MAX_SIZE",), "10 MB",
            "Docker backend: container log size at which the engine rotates it.", parse_size_mb),
    Setting("docker_storage", "--docker-storage-size", ("INVOKER_DOCKER_STORAGE_SIZE",), None,
            "Docker backend: writable-layer quota of a container (Docker overlay2 on xfs with pquota only; "
            "unset: none, the image being read-only).", parse_size_mb),
    Setting("max_peek", "--max-peek", ("INVOKER_MAX_PEEK",), None,
            "Most activations taken from Kafka and not yet finished (default: userMemory/128MB, at least 16).", int),
    Setting("ack_deadline", "--ack-deadline", ("INVOKER_ACK_DEADLINE",), "10 minutes",
            "How long an ack is retried (with backoff) while the Kafka broker is away.", parse_duration_s),
    Setting("store_deadline", "--store-deadline", ("INVOKER_STORE_DEADLINE",), None,
            "How long an activation record is retried while the store is away before it is dropped. "
            "Unset: until written (its Kafka offset stays uncommitted meanwhile).", parse_duration_s),
    Setting("log_level", "--log-level", ("INVOKER_LOG_LEVEL",), "INFO", "Python log level."),
    Setting("gpus", "--gpus", ("INVOKER_GPUS",), None,
            "GPUs declared, not detected: index:memory[,...] (e.g. 0:80GiB,1:80GiB), for nodes where NVML "
            "is absent, so GPU placement and admission run on a declared inventory (logged and reported "
            "as declared). Ignored when NVML detects GPUs. Unset and no NVML: no GPU layer.",
            parse_declared_gpus),
    Setting("gpu_mps", "--gpu-mps", ("INVOKER_GPU_MPS",), "auto",
            "GPU sharing: auto (MPS where it can run, else time-slicing, with the reason logged), "
            "on (MPS or refuse to start), off (time-slicing).", parse_mps_mode),
    Setting("gpu_mps_dir", "--gpu-mps-dir", ("INVOKER_GPU_MPS_DIR",), "/run/openwhisk-gpu-mps",
            "Directory of the MPS daemon's pipe/ and log/ (mounted into GPU containers)."),
    Setting("gpu_mps_uid", "--gpu-mps-uid", ("INVOKER_GPU_MPS_UID",), 10001,
            "UID every GPU container runs as under MPS with the docker backend (MPS serves one user at "
            "a time; 10001 is the runtime images' user); the MPS directories are given to it. The "
            "process backend runs them as the invoker's own user.", int),
    Setting("gpu_mps_max_clients", "--gpu-mps-max-clients", ("INVOKER_GPU_MPS_MAX_CLIENTS",), _GPU.mps_max_clients,
            "Most containers on one MPS-shared GPU: the MPS server's client limit (48 on Volta and later up "
            "to CUDA 13.0, 60 in later releases); one more would fail to create its CUDA context.", int),
    Setting("gpu_reserved", "--gpu-reserved-memory", ("INVOKER_GPU_RESERVED_MEMORY",), f"{_GPU.reserved_mb} MB",
            "GPU memory per GPU never admitted to actions (driver, MPS server).", parse_size_mb),
    Setting("gpu_stem_cells", "--gpu-stem-cells", ("INVOKER_GPU_STEM_CELLS",), None,
            "Prewarmed GPU containers per GPU: kind:memory:count[,...] (e.g. python:3-gpu:2048MB:1). "
            "Unset: the stemCells of GPU kinds in the runtimes manifest, counted per GPU.", parse_gpu_stem_cells),
    Setting("gpu_held_tags", "--gpu-held-tags", ("INVOKER_GPU_HELD_TAGS",), MAX_HELD,
            "GPU invokers: most held:<digest> tags in health pings, one per action whose model a warm GPU "
            "container holds (most recently used first), for a controller that prefers holders "
            "(whisk.loadbalancer.gpu-routing.prefer-holders); 0: none.", parse_non_negative_int),
    Setting("gpu_prewarm", "--gpu-prewarm", ("INVOKER_GPU_PREWARM",), ",".join(_GPU.prewarm),
            "What a GPU stem cell imports and initialises (CUDA context) before it counts as ready.", parse_list),
    Setting("gpu_sleep_on_pressure", "--gpu-sleep-on-pressure", ("INVOKER_GPU_SLEEP_ON_PRESSURE",), str(_GPU.sleep_on_pressure).lower(),
            "GPU sleep: to make room on a GPU, put idle warm GPU containers holding models to sleep (their "
            "models' GPU memory back, the models kept in host memory) before destroying any.", parse_bool),
    Setting("gpu_sleep_after", "--gpu-sleep-after", ("INVOKER_GPU_SLEEP_AFTER",), f"{_GPU.sleep_after_s:g} s",
            "GPU sleep: idle this long, a GPU container holding models sleeps even without pressure "
            "(0: only under pressure); shorter than --idle-container, which still removes it.", parse_duration_s),
    Setting("gpu_sleep_host_budget", "--gpu-sleep-host-budget", ("INVOKER_GPU_SLEEP_HOST_BUDGET",), f"{_GPU.sleep_host_budget_mb} MB",
            "GPU sleep: host memory the models of all sleeping containers may hold; beyond it the least "
            "recently used asleep containers are removed.", parse_size_mb),
    Setting("gpu_sleep_context", "--gpu-sleep-context-memory", ("INVOKER_GPU_SLEEP_CONTEXT_MEMORY",), f"{_GPU.sleep_context_mb} MB",
            "GPU sleep: GPU memory an asleep container is assumed to keep (its CUDA context) when its sleep "
            "report does not measure it.", parse_size_mb),
)


@dataclass(frozen=True)
class InvokerConfig:
    instance: int
    unique_name: str | None
    displayed_name: str | None
    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        secrets = {s.dest for s in SETTINGS if s.secret}
        shown = {k: ("***" if k in secrets and v else v) for k, v in self.values.items()}
        return f"InvokerConfig(instance={self.instance}, {shown})"

    @property
    def couchdb_url(self) -> str | None:
        if not self.couchdb_host:
            return None
        return f"{self.couchdb_protocol}://{self.couchdb_host}:{self.couchdb_port}"

    def limit_bounds(self) -> LimitBounds:
        return LimitBounds(
            memory_min_mb=self.memory_min.megabytes,
            memory_max_mb=self.memory_max.megabytes if self.memory_max is not None else None,
            timeout_min_ms=round(self.time_limit_min * 1000),
            timeout_max_ms=round(self.time_limit_max * 1000),
            logs_min_mb=self.log_limit_min.megabytes,
            logs_max_mb=self.log_limit_max.megabytes,
            concurrency_min=self.concurrency_min,
            concurrency_max=self.concurrency_max,
            exec_size_bytes=self.exec_size_limit.bytes,
        )

    def resolved_api_host(self, env: Mapping[str, str]) -> str:
        if self.api_host:
            return self.api_host
        name = env.get("WHISK_API_HOST_NAME")
        if not name:
            return ""
        proto = env.get("WHISK_API_HOST_PROTO", "https")
        port = env.get("WHISK_API_HOST_PORT", "443")
        return f"{proto}://{name}:{port}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m invoker",
        description="OpenWhisk invoker with GPU support. Each option also reads the environment "
        "variables shown, so it drops into OpenWhisk's own deployments.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--id", type=int, default=None, help="Invoker instance id N (consumes topic invokerN).")
    parser.add_argument("--uniqueName", dest="unique_name", default=None, help="Unique name of this invoker.")
    parser.add_argument("--displayedName", dest="displayed_name", default=None, help="Name shown for this invoker.")
    for setting in SETTINGS:
        env = ", ".join(setting.env)
        default = "***" if setting.secret and setting.default else setting.default
        parser.add_argument(
            setting.option, dest=setting.dest, default=None,
            help=f"{setting.help} [env: {env}; default: {default}]",
        )
    return parser


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_admin_credentials(values: Mapping[str, Any]) -> None:
    """The well-known default credentials of /enable and /disable are fine on loopback only."""
    default = next(s.default for s in SETTINGS if s.dest == "invoker_password")
    if not is_loopback(str(values["bind"])) and values["invoker_password"] == default:
        raise ConfigError(f"--bind {values['bind']} opens /enable and /disable beyond this host, and "
                          f"--invoker-password is the well-known default: set --invoker-password "
                          f"(CONFIG_whisk_invoker_password), or bind to 127.0.0.1")


def load_config(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> InvokerConfig:
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = getattr(args, setting.dest)
        if raw is None:
            raw = next((env[name] for name in setting.env if env.get(name)), None)
        if raw is None:
            raw = setting.default
        try:
            values[setting.dest] = setting.parse(raw) if raw is not None and isinstance(raw, str) else raw
        except (ValueError, ConfigError) as error:
            raise ConfigError(f"{setting.option}: {error}") from error
    instance = args.id
    if instance is None:
        instance = int(env["INVOKER_ID"]) if env.get("INVOKER_ID") else None
    if instance is None:
        if args.unique_name:
            raise ConfigError(
                "--uniqueName without --id needs ZooKeeper id assignment, which this invoker does not "
                "implement: pass --id N as well"
            )
        instance = 0
    check_admin_credentials(values)
    if values["backend"] not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, not {values['backend']!r}")
    return InvokerConfig(instance, args.unique_name, args.displayed_name, values)
