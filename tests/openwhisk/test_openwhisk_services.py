"""OpenWhisk's own controller, built from a checkout by tools/openwhisk/build.sh, in front of this invoker.

Needs ``OPENWHISK_CHECKOUT`` (an apache/openwhisk checkout at the commit controller_patch/ pins),
a JDK and Maven; the first build takes about 10 minutes on 2 cores, later runs reuse it. Without
``OPENWHISK_CHECKOUT`` the module skips, except the two checks of what build.sh says when the
checkout is missing or wrong.

    OPENWHISK_CHECKOUT=/path/to/openwhisk .venv/bin/pytest tests/openwhisk -v
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tools" / "openwhisk" / "build.sh"
CHECKOUT = os.environ.get("OPENWHISK_CHECKOUT")
SKIP_REASON = ("OPENWHISK_CHECKOUT is not set: these tests build and run OpenWhisk's controller from an "
               "apache/openwhisk checkout (tools/openwhisk/README.md)")
needs_checkout = pytest.mark.skipif(not CHECKOUT, reason=SKIP_REASON)
GUEST = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP"


def _build_sh(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(BUILD), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


# -- what build.sh says without a checkout: runs everywhere, CI included ---------------------------

def test_build_names_what_is_missing_without_a_checkout() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENWHISK_CHECKOUT"}
    proc = _build_sh(env=env)
    assert proc.returncode == 1
    assert "OPENWHISK_CHECKOUT is not set" in proc.stderr
    assert "1fae641a2b30bccb7ddc69d2d215866d899a8510" in proc.stderr  # the commit to check out


def test_build_refuses_a_folder_that_is_not_an_openwhisk_checkout(tmp_path: Path) -> None:
    (tmp_path / "common" / "scala" / "src" / "main" / "scala").mkdir(parents=True)
    proc = _build_sh(env={**os.environ, "OPENWHISK_CHECKOUT": str(tmp_path)})
    assert proc.returncode == 1
    assert "is not an OpenWhisk checkout" in proc.stderr
    assert "core/controller/src/main/scala" in proc.stderr
    proc = _build_sh(env={**os.environ, "OPENWHISK_CHECKOUT": str(tmp_path / "nowhere")})
    assert proc.returncode == 1 and "is not a directory" in proc.stderr


# -- with a checkout --------------------------------------------------------------------------------

def _run_module():
    spec = importlib.util.spec_from_file_location("openwhisk_run", REPO / "tools" / "openwhisk" / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["openwhisk_run"] = module
    spec.loader.exec_module(module)
    return module


def _build(*args: str) -> Path:
    if not (shutil.which("java") and shutil.which("mvn")):
        pytest.fail("java and mvn are needed to build OpenWhisk (apt-get install openjdk-17-jdk-headless maven)")
    proc = _build_sh(*args, env=dict(os.environ), timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    variant = "patched" if args else "plain"
    out = Path(os.environ.get("OW_BUILD_DIR") or REPO / ".cache" / "openwhisk" / "build") / variant
    for service in ("controller", "scheduler", "invoker"):
        classpath = (out / f"{service}.classpath").read_text().strip().split(":")
        assert all(Path(entry).exists() for entry in classpath), service
        assert (out / "bin" / service).is_file()
    return out


@needs_checkout
def test_build_makes_each_services_classpath_and_a_rebuild_is_skipped() -> None:
    _build()
    started = time.monotonic()
    proc = _build_sh(env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is up to date" in proc.stdout
    assert time.monotonic() - started < 60


def _invoke(api: str, name: str, params: dict) -> dict:
    reply = requests.post(f"{api}/api/v1/namespaces/_/actions/{name}?blocking=true", json=params,
                          auth=tuple(GUEST.split(":")), timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _create(api: str, name: str, kind: str, code: str, annotations: list | None = None) -> None:
    body = {"exec": {"kind": kind, "code": code}, "annotations": annotations or []}
    reply = requests.put(f"{api}/api/v1/namespaces/_/actions/{name}?overwrite=true", json=body,
                         auth=tuple(GUEST.split(":")), timeout=30)
    assert reply.status_code == 200, reply.text


def _wait_healthy(api: str, count: int, timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    state: dict = {}
    while time.monotonic() < deadline:
        state = requests.get(f"{api}/invokers", timeout=10).json()
        if len(state) == count and all(v == "up" for v in state.values()):
            return state
        time.sleep(1)
    raise AssertionError(f"invokers not all up after {timeout_s} s: {state}")


CODE = "def main(args):\n    return {'greeting': 'hello ' + args.get('name', 'stranger')}\n"


@pytest.fixture(scope="module")
def classic_patched() -> Iterator[object]:
    """Broker, pouchdb, the patched controller (classic balancer) and two of our invokers, one tagged gpu."""
    if not CHECKOUT:
        pytest.skip(SKIP_REASON)
    _build("--with-controller-patch")
    run = _run_module()
    deployment = run.Deployment(Path(CHECKOUT), "classic", "patched", ["cpu", "gpu"])
    deployment.start()
    try:
        yield deployment
    finally:
        deployment.stop()


@needs_checkout
def test_controller_answers_ping_and_sees_both_invokers_healthy(classic_patched) -> None:
    api = classic_patched.api_host
    assert requests.get(f"{api}/ping", timeout=10).text == "pong"
    assert _wait_healthy(api, 2) == {"invoker0": "up", "invoker1": "up"}


@needs_checkout
def test_gpu_work_lands_on_the_gpu_invoker_and_cpu_work_off_it(classic_patched) -> None:
    api = classic_patched.api_host
    _wait_healthy(api, 2)
    _create(api, "cpu_hello", "python:3.11", CODE)
    _create(api, "gpu_hello", "python:3-gpu", CODE)
    _create(api, "annotated_hello", "python:3.11", CODE, [{"key": "invoker-resources", "value": ["gpu"]}])
    placed = {}
    for name in ("cpu_hello", "gpu_hello", "annotated_hello"):
        ids = []
        for _ in range(3):
            activation = _invoke(api, name, {"name": "ow"})
            assert activation["response"]["result"] == {"greeting": "hello ow"}, activation
            ids.append(activation["activationId"])
        log = classic_patched.controller.log_path.read_text(errors="replace")
        placed[name] = {re.search(rf"posting topic '(invoker\d+)' with activation id '{i}'", log).group(1)
                        for i in ids}
    assert placed == {"cpu_hello": {"invoker0"}, "gpu_hello": {"invoker1"}, "annotated_hello": {"invoker1"}}


# -- FPC: OpenWhisk's scheduler in front of this project's invokers (--scheduler fpc) ----------------

FPC_FLOW = Path(__file__).with_name("fpc_client_flow.js")
NODE_MODULES = Path(os.environ.get("OW_NODE_MODULES") or REPO / ".cache" / "node" / "node_modules")


def _npm_flow(deployment, *args: str, timeout: float = 300) -> dict:
    """fpc_client_flow.js with the `openwhisk` npm client against the deployment's controller."""
    if not (NODE_MODULES / "openwhisk").is_dir():
        pytest.fail(f"the openwhisk npm client is not under {NODE_MODULES}: run ./dev setup (or set OW_NODE_MODULES)")
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES), "__OW_API_HOST": deployment.api_host,
           "__OW_API_KEY": deployment.keys["guest"]}
    done = subprocess.run(["node", str(FPC_FLOW), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    return json.loads(done.stdout)


def _placements(deployment, action: str) -> list[str]:
    """The invokers the scheduler sent creations of ``guest/action`` to (ContainerManager's log)."""
    log = deployment.scheduler.log_path.read_text(errors="replace")
    return re.findall(rf"posted creationId: [0-9a-f]+ for guest/guest/{re.escape(action)}@\S+ to (invoker\d+)", log)


@pytest.fixture(scope="module")
def fpc_deployment() -> Iterator[object]:
    """Broker, pouchdb, etcd, OpenWhisk's scheduler and FPC controller, and two of our invokers with
    --scheduler fpc: invoker0 untagged, invoker1 tagged gpu with a declared GPU."""
    if not CHECKOUT:
        pytest.skip(SKIP_REASON)
    _build()
    run = _run_module()
    deployment = run.Deployment(Path(CHECKOUT), "fpc", "plain", ["cpu", "gpu"])
    deployment.start()
    try:
        yield deployment
    finally:
        deployment.stop()


@needs_checkout
def test_fpc_gpu_action_lands_on_the_gpu_invoker_and_cpu_action_on_the_cpu_invoker(fpc_deployment) -> None:
    """The npm client creates a python:3-gpu action annotated invoker-resources ["gpu"] and a
    python:3.11 action; OpenWhisk's FPC scheduler creates their containers on invoker1 (tagged gpu)
    and invoker0; activation get, result, logs and list; an action's error result."""
    assert _wait_healthy(fpc_deployment.api_host, 2) == {"invoker0": "up", "invoker1": "up"}
    t = _npm_flow(fpc_deployment)
    assert t["gpuInvoke"]["response"]["result"] == {"action": "/guest/gpu-where", "cuda_visible_devices": "0", "sum": 3}
    assert t["cpuInvoke"]["response"]["result"] == {"action": "/guest/cpu-where", "cuda_visible_devices": None,
                                                   "sum": 11}
    assert t["gpuInvokeWarm"]["sum"] == 6 and t["cpuInvokeWarm"]["sum"] == 7
    assert set(_placements(fpc_deployment, "gpu-where")) == {"invoker1"}
    assert set(_placements(fpc_deployment, "cpu-where")) == {"invoker0"}
    activation_id = t["nonBlocking"]["activationId"]
    assert t["activation"]["activationId"] == activation_id
    assert t["activation"]["response"]["result"]["sum"] == 10
    assert t["activationResult"]["result"]["sum"] == 10 and t["activationResult"]["success"] is True
    assert any("log line from /guest/cpu-where" in line for line in t["activationLogs"]["logs"])
    assert activation_id in {a["activationId"] for a in t["activationList"]}
    # {"error": ...} from an action: a blocking invoke answers 502 with the activation
    assert t["errorResult"]["statusCode"] == 502
    assert t["errorResult"]["error"]["response"]["status"] == "application error"
    assert t["errorResult"]["error"]["response"]["result"] == {"error": "asked to fail"}


@needs_checkout
def test_fpc_gpu_invoker_stopped_and_restarted(fpc_deployment) -> None:
    """The GPU invoker stops (its etcd lease revoked, its keys gone) and starts again: it registers
    again and the scheduler creates the GPU action's container on it again."""
    gpu = next(inv for inv in fpc_deployment.our_invokers if inv.kind == "gpu")
    _npm_flow(fpc_deployment, "gpu-only")  # creates the action when the test above did not run
    before = len(_placements(fpc_deployment, "gpu-where"))
    gpu.stop()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = requests.get(f"{fpc_deployment.api_host}/invokers", timeout=10).json()
        if state.get("invoker1") != "up":
            break
        time.sleep(1)
    assert state.get("invoker1") != "up", state
    # a GPU activation while no GPU invoker is up: it waits in the scheduler's queue (strict
    # invoker-resources: never on the CPU invoker) and runs once the GPU invoker is back
    waiting = _npm_flow(fpc_deployment, "gpu-async")["gpuAsync"]["activationId"]
    time.sleep(2)
    gpu.start()
    _wait_healthy(fpc_deployment.api_host, 2)
    deadline = time.monotonic() + 90
    record = None
    while time.monotonic() < deadline:
        reply = requests.get(f"{fpc_deployment.api_host}/api/v1/namespaces/_/activations/{waiting}",
                             auth=tuple(GUEST.split(":")), timeout=10)
        if reply.status_code == 200:
            record = reply.json()
            break
        time.sleep(1)
    assert record is not None, f"activation {waiting} queued while the GPU invoker was down never ended"
    assert record["response"]["result"].get("cuda_visible_devices") == "0", record
    t = _npm_flow(fpc_deployment, "gpu-only")
    assert t["gpuInvoke"]["response"]["result"]["cuda_visible_devices"] == "0", t
    assert _placements(fpc_deployment, "gpu-where")[before:] and \
        set(_placements(fpc_deployment, "gpu-where")[before:]) == {"invoker1"}


@needs_checkout
def test_fpc_init_failure_error_timeout_sequence_update_and_delete(fpc_deployment) -> None:
    """Through OpenWhisk's FPC scheduler with the npm client: an action whose /init fails is answered
    at once with a developer error (and its logs), a raising action and a timeout with theirs; a
    sequence of the GPU action and a CPU action; a new revision; a deleted action."""
    _npm_flow(fpc_deployment, "gpu-only")  # gpu-where exists
    requests.put(f"{fpc_deployment.api_host}/api/v1/namespaces/_/actions/cpu-where?overwrite=true",
                 json={"exec": {"kind": "python:3.11", "code": CODE}}, auth=tuple(GUEST.split(":")), timeout=30)
    t = _npm_flow(fpc_deployment, "extra")
    init = t["initFailure"]
    assert init["statusCode"] == 502, init
    assert init["error"]["response"]["status"] == "action developer error"
    assert init["error"]["response"]["result"] == {
        "error": "The action failed to generate or locate a binary. See logs for details."}
    assert "initTime" in {a["key"] for a in init["error"]["annotations"]}
    assert t["initFailureMs"] < 20000  # not the queue's 60 s retention
    assert t["raises"]["error"]["response"]["status"] == "application error"
    assert t["raises"]["error"]["response"]["result"] == {"error": "boom"}
    timeout = t["timeout"]["error"]
    assert timeout["response"]["status"] == "action developer error"
    assert {"key": "timeout", "value": True} in timeout["annotations"]
    assert t["sequence"]["response"]["success"] is True and len(t["sequence"]["logs"]) == 2
    assert t["updated"] == {"version": 2, "sum": 8}
    assert t["invokeDeleted"]["statusCode"] == 404
    assert set(_placements(fpc_deployment, "broken")) == {"invoker0"}
