"""Start on this machine what an OpenWhisk deployment runs, with OpenWhisk's own controller.

    tools/openwhisk/run.sh [--mode classic|fpc] [--with-controller-patch] [--invoker SPEC ...]

What it starts, each on 127.0.0.1 and a free port, and stops again on Ctrl-C / SIGTERM:

* the broker (Tansu, the project's embedded Kafka-protocol broker);
* pouchdb-server, initialised as OpenWhisk's Ansible initialises CouchDB
  (ansible/tasks/initdb.yml and wipeDatabase.yml): the databases ``<prefix>subjects``,
  ``<prefix>whisks`` and ``<prefix>activations``, their design documents from the checkout's
  ``ansible/files/``, and the ``guest`` and ``whisk.system`` keys from ``ansible/files/auth.*``;
* etcd (FPC mode only);
* OpenWhisk's controller, built by ``tools/openwhisk/build.sh``, with the classic
  ``ShardingContainerPoolBalancer`` (``--mode classic``) or the ``FPCPoolBalancer``
  (``--mode fpc``), configured as Ansible configures it (``CONFIG_*`` settings turned into
  system properties as OpenWhisk's ``transformEnvironment.sh`` does);
* OpenWhisk's scheduler (FPC mode only);
* this project's invokers (``--invoker cpu`` / ``--invoker gpu``: the latter with ``--tags gpu``
  and a declared GPU, ``--gpus 0:16GiB``), with the ``process`` backend; in FPC mode with
  ``--scheduler fpc`` and the deployment's etcd, cluster name and lease timeout.

It prints where each listens and the client settings (``wsk`` / ``openwhisk`` npm client).
The runtimes manifest is the checkout's ``ansible/files/runtimes.json`` with the GPU kinds of
``controller_patch/runtimes-gpu-overlay.json`` merged in, for every component alike.

Also importable (the tests do): ``Deployment(...).start()`` / ``.stop()``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from invoker.embedded.broker import EmbeddedKafka  # noqa: E402
from invoker.embedded.child import HOST, ChildServer, ServerStartError, free_port  # noqa: E402

BUILD_DIR = Path(os.environ.get("OW_BUILD_DIR") or REPO / ".cache" / "openwhisk" / "build")
DEFAULT_POUCHDB_SERVER = REPO / ".cache" / "node" / "node_modules" / ".bin" / "pouchdb-server"
DB_PREFIX = "whisk_local_"  # ansible/environments/local/group_vars/all: db_prefix
# the services' CouchDB user (the standalone controller's defaults, core/standalone standalone.conf)
COUCH_USER = ("whisk_admin", "some_passw0rd")
# the controller's classic balancer and the FPC one (ansible/group_vars/all, roles/controller)
BALANCERS = {
    "classic": "org.apache.openwhisk.core.loadBalancer.ShardingContainerPoolBalancer",
    "fpc": "org.apache.openwhisk.core.loadBalancer.FPCPoolBalancer",
}
ENTITLEMENT = {
    "classic": "org.apache.openwhisk.core.entitlement.LocalEntitlementProvider",
    "fpc": "org.apache.openwhisk.core.entitlement.FPCEntitlementProvider",
}


class RunnerError(RuntimeError):
    """Something the runner needs is missing, or a component did not start."""


def config_properties(env: dict[str, str]) -> list[str]:
    """OpenWhisk's common/scala/transformEnvironment.sh: ``CONFIG_a_bC_D=v`` -> ``-Da.b-c.D=v``."""
    props = []
    for var, value in sorted(env.items()):
        if not var.startswith("CONFIG_") or value == "":
            continue
        parts = []
        for part in var[len("CONFIG_"):].split("_"):
            if part[:1].isupper():
                parts.append(part)  # PascalCase parts stay (spi names, database names)
            else:
                parts.append(re.sub(r"([a-z0-9])([A-Z])", lambda m: m.group(1) + "-" + m.group(2).lower(), part))
        props.append(f"-D{'.'.join(parts)}={value}")
    return props


def runtimes_manifest(checkout: Path) -> str:
    """The checkout's runtimes.json with the GPU kinds merged in (controller_patch/merge_manifest.py)."""
    base = checkout / "ansible" / "files" / "runtimes.json"
    out = subprocess.run([sys.executable, str(REPO / "controller_patch" / "merge_manifest.py"), str(base)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RunnerError(f"merge_manifest.py {base} failed: {out.stderr.strip()}")
    return json.dumps(json.loads(out.stdout), separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# The components


class Pouch(ChildServer):
    """pouchdb-server in memory (admin party): the CouchDB-API store."""

    what = "pouchdb-server"

    def __init__(self, workdir: Path) -> None:
        super().__init__(None, workdir / "pouchdb.log", 60.0, cwd=workdir / "pouchdb")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        binary = Path(os.environ.get("POUCHDB_SERVER") or DEFAULT_POUCHDB_SERVER)
        if not os.access(binary, os.X_OK):
            raise RunnerError(f"pouchdb-server not found at {binary}: run ./dev setup, or set POUCHDB_SERVER")
        return [str(binary), "--in-memory", "--host", HOST, "--port", str(self.port), "--no-color"]

    def probe(self, timeout_s: float) -> str | None:
        try:
            reply = requests.get(self.url + "/", timeout=timeout_s)
            return None if reply.ok and "pouchdb-adapters" in reply.json() else f"GET / answered {reply.status_code}"
        except (requests.RequestException, ValueError) as e:
            return repr(e)


class Etcd(ChildServer):
    """etcd (Debian's etcd-server), for the FPC scheduler and balancer."""

    what = "etcd"

    def __init__(self, workdir: Path) -> None:
        super().__init__(None, workdir / "etcd.log", 60.0, cwd=workdir)
        self.workdir = workdir
        self.peer_port = free_port()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        peer = f"http://{HOST}:{self.peer_port}"
        return ["etcd", "--name", "ow", "--data-dir", str(self.workdir / "etcd-data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"ow={peer}"]

    def probe(self, timeout_s: float) -> str | None:
        try:
            reply = requests.get(self.url + "/health", timeout=timeout_s)
            return None if reply.ok and reply.json().get("health") == "true" else reply.text[:200]
        except (requests.RequestException, ValueError) as e:
            return repr(e)


class JvmService(ChildServer):
    """One of OpenWhisk's services from tools/openwhisk/build.sh's output, answering GET /ping."""

    def __init__(self, service: str, build: Path, workdir: Path, env: dict[str, str], args: list[str],
                 port: int, jvm_opts: list[str] | None = None, start_timeout_s: float = 180.0) -> None:
        super().__init__(port, workdir / f"{service}.log", start_timeout_s, cwd=workdir / service)
        self.what = f"OpenWhisk's {service}"
        self.service = service
        self.build = build
        self.env = env
        self.args = args
        self.jvm_opts = jvm_opts or []

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        classpath = self.build / f"{self.service}.classpath"
        main = self.build / f"{self.service}.main"
        if not classpath.is_file():
            raise RunnerError(f"{classpath} is missing: run tools/openwhisk/build.sh first")
        return ["java", "-Xmx512m", "-XX:+UseSerialGC", "-Djava.security.egd=file:/dev/./urandom",
                # the Kryo stand-in writes JDK classes without a Kryo serializer field by field
                *(f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in ("java.lang", "java.util", "java.time", "java.math", "java.net")),
                *self.jvm_opts, *config_properties(self.env),
                "-cp", classpath.read_text().strip(), main.read_text().strip(), *self.args]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONFIG_")}
        env.update(self.env)
        return env

    def start_failure(self) -> str | None:
        # A Pekko service whose main thread threw keeps running (its actor system's threads are
        # not daemons) and never binds its port.
        if 'Exception in thread "main"' in self.log_path.read_text(errors="replace"):
            return "failed to start"
        return None

    def probe(self, timeout_s: float) -> str | None:
        try:
            reply = requests.get(self.url + "/ping", timeout=timeout_s)
            return None if reply.ok else f"GET /ping answered {reply.status_code}"
        except requests.RequestException as e:
            return repr(e)


class OurInvoker(ChildServer):
    """This project's invoker (python -m invoker): classic protocol, or FPC (``--scheduler fpc``)
    in FPC mode."""

    def __init__(self, index: int, kind: str, workdir: Path, args: list[str]) -> None:
        super().__init__(None, workdir / f"invoker{index}-{kind}.log", 60.0, cwd=REPO)
        self.what = f"this project's invoker{index} ({kind})"
        self.index = index
        self.kind = kind
        self.args = args

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "invoker", "--port", str(self.port), *self.args]

    def environment(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("CONFIG_")}

    def probe(self, timeout_s: float) -> str | None:
        try:
            reply = requests.get(self.url + "/ping", timeout=timeout_s)
            return None if reply.ok else f"GET /ping answered {reply.status_code}"
        except requests.RequestException as e:
            return repr(e)


# ---------------------------------------------------------------------------------------------
# Store initialisation, as OpenWhisk's Ansible does it


def init_store(url: str, checkout: Path, prefix: str = DB_PREFIX) -> dict[str, str]:
    """Create the three databases, their design documents and the auth keys; return the keys."""
    files = checkout / "ansible" / "files"
    views = {
        "subjects": ["auth_design_document_for_subjects_db_v2.0.0.json", "filter_design_document.json",
                     "namespace_throttlings_design_document_for_subjects_db.json"],
        "whisks": ["whisks_design_document_for_entities_db_v2.1.0.json", "filter_design_document.json"],
        "activations": ["whisks_design_document_for_activations_db_v2.1.0.json",
                        "whisks_design_document_for_activations_db_filters_v2.1.1.json",
                        "filter_design_document.json", "activations_design_document_for_activations_db.json",
                        "logCleanup_design_document_for_activations_db.json"],
    }
    session = requests.Session()

    def put_doc(db: str, doc: dict) -> None:
        doc_url = f"{url}/{db}/{quote(doc['_id'], safe='')}"
        existing = session.get(doc_url, timeout=10)
        if existing.status_code == 200:
            doc = {**doc, "_rev": existing.json()["_rev"]}
        reply = session.put(doc_url, json=doc, timeout=10)
        if reply.status_code not in (200, 201):
            raise RunnerError(f"PUT {db}/{doc['_id']}: {reply.status_code} {reply.text[:300]}")

    for name, docs in views.items():
        db = prefix + name
        reply = session.put(f"{url}/{db}", timeout=10)
        if reply.status_code not in (201, 202, 412):
            raise RunnerError(f"PUT /{db}: {reply.status_code} {reply.text[:300]}")
        for file in docs:
            put_doc(db, json.loads((files / file).read_text()))
    keys = {}
    for subject in ("guest", "whisk.system"):
        key = (files / f"auth.{subject}").read_text().strip()
        uuid, secret = key.split(":", 1)
        put_doc(prefix + "subjects", {"_id": subject, "subject": subject,
                                      "namespaces": [{"name": subject, "uuid": uuid, "key": secret}]})
        keys[subject] = key
        # An empty limits document, as `wskadmin limits set` leaves: the identities view emits
        # {_id: "<namespace>/limits"} and the controller reads it with include_docs; CouchDB
        # answers "doc": null for a missing one, pouchdb-server leaves "doc" out, and the
        # controller then refuses the key ("identities view malformed", Identity.scala:245).
        put_doc(prefix + "subjects", {"_id": f"{subject}/limits"})
    # The services' CouchDB user (Ansible: tasks/db/createUsers.yml). Created last: after it
    # exists pouchdb-server 4.2.0 crashes on any database creation ("db.info is not a function").
    # pouchdb-server has no admin but this user (admin party): the user reads and writes
    # documents and queries views, which is all the services do.
    user, password = COUCH_USER
    reply = session.put(f"{url}/_users/org.couchdb.user:{user}", timeout=10,
                        json={"name": user, "password": password, "roles": [], "type": "user"})
    if reply.status_code not in (201, 202, 409):
        raise RunnerError(f"creating the CouchDB user {user}: {reply.status_code} {reply.text[:300]}")
    return keys


# ---------------------------------------------------------------------------------------------
# The deployment


@dataclass
class Deployment:
    checkout: Path
    mode: str = "classic"  # classic | fpc
    variant: str = "plain"  # plain | patched (tools/openwhisk/build.sh --with-controller-patch)
    invokers: list[str] = field(default_factory=lambda: ["cpu", "gpu"])
    workdir: Path | None = None
    controller_port: int | None = None
    components: list[ChildServer] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.mode not in BALANCERS:
            raise RunnerError(f"mode must be one of {sorted(BALANCERS)}, not {self.mode!r}")
        self.checkout = Path(self.checkout)
        self.build = BUILD_DIR / self.variant
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="openwhisk-run-"))
        self.keys: dict[str, str] = {}
        self.broker: EmbeddedKafka | None = None
        self.store: Pouch | None = None
        self.etcd: Etcd | None = None
        self.controller: JvmService | None = None
        self.scheduler: JvmService | None = None
        self.our_invokers: list[OurInvoker] = []

    # what every JVM service shares: Ansible's controller/scheduler/invoker environment
    def _common_env(self, manifest: str) -> dict[str, str]:
        assert self.broker and self.store
        env = {
            "KAFKA_HOSTS": self.broker.bootstrap_servers,
            "RUNTIMES_MANIFEST": manifest,
            "LIMITS_ACTIONS_INVOKES_PERMINUTE": "6000",
            "LIMITS_ACTIONS_INVOKES_CONCURRENT": "300",
            "LIMITS_TRIGGERS_FIRES_PERMINUTE": "6000",
            "LIMITS_ACTIONS_SEQUENCE_MAXLENGTH": "50",
            "CONFIG_whisk_couchdb_protocol": "http",
            "CONFIG_whisk_couchdb_host": HOST,
            "CONFIG_whisk_couchdb_port": str(self.store.port),
            "CONFIG_whisk_couchdb_username": COUCH_USER[0],
            "CONFIG_whisk_couchdb_password": COUCH_USER[1],
            "CONFIG_whisk_couchdb_provider": "CouchDB",
            "CONFIG_whisk_couchdb_databases_WhiskAuth": DB_PREFIX + "subjects",
            "CONFIG_whisk_couchdb_databases_WhiskEntity": DB_PREFIX + "whisks",
            "CONFIG_whisk_couchdb_databases_WhiskActivation": DB_PREFIX + "activations",
            "CONFIG_whisk_info_date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "CONFIG_whisk_info_buildNo": f"tools-openwhisk-{self.variant}",
            "CONFIG_whisk_cluster_name": "owgpu",
            "CONFIG_whisk_spi_LoadBalancerProvider": BALANCERS[self.mode],
            "CONFIG_whisk_spi_EntitlementSpiProvider": ENTITLEMENT[self.mode],
            # Pekko remoting on loopback, each service on its own port
            "CONFIG_pekko_remote_artery_canonical_hostname": HOST,
            "CONFIG_pekko_remote_artery_bind_hostname": HOST,
            "WHISK_API_HOST_PROTO": "http",
            "WHISK_API_HOST_NAME": HOST,
        }
        if self.etcd:
            env["CONFIG_whisk_etcd_hosts"] = f"{HOST}:{self.etcd.port}"
            env["CONFIG_whisk_scheduler_grpc_tls"] = "false"
            # ansible/group_vars/all: etcd.lease.timeout 10, etcd.pool_threads 10
            env["CONFIG_whisk_etcd_lease_timeout"] = "10"
            env["CONFIG_whisk_etcd_pool_threads"] = "10"
        return env

    def start(self) -> Deployment:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        assert self.workdir is not None
        for f in ("controller.classpath", "controller.main"):
            if not (self.build / f).is_file():
                raise RunnerError(f"{self.build / f} is missing: run "
                                  f"OPENWHISK_CHECKOUT={self.checkout} tools/openwhisk/build.sh"
                                  + (" --with-controller-patch" if self.variant == "patched" else ""))
        manifest = runtimes_manifest(self.checkout)
        (self.workdir / "runtimes.json").write_text(manifest)

        self.broker = EmbeddedKafka(log_path=self.workdir / "broker.log")
        self._add(self.broker)
        self.store = Pouch(self.workdir)
        self._add(self.store)
        self.keys = init_store(self.store.url, self.checkout)
        if self.mode == "fpc":
            self.etcd = Etcd(self.workdir)
            self._add(self.etcd)

        env = self._common_env(manifest)
        controller_port = self.controller_port or free_port()
        pekko_port = free_port()
        self.controller = JvmService(
            "controller", self.build, self.workdir,
            {**env, "PORT": str(controller_port), "WHISK_API_HOST_PORT": str(controller_port),
             "CONFIG_pekko_remote_artery_canonical_port": str(pekko_port),
             "CONFIG_pekko_cluster_seedNodes_0": f"pekko://controller-actor-system@{HOST}:{pekko_port}"},
            ["0"], controller_port)
        if self.mode == "fpc":
            # ansible/roles/schedulers/tasks/deploy.yml: the HTTP port, the gRPC port activations
            # are fetched from, and the Pekko remoting port, which the controller reaches via etcd
            sched_port, rpc_port, sched_pekko = free_port(), free_port(), free_port()
            self.scheduler = JvmService(
                "scheduler", self.build, self.workdir,
                {**env, "PORT": str(sched_port), "SCHEDULER_INSTANCES": "1",
                 "WHISK_SCHEDULER_ENDPOINTS_HOST": HOST,
                 "WHISK_SCHEDULER_ENDPOINTS_RPCPORT": str(rpc_port),
                 "WHISK_SCHEDULER_ENDPOINTS_PEKKOPORT": str(sched_pekko),
                 "CONFIG_pekko_remote_artery_canonical_port": str(sched_pekko),
                 "CONFIG_pekko_cluster_seedNodes_0": f"pekko://scheduler-actor-system@{HOST}:{sched_pekko}",
                 "CONFIG_whisk_scheduler_protocol": "http",
                 "CONFIG_whisk_scheduler_username": "scheduler.user",
                 "CONFIG_whisk_scheduler_password": "scheduler.pass",
                 # Ansible's default duration checker reads ElasticSearch; without one, the
                 # no-op checker (OpenWhisk's standalone mode uses it too)
                 "CONFIG_whisk_durationChecker_timeWindow": "1 d",
                 "CONFIG_whisk_spi_DurationCheckerProvider":
                     "org.apache.openwhisk.core.scheduler.queue.NoopDurationCheckerProvider",
                 "CONFIG_whisk_scheduler_grpc_tls": "false"},
                ["0"], sched_port)
            self._add(self.scheduler)
        self._add(self.controller)

        for index, kind in enumerate(self.invokers):
            args = ["--id", str(index), "--kafka-hosts", self.broker.bootstrap_servers,
                    "--couchdb-protocol", "http", "--couchdb-host", HOST, "--couchdb-port", str(self.store.port),
                    "--couchdb-username", COUCH_USER[0], "--couchdb-password", COUCH_USER[1],
                    "--db-whisks", DB_PREFIX + "whisks", "--db-activations", DB_PREFIX + "activations",
                    "--runtimes-manifest", manifest, "--backend", "process",
                    "--api-host", f"http://{HOST}:{controller_port}"]
            if kind == "gpu":
                args += ["--tags", "gpu", "--gpus", "0:16GiB"]
            if self.mode == "fpc":
                # OpenWhisk 2.0's protocol, with the etcd and cluster settings the scheduler and
                # the FPC balancer read (EtcdKV's keys all start with whisk.cluster.name)
                assert self.etcd is not None
                args += ["--scheduler", "fpc", "--etcd-hosts", env["CONFIG_whisk_etcd_hosts"],
                         "--cluster-name", env["CONFIG_whisk_cluster_name"],
                         "--etcd-lease-timeout", env["CONFIG_whisk_etcd_lease_timeout"]]
            invoker = OurInvoker(index, kind, self.workdir, args)
            self.our_invokers.append(invoker)
            self._add(invoker)

    def _add(self, component: ChildServer) -> None:
        component.start()
        self.components.append(component)

    def stop(self) -> None:
        while self.components:
            component = self.components.pop()
            try:
                component.stop()
            except Exception as e:  # keep stopping the rest
                print(f"run: stopping {component.what}: {e}", file=sys.stderr)

    # -- what a client needs

    @property
    def api_host(self) -> str:
        assert self.controller
        return self.controller.url

    def describe(self) -> str:
        lines = [f"OpenWhisk ({self.mode} mode, {self.variant} build) on this machine; logs in {self.workdir}"]
        if self.broker:
            lines.append(f"  broker (Tansu)      {self.broker.bootstrap_servers}")
        if self.store:
            lines.append(f"  store (pouchdb)     {self.store.url}  databases {DB_PREFIX}{{subjects,whisks,activations}}")
        if self.etcd:
            lines.append(f"  etcd                {self.etcd.url}")
        if self.scheduler:
            lines.append(f"  scheduler           {self.scheduler.url}")
        if self.controller:
            lines.append(f"  controller          {self.controller.url}  (GET /ping, /invokers, /api/v1)")
        for inv in self.our_invokers:
            lines.append(f"  invoker{inv.index} ({inv.kind:3})    {inv.url}  (this project's, topic invoker{inv.index})")
        if self.keys:
            lines += ["", "client settings:",
                      f"  wsk property set --apihost {self.api_host} --auth {self.keys.get('guest')}",
                      f"  export __OW_API_HOST={self.api_host} __OW_API_KEY={self.keys.get('guest')}"
                      "   # openwhisk npm client: openwhisk({ignore_certs: true})"]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(BALANCERS), default="classic")
    parser.add_argument("--with-controller-patch", action="store_true",
                        help="run the controller built with controller_patch/ (build.sh --with-controller-patch)")
    parser.add_argument("--invoker", action="append", choices=["cpu", "gpu"],
                        help="this project's invokers, in id order (default: cpu gpu)")
    parser.add_argument("--no-invokers", action="store_true")
    parser.add_argument("--controller-port", type=int)
    parser.add_argument("--workdir", type=Path, help="logs and state (default: a new temporary folder)")
    parser.add_argument("--up-for", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    args = parser.parse_args(argv)
    checkout = os.environ.get("OPENWHISK_CHECKOUT")
    if not checkout or not Path(checkout, "ansible", "files", "runtimes.json").is_file():
        print("run: OPENWHISK_CHECKOUT must name an apache/openwhisk checkout (its ansible/files are read), "
              "built with tools/openwhisk/build.sh", file=sys.stderr)
        return 2
    invokers = [] if args.no_invokers else (args.invoker or ["cpu", "gpu"])
    deployment = Deployment(Path(checkout), args.mode, "patched" if args.with_controller_patch else "plain",
                            invokers, args.workdir, args.controller_port)
    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        deployment.start()
        print(deployment.describe(), flush=True)
        deadline = time.monotonic() + args.up_for if args.up_for else None
        while not stop["now"] and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.5)
            dead = [c.what for c in deployment.components if not c.running]
            if dead:
                print(f"run: stopped by itself: {', '.join(dead)}; stopping the rest", file=sys.stderr)
                return 1
        return 0
    except (RunnerError, ServerStartError) as e:
        print(f"run: {e}", file=sys.stderr)
        return 1
    finally:
        deployment.stop()
        print("run: stopped everything it started", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
