"""The Ansible playbook, run for real against a podman container as the invoker node.

The target is Debian bookworm with systemd as PID 1 (``build_systemd_image.sh``), reached
through Ansible's podman connection (containers.podman, bundled with the ``ansible``
package). It shares the host network, so the invoker's pings reach the real Kafka-protocol
broker of the ``kafka_broker`` fixture and it reads actions from the real pouchdb-server.
The container has no GPU, so the GPU-only tasks must be skipped; it has no Docker engine,
so the invoker runs with the process backend. If the target does not run systemd
(``OWGPU_DEPLOY_IMAGE`` names an image without it), the test starts the installed service
with exactly the command, user and environment its unit file holds.

Needs ansible, ansible-lint and podman: run through ``tox -e deploy``.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from invoker.messages import PingMessage

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
PODMAN = ["podman", "--cgroup-manager=cgroupfs", "--runtime", "runc"]
IMAGE = os.environ.get("OWGPU_DEPLOY_IMAGE", "localhost/owgpu-systemd:bookworm")
INDEX_BASE = 3  # as if three CPU invokers came first: the GPU invoker must get id 3


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def _podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def ansible_playbook() -> str:
    tool = _tool("ansible-playbook")
    if tool is None:
        pytest.skip("ansible is not installed: run `tox -e deploy`")
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    return tool


@pytest.fixture(scope="module")
def target_image(ansible_playbook: str) -> str:
    if _podman("image", "exists", IMAGE, check=False).returncode != 0:
        if IMAGE != "localhost/owgpu-systemd:bookworm":
            pytest.fail(f"image {IMAGE} (OWGPU_DEPLOY_IMAGE) does not exist", pytrace=False)
        built = subprocess.run([str(Path(__file__).with_name("build_systemd_image.sh")), IMAGE],
                               capture_output=True, text=True, timeout=600)
        if built.returncode != 0:
            pytest.fail(f"could not build {IMAGE}: {built.stderr}", pytrace=False)
    return IMAGE


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel and its dependencies: the target reaches no package index."""
    out = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(out), str(REPO)],
                   check=True, timeout=300, capture_output=True)
    return out


@pytest.fixture
def target(target_image: str) -> Iterator[str]:
    name = f"owgpu-deploy-{uuid.uuid4().hex[:8]}"
    has_systemd = _podman("run", "--rm", target_image, "test", "-x", "/lib/systemd/systemd",
                          check=False).returncode == 0
    command = ["/lib/systemd/systemd"] if has_systemd else ["sleep", "1200"]
    _podman("run", "-d", "--name", name, "--network", "host", "--systemd=always", target_image, *command)
    yield name
    _podman("rm", "-f", "-t", "2", name, check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Run:
    rc: int
    stats: dict
    tasks: dict[str, dict]  # task name -> the host's result
    output: str
    seconds: float


class Deployment:
    def __init__(self, playbook: str, container: str, tmp: Path, extra: dict) -> None:
        self.playbook = playbook
        self.container = container
        self.inventory = tmp / "hosts"
        self.inventory.write_text(
            "[gpu_invokers]\n"
            f"node0 ansible_connection=containers.podman.podman ansible_host={container} "
            "ansible_python_interpreter=/usr/bin/python3 "
            "ansible_podman_extra_args='--cgroup-manager=cgroupfs --runtime runc'\n"
        )
        self.vars_file = tmp / "vars.json"
        self.vars_file.write_text(json.dumps(extra))

    def run(self, mode: str = "deploy") -> Run:
        env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
                   ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1")
        started = time.monotonic()
        proc = subprocess.run(
            [self.playbook, "-i", str(self.inventory), str(ANSIBLE_DIR / "gpu-invoker.yml"),
             "-e", f"@{self.vars_file}", "-e", f"mode={mode}"],
            capture_output=True, text=True, env=env, cwd=ANSIBLE_DIR, timeout=600,
        )
        try:
            report = json.loads(proc.stdout[proc.stdout.index("{"):])
        except ValueError:
            pytest.fail(f"ansible-playbook printed no JSON report:\n{proc.stdout}\n{proc.stderr}")
        # Task names come as "role : name"; the names are unique across the roles.
        tasks = {t["task"]["name"].split(" : ", 1)[-1]: t["hosts"].get("node0", {})
                 for p in report["plays"] for t in p["tasks"]}
        run = Run(proc.returncode, report["stats"]["node0"], tasks, proc.stdout + proc.stderr,
                  time.monotonic() - started)
        print(f"ansible-playbook mode={mode}: rc={run.rc} {run.stats} in {run.seconds:.1f} s")
        return run

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _podman("exec", self.container, *argv, check=check)


def parse_unit(text: str) -> dict[str, list[str]]:
    """The [Service] section of a systemd unit: key -> values in order."""
    section, service = "", {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            service.setdefault(key, []).append(value)
    return service


def parse_environment_file(text: str) -> dict[str, str]:
    """systemd EnvironmentFile syntax as the template writes it: KEY="value" with \\ escapes."""
    env = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        env[key.strip()] = value
    return env


def start_from_unit(deployment: Deployment, unit_path: str) -> dict[str, str]:
    """What systemd would run: the unit's ExecStart as its User, in its WorkingDirectory, with
    its EnvironmentFile and Environment= lines. Returns the environment used."""
    service = parse_unit(deployment.exec("cat", unit_path).stdout)
    env: dict[str, str] = {}
    for path in service.get("EnvironmentFile", []):
        env.update(parse_environment_file(deployment.exec("cat", path.lstrip("-")).stdout))
    for assignment in service.get("Environment", []):
        for item in shlex.split(assignment):
            key, _, value = item.partition("=")
            env[key] = value
    (exec_start,) = service["ExecStart"]
    args = ["exec", "-d", "--user", service["User"][0], "--workdir", service["WorkingDirectory"][0]]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    _podman(*args, deployment.container, *shlex.split(exec_start))
    return env


def wait_for_ping(bootstrap: str, instance: int, enabled: bool, timeout_s: float = 90) -> PingMessage:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer("health", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=1000)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for record in consumer:
                ping = PingMessage.from_json(json.loads(record.value))
                if ping.instance.instance == instance and ping.is_enabled == enabled:
                    return ping
        raise AssertionError(f"no ping from invoker{instance} (enabled={enabled}) within {timeout_s} s")
    finally:
        consumer.close()


def _http(port: int, path: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    import requests

    response = requests.get(f"http://127.0.0.1:{port}{path}", auth=auth, timeout=5)
    return response.status_code, response.text


def test_playbook_deploys_a_gpu_invoker_that_pings_kafka_and_is_idempotent(
    ansible_playbook: str, target: str, wheelhouse: Path, kafka_bootstrap: str, couchdb_url: str,
    tmp_path: Path,
) -> None:
    port = _free_port()
    password = secrets.token_hex(8)
    couch = urlsplit(couchdb_url)
    deployment = Deployment(ansible_playbook, target, tmp_path, {
        "invoker_index_base": INDEX_BASE,
        "gpu_prereq_require_gpu": False,
        "gpu_invoker_backend": "process",
        "gpu_invoker_wheelhouse": str(wheelhouse),
        "gpu_invoker_http_port": port,
        "gpu_invoker_password": password,
        "kafka_connect_string": kafka_bootstrap,
        "db_protocol": couch.scheme, "db_host": couch.hostname, "db_port": couch.port,
        "gpu_invoker_extra_env": {"CONFIG_whisk_kafka_consumer_maxPollIntervalMs": "5000",
                                  "CONFIG_whisk_kafka_consumer_sessionTimeoutMs": "6000",
                                  "CONFIG_whisk_kafka_consumer_heartbeatIntervalMs": "1000"},
    })
    unit = "/etc/systemd/system/gpu-invoker3.service"

    first = deployment.run()
    assert first.rc == 0, first.output
    assert first.stats["failures"] == 0 and first.stats["unreachable"] == 0, first.output
    assert first.stats["changed"] > 0
    # No GPU in the container: every GPU-only task is skipped, by the gpu_prereq_gpus fact.
    gpu_only = [name for name in first.tasks
                if name.startswith("MPS |") or name in ("Preflight | driver new enough",
                                                        "Preflight | NVIDIA container toolkit")]
    assert len(gpu_only) >= 5
    for name in gpu_only:
        assert first.tasks[name].get("skipped") is True, name
    # The process backend needs no Docker and no images.
    assert first.tasks["Preflight | Docker engine reachable"].get("skipped") is True
    assert first.tasks["Images | wanted"].get("skipped") is True

    systemd = first.tasks["Invoker | service enabled and started"].get("skipped") is not True
    print(f"target {target}: service manager is {'systemd' if systemd else 'not systemd'}")
    if not systemd:
        assert first.tasks["Invoker | without systemd the unit is installed but not started"].get("msg")
        env = start_from_unit(deployment, unit)
        assert env["KAFKA_HOSTS"] == kafka_bootstrap
    else:
        state = deployment.exec("systemctl", "is-active", "gpu-invoker3.service", check=False)
        assert state.stdout.strip() == "active", deployment.exec(
            "journalctl", "-u", "gpu-invoker3", "--no-pager", check=False).stdout

    # The unit runs the installed invoker with the OpenWhisk environment.
    service = parse_unit(deployment.exec("cat", unit).stdout)
    assert service["ExecStart"] == ["/opt/owgpu/venv/bin/python -m invoker --id 3"]
    assert service["User"] == ["owgpu"]
    env = parse_environment_file(deployment.exec("cat", "/etc/owgpu/gpu-invoker3.env").stdout)
    assert env["CONFIG_whisk_invoker_resource_tags"] == "gpu"
    assert env["CONFIG_whisk_couchdb_port"] == str(couch.port)
    assert env["INVOKER_BACKEND"] == "process"
    assert (env["INVOKER_GPU_SLEEP_AFTER"], env["INVOKER_GPU_HELD_TAGS"]) == ("0 s", "256")
    assert deployment.exec("stat", "-c", "%a %U", "/etc/owgpu/gpu-invoker3.env").stdout.split() == ["640", "root"]

    started = time.monotonic()
    ping = wait_for_ping(kafka_bootstrap, instance=3, enabled=True)
    print(f"first ping from invoker3 after {time.monotonic() - started:.1f} s: {ping.to_json()}")
    assert tuple(ping.instance.tags) == ("gpu",)

    second = deployment.run()
    assert second.rc == 0, second.output
    assert second.stats["changed"] == 0, [n for n, r in second.tasks.items() if r.get("changed")]

    # Clean-up disables the invoker first: it answers, says it is disabled, and pings so.
    clean = deployment.run("clean")
    assert clean.rc == 0, clean.output
    assert clean.tasks["Clean | disable the invoker"]["status"] == 200
    assert wait_for_ping(kafka_bootstrap, instance=3, enabled=False).is_enabled is False
    assert deployment.exec("test", "-e", unit, check=False).returncode == 1
    assert deployment.exec("test", "-e", "/opt/owgpu/venv", check=False).returncode == 1
    if systemd:
        state = deployment.exec("systemctl", "is-active", "gpu-invoker3.service", check=False)
        assert state.stdout.strip() != "active"
    else:
        # Without systemd nobody stops the process: it stays up, disabled.
        status, body = _http(port, "/isEnabled", ("invoker.user", password))
        assert (status, json.loads(body)) == (200, {"enabled": False})
