"""Attacks from inside an action container, on podman through its Docker API (real containers of
the runtime image; OWGPU_RUNTIME_IMAGE picks a side build): reach a neighbour's /run and /init,
lift GPU limits through init parameters, fill the disk, a zip bomb, delete the MPS control pipe."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import threading
import uuid
import zipfile

import pytest
from services import RUNTIME_IMAGE

from invoker.cli import make_factory
from invoker.config import load_config
from invoker.containerpool.container import ContainerSpec
from invoker.containerpool.docker import DockerContainerFactory

HOSTILE = r'''
import json, socket
def attempt(host, port, path, body):
    try:
        s = socket.create_connection((host, port), timeout=3)
        s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n%s" % (path.encode(), len(body), body))
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer.decode(errors="replace")
    except OSError as error:
        return "refused: " + type(error).__name__
def main(args):
    host, port = args["host"], args["port"]
    run = json.dumps({"value": {"from": "hostile"}}).encode()
    init = json.dumps({"value": {"code": "def main(a):\n    return {'hijacked': True}", "main": "main"}}).encode()
    return {"run": attempt(host, port, "/run", run), "init": attempt(host, port, "/init", init)}
'''

ECHO = "def main(args):\n    return {'neighbour': 'fine', 'got': args}\n"


@pytest.fixture
def factory(docker_client):
    made = DockerContainerFactory(f"iso{uuid.uuid4().hex[:6]}", api_host="https://api.example:443",
                                  client=docker_client)
    yield made
    made.close()


def spec(factory: DockerContainerFactory, label: str, env: dict[str, str] | None = None) -> ContainerSpec:
    return ContainerSpec(name=f"{factory.name_prefix}_{uuid.uuid4().hex[:6]}", kind="python:3", image=RUNTIME_IMAGE,
                         memory_mb=192, cpu_shares=256, labels={"action": label}, env=env or {})


def init(container, code: str, env: dict | None = None, binary: bool = False):
    return container.initialize({"name": "a", "main": "main", "code": code, "binary": binary, "env": env or {}}, 60)


def run(container, args: dict) -> tuple[int | None, dict]:
    outcome = container.run({"value": args}, 60)
    return outcome.status, json.loads(outcome.body or b"null")


def bridge_address(docker_client, container) -> str:
    networks = docker_client.api.inspect_container(container.id)["NetworkSettings"]["Networks"]
    return next(n["IPAddress"] for n in networks.values() if n.get("IPAddress"))


def test_an_action_cannot_reach_a_neighbour_container(factory, docker_client):
    hostile, neighbour = factory.create(spec(factory, "evil")), factory.create(spec(factory, "victim"))
    try:
        assert init(neighbour, ECHO).ok
        assert init(hostile, HOSTILE).ok
        status, tried = run(hostile, {"host": bridge_address(docker_client, neighbour), "port": 8080})
        assert status == 200
        for path in ("run", "init"):
            assert tried[path].startswith("refused:"), tried  # no answer at all: the network drops it
        # The invoker still reaches both, and the neighbour runs its own action.
        assert run(neighbour, {"n": 1}) == (200, {"neighbour": "fine", "got": {"n": 1}})
    finally:
        hostile.destroy()
        neighbour.destroy()


def test_on_a_shared_network_the_neighbour_refuses_a_caller_without_its_secret(docker_client):
    """Where the operator puts containers on one network (--docker-network), traffic is not
    blocked: the runtime's secret check is what refuses the hostile action."""
    name = f"isoshared{uuid.uuid4().hex[:6]}"
    network = docker_client.networks.create(name, driver="bridge")
    factory = DockerContainerFactory(name, api_host="https://api.example:443", client=docker_client, network=name)
    hostile, neighbour = factory.create(spec(factory, "evil")), factory.create(spec(factory, "victim"))
    try:
        assert init(neighbour, ECHO).ok
        assert init(hostile, HOSTILE).ok
        status, tried = run(hostile, {"host": bridge_address(docker_client, neighbour), "port": 8080})
        assert status == 200
        for path in ("run", "init"):
            assert tried[path].startswith("HTTP/1.1 403") and "X-OW-Runtime-Secret" in tried[path], tried
        assert run(neighbour, {"n": 2}) == (200, {"neighbour": "fine", "got": {"n": 2}})
    finally:
        hostile.destroy()
        neighbour.destroy()
        factory.close()
        network.remove()


LIMITS = {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=1024MB",
          "CUDA_VISIBLE_DEVICES": "GPU-0000", "CUDA_MPS_PIPE_DIRECTORY": "/run/openwhisk-gpu-mps/pipe"}
READ_ENV = "import os\ndef main(args):\n    return {k: os.environ.get(k) for k in args['names']}\n"


def test_init_parameters_cannot_lift_the_limits_set_at_creation(factory):
    container = factory.create(spec(factory, "greedy", env=LIMITS))
    try:
        hostile = {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "100", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=80G",
                   "CUDA_VISIBLE_DEVICES": "0,1", "NVIDIA_VISIBLE_DEVICES": "all", "CUDA_MPS_PIPE_DIRECTORY": "/x"}
        assert init(container, READ_ENV, env=hostile).ok
        status, seen = run(container, {"names": [*LIMITS, "NVIDIA_VISIBLE_DEVICES", "OW_RUNTIME_SECRET"]})
        assert status == 200
        assert seen == {**LIMITS, "NVIDIA_VISIBLE_DEVICES": None, "OW_RUNTIME_SECRET": None}
    finally:
        container.destroy()


FILL = r'''
import errno, os
def main(args):
    out = {}
    try:
        with open("/usr/local/evil", "wb") as f:
            f.write(b"x")
        out["root"] = "written"
    except OSError as error:
        out["root"] = errno.errorcode[error.errno]
    written = 0
    path = os.path.join(args["dir"], "fill")
    try:
        with open(path, "wb") as f:
            chunk = b"\0" * (1 << 20)
            for _ in range(args["mb"]):
                f.write(chunk)
                written += 1
            f.flush()
        out["fill"] = "written"
    except OSError as error:
        out["fill"] = errno.errorcode[error.errno]
    if os.path.exists(path):
        os.unlink(path)
    out["mb"] = written
    with open("/proc/self/status") as f:
        out["CapEff"] = next(l.split()[1] for l in f if l.startswith("CapEff"))
    return out
'''


def log_size_limit(docker_client, container_id: str) -> str | None:
    """The log rotation size as the engine applied it (Docker: max-size; podman shows it only
    in its own API, as ``Size``)."""
    config = docker_client.api.inspect_container(container_id)["HostConfig"]["LogConfig"].get("Config") or {}
    if "max-size" in config:
        return config["max-size"].upper() + "B"
    url = f"{docker_client.api.base_url}/v4.0.0/libpod/containers/{container_id}/json"
    return docker_client.api.get(url).json()["HostConfig"]["LogConfig"].get("Size")


def test_an_action_cannot_write_the_image_or_past_its_tmpfs(factory, docker_client):
    container = factory.create(spec(factory, "filler"))
    neighbour = factory.create(spec(factory, "victim"))
    try:
        attrs = docker_client.api.inspect_container(container.id)["HostConfig"]
        assert attrs["ReadonlyRootfs"] is True
        assert {"/tmp", "/action"} <= set(attrs["Tmpfs"])
        assert log_size_limit(docker_client, container.id) == f"{factory.log_max_mb}MB"
        assert init(neighbour, ECHO).ok
        assert init(container, FILL).ok
        for directory in ("/tmp", "/action"):
            size = factory.tmpfs_size_mb(192)
            status, seen = run(container, {"dir": directory, "mb": 4 * size})
            assert status == 200, seen
            assert (seen.get("root"), seen.get("fill")) == ("EROFS", "ENOSPC"), seen
            assert seen["mb"] <= size
            assert int(seen["CapEff"], 16) == 0  # no capability left
        assert run(neighbour, {}) == (200, {"neighbour": "fine", "got": {}})
    finally:
        container.destroy()
        neighbour.destroy()


def test_a_zip_bomb_fails_init_with_a_clear_error_and_the_container_stays_usable(factory):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("__main__.py", "def main(args):\n    return {}\n")
        with archive.open("zeros.bin", "w", force_zip64=True) as f:
            for _ in range(2 * factory.tmpfs_size_mb(192)):
                f.write(b"\0" * (1 << 20))
    bomb = base64.b64encode(buffer.getvalue()).decode()
    container = factory.create(spec(factory, "bomb"))
    try:
        outcome = init(container, bomb, binary=True)
        assert outcome.status == 502
        assert "more than" in json.loads(outcome.body)["error"], outcome.body
        assert init(container, ECHO).ok
        assert run(container, {"x": 1})[0] == 200
    finally:
        container.destroy()


PIPE_CLIENT = r'''
import os, socket
def main(args):
    pipe = args["pipe"]
    out = {}
    for name in ("control", "server.sock"):
        try:
            os.unlink(os.path.join(pipe, name))
            out["unlink " + name] = "deleted"
        except OSError as error:
            out["unlink " + name] = error.strerror
    try:
        os.rename(os.path.join(pipe, "control"), os.path.join(pipe, "moved"))
        out["rename"] = "renamed"
    except OSError as error:
        out["rename"] = error.strerror
    fd = os.open(os.path.join(pipe, "control"), os.O_WRONLY | os.O_NONBLOCK)
    os.write(fd, b"client hello\n")
    os.close(fd)
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.path.join(pipe, "server.sock"))
    s.sendall(b"client hello\n")
    s.close()
    return out
'''


def test_an_mps_client_cannot_delete_the_control_pipe_but_still_uses_it(factory, tmp_path):
    """The MPS pipe directory as a GPU container gets it: owned by the clients' uid, mounted
    read-only. The FAKE stand-ins for MPS's pipes here are a FIFO and a UNIX socket the test
    serves (the real daemon is in the gpu-marked tests): the client writes to both, deletes neither."""
    pipe, logs = tmp_path / "pipe", tmp_path / "log"
    for directory in (pipe, logs):
        directory.mkdir()
        os.chown(directory, 10001, -1)
    tmp_path.chmod(0o755)
    os.mkfifo(pipe / "control")
    os.chmod(pipe / "control", 0o666)
    reader = os.open(pipe / "control", os.O_RDONLY | os.O_NONBLOCK)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(pipe / "server.sock"))
    os.chmod(pipe / "server.sock", 0o777)
    server.listen()
    received: list[bytes] = []
    accepter = threading.Thread(target=lambda: received.append(server.accept()[0].recv(100)), daemon=True)
    accepter.start()
    gpu_spec = ContainerSpec(name=f"{factory.name_prefix}_{uuid.uuid4().hex[:6]}", kind="python:3-gpu",
                             image=RUNTIME_IMAGE, memory_mb=192, cpu_shares=256, labels={"action": "guest_mps"},
                             mounts=(str(pipe), str(logs)), user="10001:10001")
    container = factory.create(gpu_spec)
    try:
        assert init(container, PIPE_CLIENT).ok
        status, seen = run(container, {"pipe": str(pipe)})
        assert status == 200, seen
        assert set(seen.values()) == {"Read-only file system"}, seen
        assert (pipe / "control").exists() and (pipe / "server.sock").exists()
        assert os.read(reader, 100) == b"client hello\n"
        accepter.join(10)
        assert received == [b"client hello\n"]
    finally:
        container.destroy()
        os.close(reader)
        server.close()


def test_the_hardening_limits_come_from_the_invoker_options(docker_client):
    config = load_config(["--backend", "docker", "--docker-tmpfs-size", "64MB", "--docker-log-max-size", "5MB",
                          "--docker-storage-size", "1GB"], env={})
    factory = make_factory(config, {})
    try:
        kwargs = factory.container_config(spec(factory, "limits"), secret="s", network="n")
        assert kwargs["tmpfs"]["/tmp"].startswith("rw,nosuid,nodev,size=64m")  # 64 MB < half of 192 MB
        assert kwargs["log_config"]["config"]["max-size"] == "5m"
        assert kwargs["storage_opt"] == {"size": "1024m"}
        assert kwargs["environment"]["OW_RUNTIME_SECRET"] == "s" and kwargs["environment"]["OW_ZIP_MAX_BYTES"] == str(64 << 20)
        assert kwargs["cap_drop"] == ["ALL"] and kwargs["read_only"] is True and kwargs["network"] == "n"
    finally:
        factory.close()
