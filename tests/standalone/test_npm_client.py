"""Standalone mode driven by the real ``openwhisk`` npm client: the full action life
cycle with a ``python:3`` and a ``python:3-gpu`` action, and OpenWhisk's error answers."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from standalone_support import Standalone

FLOW = Path(__file__).with_name("client_flow.js")
TRANSID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def transcript(standalone: Standalone, openwhisk_client: None) -> dict:
    done = subprocess.run(["node", str(FLOW)], env=standalone.node_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{done.stderr}\nserver output:\n" + "\n".join(standalone.output[-30:])
    return json.loads(done.stdout)


def annotations(entity: dict) -> dict:
    return {a["key"]: a["value"] for a in entity["annotations"]}


def test_create_answers_the_action_as_openwhisk_does(transcript: dict) -> None:
    created = transcript["create"]
    assert created["namespace"] == "guest" and created["name"] == "hello"
    assert created["version"] == "0.0.1" and created["publish"] is False
    assert created["exec"]["kind"] == "python:3" and created["exec"]["binary"] is False
    assert "def main(args)" in created["exec"]["code"]
    assert created["parameters"] == [{"key": "salutation", "value": "Hi"}]
    assert annotations(created)["description"] == "a test action"
    assert annotations(created)["exec"] == "python:3"
    assert created["limits"] == {"timeout": 20000, "memory": 128, "logs": 10, "concurrency": 1}
    assert isinstance(created["updated"], int)


def test_get_and_list(transcript: dict) -> None:
    assert transcript["get"]["exec"]["code"] == transcript["create"]["exec"]["code"]
    assert transcript["get"]["limits"]["timeout"] == 20000
    listed = {a["name"]: a for a in transcript["list"]}
    assert set(listed) == {"hello"}
    assert listed["hello"]["exec"] == {"binary": False}  # a list entry carries no code
    assert listed["hello"]["namespace"] == "guest"


def test_blocking_invoke_merges_parameters_and_returns_the_result(transcript: dict) -> None:
    assert transcript["invokeResult"] == {"greeting": "Hi, Ada!", "action": "/guest/hello"}
    activation = transcript["invokeBlocking"]
    assert re.fullmatch(r"[0-9a-f]{32}", activation["activationId"])
    assert activation["response"]["status"] == "success" and activation["response"]["success"] is True
    assert activation["response"]["result"]["greeting"] == "Hi, Grace!"
    assert annotations(activation)["kind"] == "python:3"
    assert activation["duration"] >= 0


def test_non_blocking_invoke_then_activation_result_and_logs(transcript: dict) -> None:
    activation_id = transcript["invokeNonBlocking"]["activationId"]
    assert set(transcript["invokeNonBlocking"]) == {"activationId"}
    record = transcript["activation"]
    assert record["activationId"] == activation_id and record["name"] == "hello"
    assert record["response"]["result"]["greeting"] == "Hi, Alan!"
    assert transcript["activationResult"]["result"]["greeting"] == "Hi, Alan!"
    assert transcript["activationResult"]["success"] is True
    logs = transcript["activationLogs"]["logs"]
    assert any("stdout: hello log line for Alan" in line for line in logs), logs
    listed = [a["activationId"] for a in transcript["activationList"]]
    assert activation_id in listed and transcript["invokeBlocking"]["activationId"] in listed
    assert all(a["name"] == "hello" for a in transcript["activationList"])


def test_update_replaces_the_code_and_moves_the_version(transcript: dict) -> None:
    assert transcript["update"]["version"] == "0.0.2"
    assert "v2 says hi" in transcript["update"]["exec"]["code"]
    # Parameters the update did not give are kept (updateWhiskAction).
    assert transcript["update"]["parameters"] == [{"key": "salutation", "value": "Hi"}]
    assert transcript["invokeUpdated"] == {"greeting": "v2 says hi to Edsger"}


def test_gpu_kind_runs_on_the_cpu_without_a_gpu_and_says_so(transcript: dict) -> None:
    assert transcript["gpuCreate"]["exec"]["kind"] == "python:3-gpu"
    activation = transcript["gpuInvoke"]
    assert activation["response"]["result"]["sum"] == 8.0
    assert annotations(activation)["kind"] == "python:3-gpu"
    if activation["response"]["result"]["device"] == "cpu":
        assert any("running on the CPU" in line for line in transcript["gpuLogs"]), transcript["gpuLogs"]


def test_start_up_says_where_gpu_kinds_run(standalone: Standalone) -> None:
    kinds = next(line for line in standalone.output if line.strip().startswith("kinds:"))
    assert "python:3:" in kinds and "python:3-gpu:" in kinds
    gpus = next(line for line in standalone.output if line.strip().startswith("GPUs:"))
    if "none" in gpus:
        assert "python:3-gpu: CPU (no GPU present)" in kinds


def test_errors_have_openwhisk_status_codes_and_bodies(transcript: dict) -> None:
    expected = {
        "duplicate": (409, "resource already exists"),
        "wrongKey": (401, "The supplied authentication is invalid"),
        "unknownAction": (404, "The requested resource does not exist."),
        "getDeleted": (404, "The requested resource does not exist."),
        "tooLarge": (413, None),
        "unknownKind": (400, None),
    }
    for step, (status, message) in expected.items():
        answer = transcript[step]
        assert answer.get("statusCode") == status, (step, answer)
        assert set(answer["error"]) == {"error", "code"}, (step, answer)
        assert TRANSID.match(answer["error"]["code"]), (step, answer)
        if message is not None:
            assert answer["error"]["error"] == message, (step, answer)
    assert re.fullmatch(r"Request larger than allowed: \d+ > 1048576 bytes\.", transcript["tooLarge"]["error"]["error"])
    assert transcript["unknownKind"]["error"]["error"].startswith(
        "The request content was malformed:\nkind 'python:2.7-gpu' not in Set(")


def test_delete_answers_the_action_and_removes_it(transcript: dict) -> None:
    assert transcript["delete"]["name"] == "hello" and transcript["delete"]["version"] == "0.0.2"
    assert transcript["deleteGpu"]["name"] == "gpu-sum"
    assert transcript["listAfter"] == []
