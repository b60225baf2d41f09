"""The invoker end to end: real broker, real CouchDB API, real action code.

What a controller sees (the acks of ``InvokerReactive.scala``, transid echoed) and
what lands in the activations database (``WhiskActivation.scala``), for every code form and for
each failure ``ContainerProxy.scala`` answers.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import time
import zipfile

import pytest

from invoker.containerpool.states import State
from invoker.entities import Messages
from invoker.messages import (
    CombinedCompletionAndResultMessage,
    CompletionMessage,
    FullyQualifiedEntityName,
    ResultMessage,
    TransactionId,
)

ECHO = """
import sys
def main(args):
    print("to stdout", args.get("n"))
    print("to stderr", file=sys.stderr)
    return {"echo": args}
"""


def zipped(files: dict[str, str]) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return base64.b64encode(buffer.getvalue()).decode()


def annotations(record: dict) -> dict:
    return {a["key"]: a["value"] for a in record["annotations"]}


def ack_types(acks) -> list[str]:
    return [type(a).__name__ for a in acks.acks]


# Large enough to be stored as a couch: attachment rather than inlined in a mem: name.
ATTACHED = ECHO + "\n" + "# padding\n" * 2000

CODE_FORMS = {
    "inline": dict(code=ECHO),
    "attached": dict(code=ATTACHED),
    "zip": dict(code=zipped({"__main__.py": "from helper import main\n", "helper.py": ECHO}), binary=True),
}


@pytest.mark.parametrize("form", CODE_FORMS)
def test_blocking_activation_acks_and_record(deployment, form):
    fqn, rev = deployment.deploy(f"echo-{form}", **CODE_FORMS[form])
    msg, acks = deployment.invoke(fqn, rev, {"n": 1})
    # Logs are collected (limits.logs = 10 MB): a ResultMessage, then a CompletionMessage.
    assert ack_types(acks) == ["ResultMessage", "CompletionMessage"]
    result, completion = acks.acks
    assert result.transid == msg.transid and completion.transid == msg.transid
    assert completion.is_system_error is False
    assert completion.instance.instance == deployment.instance
    assert result.response["response"] == {"statusCode": 0, "result": {"echo": {"n": 1}},
                                           "size": len(json.dumps({"echo": {"n": 1}}, separators=(",", ":")))}
    assert result.response["logs"] == []  # the result goes before log collection

    record = deployment.record(msg)
    assert record["_id"] == f"guest/{msg.activation_id}"
    assert record["entityType"] == "activation"
    assert record["namespace"] == "guest" and record["name"] == f"echo-{form}"
    assert record["subject"] == msg.user.subject
    assert record["response"]["statusCode"] == 0
    assert record["duration"] == record["end"] - record["start"]
    notes = annotations(record)
    assert list(notes)[:4] == ["limits", "path", "kind", "timeout"]
    assert notes["limits"] == {"timeout": 60000, "memory": 256, "logs": 10, "concurrency": 1}
    assert notes["path"] == f"guest/echo-{form}" and notes["kind"] == "python:3"
    assert notes["timeout"] is False
    assert notes["initTime"] > 0  # a cold start
    assert notes["waitTime"] >= 0
    assert any(line.endswith("stdout: to stdout 1") for line in record["logs"])
    assert any(line.endswith("stderr: to stderr") for line in record["logs"])
    assert not any("XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX" in line for line in record["logs"])

    # A second call is warm: no initTime, same container.
    msg2, acks2 = deployment.invoke(fqn, rev, {"n": 2})
    assert "initTime" not in annotations(deployment.record(msg2))
    assert [line for line in deployment.record(msg2)["logs"] if "stdout" in line][0].endswith("to stdout 2")


@pytest.mark.parametrize("form", CODE_FORMS)
def test_non_blocking_activation_gets_one_completion_and_a_record(deployment, form):
    fqn, rev = deployment.deploy(f"nb-{form}", **CODE_FORMS[form])
    msg, acks = deployment.invoke(fqn, rev, {"n": 3}, blocking=False)
    time.sleep(0.3)  # nothing else may follow
    assert ack_types(acks) == ["CompletionMessage"]
    assert acks.acks[0].activation_id == msg.activation_id and acks.acks[0].transid == msg.transid
    record = deployment.record(msg)
    assert record["response"]["result"] == {"echo": {"n": 3}}


def test_blocking_without_logs_is_one_combined_ack_with_the_full_activation(deployment):
    fqn, rev = deployment.deploy("quiet", ECHO, limits={"logs": 0})
    msg, acks = deployment.invoke(fqn, rev, {"n": 4})
    assert ack_types(acks) == ["CombinedCompletionAndResultMessage"]
    (ack,) = acks.acks
    assert ack.response["activationId"] == msg.activation_id
    assert ack.response["response"]["result"] == {"echo": {"n": 4}}
    assert deployment.record(msg)["logs"] == []


def test_non_blocking_without_logs_is_one_completion(deployment):
    fqn, rev = deployment.deploy("quiet-nb", ECHO, limits={"logs": 0})
    msg, acks = deployment.invoke(fqn, rev, {}, blocking=False)
    time.sleep(0.3)
    assert ack_types(acks) == ["CompletionMessage"]


def test_init_args_go_to_init_env_and_not_to_run(deployment):
    code = """
import os
SEEN = os.environ.get("MODEL_NAME")
def main(args):
    return {"seen_at_import": SEEN, "args": args, "api_host": os.environ.get("__OW_API_HOST"),
            "action": os.environ["__OW_ACTION_NAME"], "key": os.environ.get("__OW_API_KEY")}
"""
    fqn, rev = deployment.deploy("initargs", code, annotations=[])
    msg, acks = deployment.invoke(fqn, rev, {"MODEL_NAME": "resnet50", "x": 1}, init_args=("MODEL_NAME",))
    result = acks.result["response"]["result"]
    assert result["seen_at_import"] == "resnet50"
    assert result["args"] == {"x": 1}
    assert result["action"] == "/guest/initargs"
    assert result["key"] == msg.user.api_key  # provide-api-key absent means yes


def test_provide_api_key_false_withholds_the_key(deployment):
    code = "import os\ndef main(args):\n    return {'key': os.environ.get('__OW_API_KEY')}\n"
    fqn, rev = deployment.deploy("nokey", code, annotations=[{"key": "provide-api-key", "value": False}])
    _, acks = deployment.invoke(fqn, rev, {})
    assert acks.result["response"]["result"] == {"key": None}


def test_sequence_component_records_cause_and_binding(deployment):
    fqn, rev = deployment.deploy("component", ECHO, package="pkg")
    bound = FullyQualifiedEntityName(fqn.path, fqn.name, fqn.version, binding="guest/pkg-binding")
    cause = "2f681e7e84b65e9ce74358c7967865a3"
    msg, _ = deployment.invoke(bound, rev, {}, cause=cause)
    record = deployment.record(msg)
    notes = annotations(record)
    assert record["cause"] == cause
    assert notes["causedBy"] == "sequence" and notes["binding"] == "guest/pkg-binding"
    assert notes["path"] == "guest/pkg/component"


# ---------------------------------------------------------------- failures (ContainerProxy.scala)


def expect(deployment, msg, acks, status, error):
    record = deployment.record(msg)
    assert record["response"]["statusCode"] == status, record["response"]
    assert record["response"]["result"]["error"] == error
    if acks.result is not None and not isinstance(acks.result, str):
        assert acks.result["response"]["statusCode"] == status
    slot = acks.slot_freeing[0]
    assert slot.is_system_error is (status == 3)
    return record


def test_init_failure(deployment):
    fqn, rev = deployment.deploy("broken", "def main(args):\n    return {\n")
    msg, acks = deployment.invoke(fqn, rev, {})
    record = expect(deployment, msg, acks, 2,
                    "The action failed to generate or locate a binary. See logs for details.")
    notes = annotations(record)
    assert "initTime" in notes and record["duration"] == notes["initTime"]
    assert record["logs"][-1].endswith("The action did not initialize or run as expected. Log data might be missing.")
    assert any("SyntaxError" in line for line in record["logs"])


def test_application_error(deployment):
    fqn, rev = deployment.deploy("apperr", "def main(args):\n    return {'error': 'bad input'}\n")
    msg, acks = deployment.invoke(fqn, rev, {})
    expect(deployment, msg, acks, 1, "bad input")
    # The container stays: the next call is warm.
    msg2, _ = deployment.invoke(fqn, rev, {})
    assert "initTime" not in annotations(deployment.record(msg2))


def test_uncaught_exception_is_an_application_error_as_in_today_python_runtime(deployment):
    fqn, rev = deployment.deploy("raises", "def main(args):\n    raise ValueError('nope')\n")
    msg, acks = deployment.invoke(fqn, rev, {})
    record = expect(deployment, msg, acks, 1, "nope")
    assert any("Traceback" in line for line in record["logs"])


def test_time_limit(deployment):
    fqn, rev = deployment.deploy("sleepy", "import time\ndef main(args):\n    time.sleep(30)\n    return {}\n",
                                 limits={"timeout": 1000})
    msg, acks = deployment.invoke(fqn, rev, {})
    record = expect(deployment, msg, acks, 2, "The action exceeded its time limits of 1000 milliseconds.")
    assert annotations(record)["timeout"] is True
    # The container was destroyed: the next call is a cold start again.
    msg2, _ = deployment.invoke(fqn, rev, {})
    assert "initTime" in annotations(deployment.record(msg2))


def test_init_time_limit(deployment):
    fqn, rev = deployment.deploy("slowinit", "import time\ntime.sleep(30)\ndef main(args):\n    return {}\n",
                                 limits={"timeout": 1000})
    msg, acks = deployment.invoke(fqn, rev, {})
    record = expect(deployment, msg, acks, 2,
                    "The action exceeded its time limits of 1000 milliseconds during initialization.")
    assert annotations(record)["timeout"] is True


def test_result_too_large(deployment):
    code = "def main(args):\n    return {'big': 'x' * (2 * 1024 * 1024)}\n"
    fqn, rev = deployment.deploy("big", code)
    msg, acks = deployment.invoke(fqn, rev, {})
    record = deployment.record(msg)
    assert record["response"]["statusCode"] == 1
    error = record["response"]["result"]["error"]
    body_length = len(json.dumps({"big": "x" * (2 * 1024 * 1024)}, separators=(",", ":")))
    assert error.startswith(
        f"The action produced a response that exceeded the allowed length: {body_length} > 1048576 bytes. "
        "The truncated response was: {\"big\":\"xxx"
    )
    assert len(error) < 1048576 + 200
    # The record (and ack) stay within Kafka's message limit
    assert len(json.dumps(acks.result)) < 1024 * 1024 + 6068 or isinstance(acks.result, str)


BACKENDS = ("process", "docker")  # as the deployment fixture's params


def kill_from_outside(deployment, proxy) -> None:
    """What a crash, the OOM killer or an operator does to a container: SIGKILL, not via the pool."""
    if deployment.backend == "docker":
        proxy.container.handle.kill()
    else:
        os.killpg(proxy.container.pid, signal.SIGKILL)


def test_container_killed_mid_run(deployment):
    code = "import os, time\ndef main(args):\n    time.sleep(args.get('sleep', 0))\n    return {'pid': os.getpid()}\n"
    fqn, rev = deployment.deploy("victim", code)
    msg = deployment.controller.message(fqn, rev, {"sleep": 30})
    deployment.controller.publish(deployment.instance, msg)
    pool = deployment.invoker.pool
    deadline = time.monotonic() + 30
    victim = None
    while victim is None and time.monotonic() < deadline:
        busy = [p for p in pool._containers if p.active and p.action is not None and p.action.name == "victim"]
        if busy and busy[0].initialized:
            victim = busy[0]
        time.sleep(0.05)
    assert victim is not None
    time.sleep(0.3)
    kill_from_outside(deployment, victim)
    acks = deployment.controller.wait_for(msg.activation_id, 30)
    expect(deployment, msg, acks, 2, Messages.abnormal_run)
    # The dead container is not reused: the next call is a cold start, and succeeds.
    msg2, _ = deployment.invoke(fqn, rev, {})
    record = deployment.record(msg2)
    assert record["response"]["statusCode"] == 0
    assert "initTime" in annotations(record)


@pytest.mark.parametrize("backend", BACKENDS)
def test_paused_container_is_resumed_for_the_next_call(deployment_factory, backend):
    deployment = deployment_factory(["--pause-grace", "200 ms"], backend=backend)
    fqn, rev = deployment.deploy("napper", "def main(args):\n    return {'n': args.get('n')}\n")
    msg, _ = deployment.invoke(fqn, rev, {"n": 1})
    assert deployment.record(msg)["response"]["result"] == {"n": 1}
    pool = deployment.invoker.pool
    deadline = time.monotonic() + 20
    while not any(p.state is State.PAUSED for p in pool._containers) and time.monotonic() < deadline:
        time.sleep(0.05)
    (paused,) = [p for p in pool._containers if p.state is State.PAUSED]
    if backend == "docker":
        paused.container.handle.reload()
        assert paused.container.handle.status == "paused"  # the engine's word, not the pool's
    msg2, _ = deployment.invoke(fqn, rev, {"n": 2})
    record = deployment.record(msg2)
    assert record["response"]["result"] == {"n": 2}
    assert "initTime" not in annotations(record)  # warm: the same container, resumed
    assert paused.container.is_alive() and paused in pool._containers
    if backend == "docker":
        paused.container.handle.reload()
        assert paused.container.handle.status == "running"


def test_unknown_action_is_an_application_error_with_one_combined_ack(deployment):
    fqn = FullyQualifiedEntityName("guest", "nothing-here", "0.0.1")
    msg, acks = deployment.invoke(fqn, "1-0123456789abcdef0123456789abcdef", {})
    assert ack_types(acks) == ["CombinedCompletionAndResultMessage"]
    record = expect(deployment, msg, acks, 1, "Action could not be found or may have been deleted.")
    assert annotations(record) == {"path": "guest/nothing-here", "kind": "unknown"}
    assert record["duration"] == 0 and record["start"] == record["end"]


def test_non_blocking_fallback_ack_is_shrunk(deployment):
    fqn = FullyQualifiedEntityName("guest", "nothing-here", "0.0.1")
    msg, acks = deployment.invoke(fqn, None, {}, blocking=False)
    (ack,) = acks.acks
    assert isinstance(ack, CombinedCompletionAndResultMessage)
    assert ack.response == msg.activation_id


def test_unknown_revision_runs_the_latest_code(deployment):
    # The revision the controller read may be gone (updated and compacted): like the
    # Scala invoker on a revision mismatch, run the action's latest revision.
    fqn, rev = deployment.deploy("revved", ECHO)
    msg, acks = deployment.invoke(fqn, "9-ffffffffffffffffffffffffffffffff", {"n": 7})
    assert acks.result["response"]["result"] == {"echo": {"n": 7}}


def test_revision_of_a_deleted_action_is_not_found(deployment):
    fqn, rev = deployment.deploy("deleted", ECHO)
    deployment.entities.delete_action(fqn.docid)
    # By revision CouchDB still serves a deleted document's old body (until compaction),
    # so the latest revision is what shows the deletion.
    msg, acks = deployment.invoke(fqn, None, {})
    expect(deployment, msg, acks, 1, "Action could not be found or may have been deleted.")


def test_unknown_kind_is_incompatible(deployment):
    fqn, rev = deployment.deploy("cobol", ECHO, kind="cobol:85")
    msg, acks = deployment.invoke(fqn, rev, {})
    expect(deployment, msg, acks, 3, "Action version is not compatible and cannot be invoked.")


def test_malformed_message_is_skipped_and_the_feed_goes_on(deployment):
    fqn, rev = deployment.deploy("after", ECHO)
    deployment.controller.publish(deployment.instance, b"{this is not json")
    deployment.controller.publish(deployment.instance, b'{"transid": ["x", 1]}')
    msg, acks = deployment.invoke(fqn, rev, {"n": 5})
    assert acks.result["response"]["result"] == {"echo": {"n": 5}}
    assert deployment.invoker.reactive.malformed == 2


# ---------------------------------------------------------------- health


def test_health_pings_carry_the_instance(deployment_factory):
    deployment = deployment_factory(["--tags", "gpu", "--user-memory", "2048 m"])
    ping = deployment.controller.wait_for_ping(10)
    assert ping.instance.instance == deployment.instance
    assert ping.instance.tags == ("gpu",)
    assert ping.instance.user_memory.megabytes == 2048
    count = len(deployment.controller.pings)
    time.sleep(2.2)
    assert len(deployment.controller.pings) >= count + 2  # one a second


def test_controller_health_test_action_is_answered_with_the_transid_echoed(deployment):
    doc_code = "function main(params) { return params; }"
    fqn, rev = deployment.deploy("invokerHealthTestAction0", doc_code, kind="nodejs:20", namespace="whisk.system",
                                 limits={"memory": 128})
    transid = TransactionId(("sid_invokerHealth", 1714559000017))
    msg = deployment.controller.message(fqn, None, None, blocking=False, transid=transid)
    deployment.controller.publish(deployment.instance, msg)
    acks = deployment.controller.wait_for_transid("sid_invokerHealth", 30)
    (ack,) = acks.acks
    assert isinstance(ack, CompletionMessage)
    assert ack.transid.to_json() == ["sid_invokerHealth", 1714559000017]
    assert ack.is_system_error is False
    assert deployment.record(msg)["response"]["statusCode"] == 0


def test_result_then_completion_order_is_kept(deployment):
    fqn, rev = deployment.deploy("ordered", ECHO)
    msgs = [deployment.controller.message(fqn, rev, {"i": i}) for i in range(20)]
    deployment.controller.publish_many(deployment.instance, msgs)
    for msg in msgs:
        acks = deployment.controller.wait_for(msg.activation_id, 60)
        kinds = [type(a) for a in acks.acks]
        assert kinds == [ResultMessage, CompletionMessage]
