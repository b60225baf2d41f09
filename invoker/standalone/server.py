"""Standalone mode: OpenWhisk's REST API on one machine, on the real invoker path.

One process tree: this process serves the REST API, runs the controller-side client
and the invoker; the embedded Kafka-protocol broker and the action runtimes are its
children. Nothing needs to be installed first::

    ./dev run                            # REST API on 127.0.0.1:3233
    ./dev run --port 3234 --backend process
    ./dev run demo my_action.py -p name Ada   # the one-shot demo (no REST API)

Settings the invoker reads from the environment apply here too: ``CONFIG_whisk_couchdb_*``
(CouchDB instead of the embedded store), ``INVOKER_EMBEDDED_STORE_DIR`` (keep the
embedded store on disk), ``INVOKER_EMBEDDED_ACTIVATIONS_KEEP`` / ``_TTL`` (how many activation
records the embedded store keeps, and for how long), ``KAFKA_HOSTS`` (an external broker),
``RUNTIMES_MANIFEST``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from invoker.cli import build_invoker, kafka_hosts_for, open_databases
from invoker.config import ConfigError, InvokerConfig, load_config
from invoker.embedded.controller import EmbeddedController
from invoker.embedded.standalone import EMBEDDED_KAFKA_TIMINGS
from invoker.manifest import RuntimesManifest
from invoker.messages import Identity
from invoker.messaging import KafkaSettings
from invoker.service import ManifestImages
from invoker.standalone.api import ApiServer, RestApi
from invoker.standalone.auth import AuthKeyError, GuestKey, load_or_create
from invoker.standalone.host import Gpus, find_gpus, probe_docker
from invoker.standalone.platform import Platform

log = logging.getLogger("invoker.standalone")

DEFAULT_PORT = 3233  # OpenWhisk standalone's port
DEFAULT_AUTH_FILE = Path(".cache/standalone/guest.auth")
NAMESPACE = "guest"


class PortUnavailable(OSError):
    """The API address cannot be bound (taken, or not this machine's)."""


@dataclass(frozen=True)
class Settings:
    bind: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    auth_file: Path = DEFAULT_AUTH_FILE
    backend: str = "auto"  # auto, process or docker
    user_memory: str = "4096 m"
    verbose: bool = False


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="./dev run",
        description="OpenWhisk's REST API (actions, invoke, activations) on this machine, backed by the "
        "GPU invoker, an embedded Kafka-protocol broker and the embedded store (or CouchDB). "
        "'./dev run demo --help' shows the one-shot demo instead.",
    )
    parser.add_argument("--bind", default=os.environ.get("OW_STANDALONE_BIND", "127.0.0.1"),
                        help="address the API listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("OW_STANDALONE_PORT", DEFAULT_PORT)),
                        help=f"API port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--auth-file", type=Path, default=Path(os.environ.get("OW_STANDALONE_AUTH_FILE",
                                                                              DEFAULT_AUTH_FILE)),
                        help="file holding the guest key uuid:key; created with a new key (mode 0600) when "
                        f"missing (default {DEFAULT_AUTH_FILE})")
    parser.add_argument("--backend", choices=("auto", "process", "docker"), default="auto",
                        help="where actions run: docker when an engine with the runtime images is reachable, "
                        "else runtime processes (auto, the default)")
    parser.add_argument("--user-memory", default="4096 m", help="memory for actions (default 4096 m)")
    parser.add_argument("--verbose", action="store_true", help="log the invoker's work")
    args = parser.parse_args(argv)
    return Settings(args.bind, args.port, args.auth_file, args.backend, args.user_memory, args.verbose)


@dataclass
class Running:
    """Everything standalone mode started, and what start-up reports about it."""

    api: ApiServer
    platform: Platform
    config: InvokerConfig
    kafka_hosts: str
    store: str
    backend: str
    backend_reason: str
    gpus: Gpus
    key_created: bool
    images: ManifestImages  # the invoker's own: which kinds its backend can run

    @property
    def url(self) -> str:
        return f"http://{self.api.server_address[0]}:{self.api.port}"


def choose_backend(requested: str, manifest: RuntimesManifest) -> tuple[str, str]:
    if requested != "auto":
        return requested, "as requested"
    docker = probe_docker(manifest)
    return ("docker", docker.reason) if docker.usable else ("process", f"Docker not used: {docker.reason}")


def guest_identity(key: GuestKey) -> Identity:
    return Identity(subject=NAMESPACE, namespace_name=NAMESPACE, namespace_uuid=key.uuid,
                    authkey={"api_key": key.api_key}, rights=("READ", "PUT", "DELETE", "ACTIVATE"), limits={})


@contextlib.contextmanager
def running(settings: Settings, env: Mapping[str, str] | None = None) -> Iterator[Running]:
    """Start broker, store, invoker, controller and API; stop them all on exit."""
    env = os.environ if env is None else env
    key, created = load_or_create(settings.auth_file)
    # The API socket first: a taken port fails before anything else starts.
    try:
        api = ApiServer((settings.bind, settings.port))
    except OSError as error:
        raise PortUnavailable(f"cannot serve on {settings.bind}:{settings.port}: {error}") from error
    try:
        base = load_config(["--id", "0"], env=env)
        manifest = RuntimesManifest.load(base.runtimes_manifest)
        backend, reason = choose_backend(settings.backend, manifest)
        api_host = f"http://{settings.bind}:{api.port}"
        config = load_config(["--id", "0", "--port", "0", *EMBEDDED_KAFKA_TIMINGS, "--backend", backend,
                              "--user-memory", settings.user_memory, "--api-host", api_host], env=env)
        with kafka_hosts_for(config) as hosts:
            whisks, activations, store = open_databases(config)
            invoker = build_invoker(config, hosts, env=env, whisks=whisks, activations=activations)
            kafka = KafkaSettings(hosts, topic_prefix=config.topic_prefix,
                                  session_timeout_ms=config.kafka_session_timeout_ms,
                                  heartbeat_interval_ms=config.kafka_heartbeat_interval_ms,
                                  max_poll_interval_ms=config.kafka_max_poll_interval_ms,
                                  fetch_max_wait_ms=config.kafka_fetch_max_wait_ms)
            identity = guest_identity(key)
            controller = EmbeddedController(kafka, identity=identity, keep_acks=10_000)
            try:
                invoker.start()
                if not invoker.wait_ready(90):
                    raise RuntimeError("invoker0 did not get its Kafka partition within 90 s")
                platform = Platform(identity, whisks, activations, manifest, controller)
                api.api = RestApi(platform, key)
                api.start()
                yield Running(api, platform, config, hosts, store, backend, reason, find_gpus(), created,
                              invoker.pool.images)
            finally:
                api.shutdown()
                controller.close()
                invoker.stop()
    finally:
        api.server_close()


def report(run: Running, settings: Settings) -> str:
    """What runs where, and how to point ``wsk`` and the npm client at it."""
    manifest = run.platform.manifest
    images = run.images
    if run.gpus.count:
        gpu_line = f"{run.gpus.count} NVIDIA GPU(s) ({', '.join(run.gpus.names)}; found by {run.gpus.how})"
    else:
        gpu_line = f"none ({run.gpus.how}): -gpu kinds run on the CPU"
    kinds = []
    for kind, runtime in sorted(manifest.kinds.items()):
        if not images.runnable(kind):
            where = f"not runnable on the {run.backend} backend"
        elif runtime.is_gpu and run.gpus.count:
            where = "GPU"
        else:
            where = "CPU" + (" (no GPU present)" if runtime.is_gpu else "")
        kinds.append(f"{kind}: {where}")
    if run.backend == "process":
        backend = f"process (each action container is `{sys.executable} -m owruntime`, a child of this process)"
    else:
        backend = "docker (action containers through the Docker API)"
    if run.kafka_hosts and run.config.kafka_hosts:
        broker = f"Kafka at {run.kafka_hosts} (KAFKA_HOSTS)"
    else:
        broker = f"embedded Kafka-protocol broker (Tansu) at {run.kafka_hosts}"
    auth = settings.auth_file.resolve()
    lines = [
        f"OpenWhisk REST API v1 at {run.url} (namespace '{NAMESPACE}', also '_')",
        f"  store:    {run.store}",
        f"  broker:   {broker}; controller acks on completed0, invoker0 reads invoker0",
        f"  backend:  {backend}; {run.backend_reason}",
        f"  GPUs:     {gpu_line}",
        f"  kinds:    {'; '.join(kinds)}",
        f"  auth:     guest key in {auth} ({'created now, ' if run.key_created else ''}mode 0600; never printed)",
        "",
        "Point wsk at it:",
        f"  wsk property set --apihost {run.url} --auth \"$(cat {auth})\"",
        "or the openwhisk npm client:",
        f"  export __OW_API_HOST={run.url} __OW_API_KEY=\"$(cat {auth})\"",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        from invoker.embedded.standalone import main as demo

        return demo(argv[1:])
    settings = parse_args(argv)
    logging.basicConfig(level=logging.INFO if settings.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.verbose:
        logging.getLogger("kafka").setLevel(logging.ERROR)  # client-config chatter, not problems
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    started = time.monotonic()
    print("starting: embedded broker, store, invoker0 (the first start takes a few seconds) ...", flush=True)
    try:
        with running(settings) as run:
            print(report(run, settings), flush=True)
            print(f"ready in {time.monotonic() - started:.1f} s", flush=True)
            stop.wait()
            print("stopping: finishing activations in flight ...", flush=True)
    except (AuthKeyError, ConfigError) as error:
        print(f"standalone: {error}", file=sys.stderr)
        return 2
    except PortUnavailable as error:
        print(f"standalone: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
