"""Attacks on the action runtime itself (owruntime), run as a process: a caller without the
container's secret, GPU limits set through init parameters, archive bombs."""

from __future__ import annotations

import base64
import io
import json
import zipfile

from runtime_support import init_payload, make_zip, run_payload

SECRET = "s3cret-for-this-container"
HEADER = {"X-OW-Runtime-Secret": SECRET}
ECHO_ENV = """
import os
def main(args):
    return {k: os.environ.get(k) for k in args["names"]}
"""


def test_a_caller_without_the_secret_can_neither_init_nor_run(start_runtime):
    runtime = start_runtime({"OW_RUNTIME_SECRET": SECRET})
    for headers in ({}, {"X-OW-Runtime-Secret": "guess"}, {"X-OW-Runtime-Secret": ""}):
        status, body = runtime.post("/init", init_payload(ECHO_ENV), headers=headers)
        assert status == 403 and "X-OW-Runtime-Secret" in body["error"], (headers, body)
        status, body = runtime.post("/run", run_payload({"names": ["HOME"]}), headers=headers)
        assert status == 403, body
    # The refused /init did not take the container: its invoker still initialises it.
    assert runtime.post("/init", init_payload(ECHO_ENV), headers=HEADER).status == 200
    status, body = runtime.post("/run", run_payload({"names": ["OW_RUNTIME_SECRET"]}), headers=HEADER)
    assert (status, body) == (200, {"OW_RUNTIME_SECRET": None})  # the action does not see the secret
    assert runtime.post("/run", run_payload({"names": []})).status == 403


def test_without_a_secret_the_runtime_answers_anyone_as_before(start_runtime):
    runtime = start_runtime()
    assert runtime.init(init_payload(ECHO_ENV)).status == 200
    assert tuple(runtime.run(run_payload({"names": ["HOME"]})))[0] == 200


GPU_VARIABLES = {
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=1024MB",
    "CUDA_MPS_PIPE_DIRECTORY": "/run/openwhisk-gpu-mps/pipe",
    "CUDA_VISIBLE_DEVICES": "GPU-1111",
    "NVIDIA_VISIBLE_DEVICES": "GPU-1111",
    "OW_GPU_PREWARM": "torch",
    "OW_ZIP_MAX_BYTES": "1000000",
}


def test_init_parameters_cannot_lift_gpu_limits(start_runtime):
    runtime = start_runtime(GPU_VARIABLES)
    hostile = {name: "100" if "PERCENT" in name else "0=80G" if "LIMIT" in name else "/tmp/elsewhere"
               for name in GPU_VARIABLES} | {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "MY_SETTING": "kept"}
    assert runtime.init(init_payload(ECHO_ENV, env=hostile)).status == 200
    status, seen = runtime.run(run_payload({"names": [*hostile]}))
    assert status == 200
    assert seen == {**GPU_VARIABLES, "CUDA_DEVICE_ORDER": None, "MY_SETTING": "kept"}
    _, err = runtime.stop()
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" in err  # the action's log says what was ignored


def _zip_bomb(entries: dict[str, int]) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("__main__.py", "def main(args):\n    return {}\n")
        for name, size in entries.items():
            with archive.open(name, "w", force_zip64=True) as f:
                chunk = b"\0" * (1 << 20)
                for _ in range(size >> 20):
                    f.write(chunk)
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_zip_bomb_fails_init_with_a_clear_error(start_runtime):
    runtime = start_runtime({"OW_ZIP_MAX_BYTES": str(64 << 20)})
    bomb = _zip_bomb({"zeros.bin": 256 << 20})  # ~250 KB compressed, 256 MiB expanded
    assert len(bomb) < 1 << 20
    status, body = runtime.init(init_payload(bomb, binary=True))
    assert status == 502 and "more than 67108864 bytes" in body["error"], body
    # The container is still usable for a proper action.
    ok = make_zip({"__main__.py": "def main(args):\n    return {'ok': True}\n"})
    assert runtime.init(init_payload(ok, binary=True)).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, {"ok": True})


def test_a_zip_with_too_many_files_fails_init(start_runtime):
    runtime = start_runtime({"OW_ZIP_MAX_FILES": "100"})
    many = make_zip({"__main__.py": "def main(args):\n    return {}\n", **{f"f{i}": "" for i in range(200)}})
    status, body = runtime.init(init_payload(many, binary=True))
    assert status == 502 and "more than 100 entries" in body["error"], body
    assert json.dumps(body)  # an OpenWhisk error body, {"error": ...}
