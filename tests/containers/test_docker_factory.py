"""The Docker backend's containers, checked from inside and through the engine: limits, no
privileges, no Docker socket, labels, loopback-only port, logs, pause, removal."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid

import pytest
from services import RUNTIME_IMAGE

from invoker.containerpool.container import ContainerSpec, ContainerStartError
from invoker.containerpool.docker import (
    LABEL_ACTION,
    LABEL_INVOKER,
    LABEL_KIND,
    DockerContainerFactory,
)

INSPECT = r'''
import json, os
def main(args):
    status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
    limit = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        if os.path.exists(path):
            limit = open(path).read().strip()
            break
    print("inspected", flush=True)
    return {"uid": os.getuid(), "CapEff": status["CapEff"].strip(), "NoNewPrivs": status["NoNewPrivs"].strip(),
            "memory_limit": limit, "docker_socket": any(os.path.exists(p) for p in
            ("/var/run/docker.sock", "/run/docker.sock", "/run/podman/podman.sock")),
            "api_host": os.environ.get("__OW_API_HOST")}
'''


@pytest.fixture
def factory(docker_client):
    made = DockerContainerFactory(f"test{uuid.uuid4().hex[:6]}", api_host="https://api.example:443",
                                  client=docker_client)
    yield made
    made.cleanup()


def spec(factory: DockerContainerFactory, memory_mb: int = 192, image: str = RUNTIME_IMAGE) -> ContainerSpec:
    return ContainerSpec(name=f"{factory.name_prefix}_{uuid.uuid4().hex[:6]}", kind="python:3", image=image,
                         memory_mb=memory_mb, cpu_shares=256, labels={"action": "guest_inspect"})


def init_and_run(container, code: str, args: dict | None = None) -> dict:
    init = container.initialize({"name": "inspect", "main": "main", "code": code, "binary": False, "env": {}}, 30)
    assert init.ok, init
    run = container.run({"value": args or {}}, 30)
    assert run.ok, run
    return json.loads(run.body)


def test_container_has_its_limits_and_no_privileges(factory, docker_client):
    container = factory.create(spec(factory, memory_mb=192))
    try:
        seen = init_and_run(container, INSPECT)
        assert seen["uid"] != 0  # the image's unprivileged user
        assert seen["NoNewPrivs"] == "1"
        assert int(seen["CapEff"], 16) == 0  # a non-root user keeps no effective capability
        assert seen["docker_socket"] is False
        assert seen["api_host"] == "https://api.example:443"
        assert seen["memory_limit"] is not None and int(seen["memory_limit"]) == 192 * 1024 * 1024

        attrs = docker_client.api.inspect_container(container.id)
        host_config = attrs["HostConfig"]
        assert host_config["Memory"] == 192 * 1024 * 1024
        assert host_config["CpuShares"] == 256
        assert host_config.get("Privileged") is False
        assert not any("docker.sock" in b or "podman.sock" in b for b in host_config.get("Binds") or [])
        labels = attrs["Config"]["Labels"]
        assert labels[LABEL_INVOKER] == factory.name_prefix
        assert labels[LABEL_ACTION] == "guest_inspect" and labels[LABEL_KIND] == "python:3"
        # Reached through a port published on the loopback address only.
        (binding,) = attrs["NetworkSettings"]["Ports"]["8080/tcp"]
        assert binding["HostIp"] == "127.0.0.1"
        assert (container.client.host, container.client.port) == ("127.0.0.1", int(binding["HostPort"]))
    finally:
        container.destroy()


def test_logs_come_from_the_container_streams_up_to_the_sentinels(factory):
    container = factory.create(spec(factory))
    try:
        code = ("import sys\ndef main(args):\n    print('out', args['n'])\n    sys.stdout.write('no newline')\n"
                "    print('err', args['n'], file=sys.stderr)\n    return {}\n")
        container.logs.discard()  # /init's lines
        init_and_run(container, code, {"n": 7})
        collected = container.logs.collect(1 << 20, wait_for_sentinels=True, total_timeout_s=10)
        assert not collected.incomplete and not collected.truncated
        lines = collected.lines
        assert any(line.endswith("stdout: out 7") for line in lines), lines
        assert any(line.endswith("stdout: no newline") for line in lines), lines
        assert any(line.endswith("stderr: err 7") for line in lines), lines
        assert not any("XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX" in line for line in lines)
        # Lines carry the engine's timestamps, not the invoker's clock.
        assert all(line[:4].isdigit() and "T" in line[:20] for line in lines)
    finally:
        container.destroy()


def test_pause_resume_and_destroy_through_the_engine(factory, docker_client):
    container = factory.create(spec(factory))
    init_and_run(container, "def main(args):\n    return args\n")
    container.suspend()
    assert docker_client.api.inspect_container(container.id)["State"]["Status"] == "paused"
    container.resume()
    run = container.run({"value": {"again": True}}, 10)
    assert run.ok and json.loads(run.body) == {"again": True}
    container.destroy()
    assert not docker_client.containers.list(all=True, filters={"id": container.id})
    assert not container.is_alive()
    container.destroy()  # idempotent


def test_a_dead_container_is_noticed(factory):
    container = factory.create(spec(factory))
    init_and_run(container, "def main(args):\n    return args\n")
    container.handle.kill()
    deadline = time.monotonic() + 10
    while container.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not container.is_alive()
    assert not container.run({"value": {}}, 5).ok
    container.destroy()


def test_memory_limit_is_enforced(factory, docker_client):
    """The kernel kills an action that outgrows its memory limit. (Whether the engine then says
    OOMKilled depends on it: podman on cgroup v1 does not, and the activation reads as an
    abnormal run there rather than as exhausted memory.)"""
    container = factory.create(spec(factory, memory_mb=64))
    try:
        init = container.initialize({"name": "hog", "main": "main", "binary": False, "env": {},
                                     "code": "def main(args):\n    b = bytearray(512 << 20)\n    return {}\n"}, 30)
        assert init.ok
        run = container.run({"value": {}}, 30)
        assert not run.ok and run.connection_lost
        deadline = time.monotonic() + 10
        while container.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        state = docker_client.api.inspect_container(container.id)["State"]
        assert state["Status"] == "exited" and state["ExitCode"] == 137  # SIGKILL from the OOM killer
        assert container.was_oom_killed() == bool(state.get("OOMKilled"))
    finally:
        container.destroy()


def test_missing_image_is_a_start_error_and_leaves_nothing(factory, docker_client):
    missing = f"localhost/owgpu/no-such-image:{uuid.uuid4().hex[:6]}"
    assert factory.has_image(RUNTIME_IMAGE) and not factory.has_image(missing)
    with pytest.raises(ContainerStartError, match="not on this node"):
        factory.create(spec(factory, image=missing))
    assert not docker_client.containers.list(all=True, filters={"label": f"{LABEL_INVOKER}={factory.name_prefix}"})


def test_cleanup_removes_only_this_invokers_containers(factory, docker_client):
    other = DockerContainerFactory(f"other{uuid.uuid4().hex[:6]}", client=docker_client)
    mine = factory.create(spec(factory))
    theirs = other.create(spec(other))
    try:
        factory.cleanup()
        assert not docker_client.containers.list(all=True, filters={"id": mine.id})
        assert docker_client.containers.list(all=True, filters={"id": theirs.id})
    finally:
        theirs.destroy()
        mine.destroy()


def test_a_gpu_container_asks_for_its_gpu_and_the_mps_directories(factory):
    """What the engine is asked for a GPU container (podman ignores device requests, so this
    checks the request itself; the GPU machine runs the real thing in tests/gpu)."""
    cpu = factory.container_config(spec(factory))
    assert "device_requests" not in cpu and "ipc_mode" not in cpu and "volumes" not in cpu
    gpu_spec = ContainerSpec(name="g", kind="python:3-gpu", image=RUNTIME_IMAGE, memory_mb=2048, cpu_shares=512,
                             env={"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25"}, gpu="GPU-1234",
                             mounts=("/run/openwhisk-gpu-mps/pipe", "/run/openwhisk-gpu-mps/log"))
    config = factory.container_config(gpu_spec)
    (request,) = config["device_requests"]
    assert request["DeviceIDs"] == ["GPU-1234"] and request["Capabilities"] == [["gpu"]]
    assert config["environment"]["CUDA_VISIBLE_DEVICES"] == "GPU-1234"
    by_index = factory.container_config(dataclasses.replace(gpu_spec, gpu="3"))  # a declared GPU: no UUID
    assert "CUDA_VISIBLE_DEVICES" not in by_index["environment"]  # in the container it is not GPU 3
    assert config["volumes"] == {p: {"bind": p, "mode": "ro"} for p in gpu_spec.mounts}  # tests/isolation
    assert config["ipc_mode"] == "host"
    assert config["environment"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    assert "user" not in config  # the image's user unless the GPU layer says otherwise
    assert factory.container_config(dataclasses.replace(gpu_spec, user="10001:10001"))["user"] == \
        "10001:10001"
    # Everything a CPU container gets, a GPU container gets too.
    for key in ("mem_limit", "cap_drop", "security_opt", "pids_limit", "labels", "ports"):
        assert key in config
    assert config["mem_limit"] == "2048m" and config["cap_drop"] == ["ALL"]


MPS_CLIENT = r"""
import os
def main(args):
    # What an MPS client in a container needs: the pipe directory (read-only: it opens the
    # daemon's pipes, tests/isolation), and the host's shared memory (IPC namespace).
    with open(os.path.join(args["pipe"], "written-by-host")) as f:
        seen = f.read()
    return {"uid": os.getuid(), "gid": os.getgid(), "ipc": os.readlink("/proc/self/ns/ipc"), "seen": seen}
"""


def test_a_gpu_container_under_mps_runs_as_the_mps_user_with_the_directories(factory, tmp_path, docker_client):
    """Run for real: user forced over the image's, the MPS directories bound (read-only),
    the host IPC namespace. (No GPU is asked for here: podman ignores device requests.)"""
    pipe, logs = tmp_path / "pipe", tmp_path / "log"
    for directory in (pipe, logs):
        directory.mkdir()
        os.chown(directory, 10002, -1)  # what the GPU layer does (tests/gpu), as another uid than the image's
    tmp_path.chmod(0o755)
    (pipe / "written-by-host").write_text("from the host")
    mps_spec = ContainerSpec(name=f"{factory.name_prefix}_{uuid.uuid4().hex[:6]}", kind="python:3-gpu",
                             image=RUNTIME_IMAGE, memory_mb=192, cpu_shares=256, labels={"action": "guest_mps"},
                             mounts=(str(pipe), str(logs)), user="10002:10002")
    container = factory.create(mps_spec)
    try:
        seen = init_and_run(container, MPS_CLIENT, {"pipe": str(pipe)})
        assert (seen["uid"], seen["gid"]) == (10002, 10002)
        assert seen["seen"] == "from the host"
        assert seen["ipc"] == os.readlink("/proc/self/ns/ipc")  # the host's, shared with the MPS server
        assert docker_client.api.inspect_container(container.id)["Config"]["User"] == "10002:10002"
    finally:
        container.destroy()
