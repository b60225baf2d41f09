"""FPC's Kafka and etcd messages against the example JSON in tests/fixtures/messages, and
every shape of bad input: a ``MessageError``, never another exception."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invoker.fpc.messages import (
    ContainerCreationAckMessage,
    ContainerCreationError,
    ContainerCreationMessage,
    ContainerDeletionMessage,
    InvokerResourceMessage,
    InvokerStatus,
    SchedulerEndpoints,
    parse_container_message,
)
from invoker.messages import InvokerInstanceId, MessageError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "messages"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


CREATION = fixture("fpc-container-creation-message.json")
DELETION = fixture("fpc-container-deletion-message.json")
ACK_OK = fixture("fpc-container-creation-ack-success.json")
ACK_ERROR = fixture("fpc-container-creation-ack-error.json")
RESOURCES = fixture("fpc-invoker-resource-message.json")


# --------------------------------------------------------------------------- round trips


def test_creation_message_reads_the_example_and_writes_it_back() -> None:
    message = parse_container_message(json.dumps(CREATION).encode())
    assert isinstance(message, ContainerCreationMessage)
    assert message.creation_id == "efd2c35834354302bb164666b670fda0"
    assert message.invocation_namespace == "alice_dev"
    assert message.action.docid == "alice_dev/gpu-infer"
    assert message.revision == "3-9a1c5e0f2b7d4c8e6a3f1b0d2c4e6a8f"
    assert (message.scheduler_host, message.rpc_port, message.retry_count) == ("10.0.3.17", 13001, 0)
    assert message.ack_topic_suffix == "0"
    meta = message.action_metadata
    assert (meta.kind, meta.limits.memory_mb, meta.limits.concurrency) == ("python:3-gpu", 2048, 1)
    assert meta.annotation("invoker-resources") == ["gpu"]
    assert not message.is_warm_up
    assert message.to_json() == CREATION
    assert json.loads(message.serialize()) == CREATION


def test_deletion_message_reads_the_example_and_writes_it_back() -> None:
    message = parse_container_message(json.dumps(DELETION))
    assert isinstance(message, ContainerDeletionMessage)
    assert message.action.name == "gpu-infer"
    assert message.to_json() == DELETION


def test_creation_and_deletion_are_told_apart_by_creation_id_alone() -> None:
    # ContainerMessage.serdes: the field's presence decides, as in the Scala reader.
    without = {k: v for k, v in CREATION.items() if k != "creationId"}
    assert isinstance(parse_container_message(without), ContainerDeletionMessage)
    with_id = dict(DELETION, creationId="0" * 32)
    with pytest.raises(MessageError):  # a creation then, and one without its scheduler fields
        parse_container_message(with_id)


def test_the_schedulers_warm_up_creation_is_read_and_recognised() -> None:
    # C/WarmUp.scala: whisk.system/warmUp, empty revision (null), no scheduler host or port.
    warm_up = dict(CREATION, action={"path": "whisk.system", "name": "warmUp"}, revision=None,
                   invocationNamespace="whisk.system", schedulerHost="", rpcPort=0)
    message = parse_container_message(warm_up)
    assert isinstance(message, ContainerCreationMessage)
    assert message.is_warm_up and message.revision is None


def test_success_ack_answers_the_creation_as_the_example() -> None:
    creation = ContainerCreationMessage.from_json(CREATION)
    invoker = InvokerInstanceId.from_json(ACK_OK["rootInvokerIndex"])
    ack = ContainerCreationAckMessage.answering(creation, invoker)
    assert ack.succeeded
    assert ack.to_json() == ACK_OK
    assert ContainerCreationAckMessage.parse(ack.serialize()) == ack


def test_error_ack_carries_the_error_name_and_reason() -> None:
    creation = ContainerCreationMessage.from_json(CREATION)
    invoker = InvokerInstanceId.from_json(ACK_ERROR["rootInvokerIndex"])
    ack = ContainerCreationAckMessage.answering(creation, invoker, ContainerCreationError.ResourceNotEnoughError,
                                                "not enough GPU memory on gpu-node-a")
    assert ack.to_json() == ACK_ERROR
    assert ContainerCreationAckMessage.parse(json.dumps(ACK_ERROR)) == ack


def test_the_thirteen_error_names_of_openwhisk() -> None:
    assert [e.value for e in ContainerCreationError] == [
        "NoAvailableInvokersError", "NoAvailableResourceInvokersError", "ResourceNotEnoughError",
        "WhiskError", "UnknownError", "TimeoutError", "ShuttingDownError", "NonExecutableActionError",
        "DBFetchError", "BlackBoxError", "ZeroNamespaceLimit", "TooManyConcurrentRequests",
        "InvalidActionLimitError"]
    assert ContainerCreationError.parse(" resourcenotenougherror ") is ContainerCreationError.ResourceNotEnoughError
    assert ContainerCreationError.ResourceNotEnoughError.retried_by_scheduler
    assert not ContainerCreationError.DBFetchError.retried_by_scheduler
    assert not ContainerCreationError.ShuttingDownError.readable_by_scheduler
    with pytest.raises(MessageError):
        ContainerCreationError.parse("NoSuchError")


def test_invoker_resource_message_round_trip() -> None:
    message = InvokerResourceMessage.parse(json.dumps(RESOURCES))
    assert message == InvokerResourceMessage(InvokerStatus.UP, 28672, 2048, 2048, ("gpu",), ())
    assert json.loads(message.serialize()) == RESOURCES


@pytest.mark.parametrize("third", ["pekkoPort", "akkaPort", None])
def test_scheduler_endpoints_of_both_openwhisk_generations(third: str | None) -> None:
    value: dict[str, Any] = {"host": "10.0.3.17", "rpcPort": 13001}
    if third:
        value[third] = 25520
    endpoints = SchedulerEndpoints.parse(json.dumps(value))
    assert (endpoints.rpc_target, endpoints.remoting_port) == ("10.0.3.17:13001", 25520 if third else None)


# --------------------------------------------------------------------------- bad input

BAD_VALUES = [None, True, 0, -1, 1.5, 70000, "", "x", [], [1], {}, {"a": 1}]
OPTIONAL = {"retryCount"}  # read as 0 when absent


def _readers():
    return [
        (CREATION, parse_container_message),
        (DELETION, parse_container_message),
        (ACK_ERROR, ContainerCreationAckMessage.parse),
        (RESOURCES, InvokerResourceMessage.parse),
    ]


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into ``value`` (object keys and list indices)."""
    out = []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return out
    for key, child in items:
        out.append(prefix + (key,))
        out.extend(_paths(child, prefix + (key,)))
    return out


def _replaced(value: Any, path: tuple, new: Any, delete: bool = False) -> Any:
    out = copy.deepcopy(value)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return out


def _read_or_message_error(reader, data: Any) -> None:
    try:
        reader(data)
    except MessageError:
        pass  # the only exception a reader may raise


@pytest.mark.parametrize("data", [b"\xff\xfe", b"", "not json", "[", "null", "1", '"s"', "[]", "{}",
                                  "[" * 100_000 + "]" * 100_000, '{"creationId": 1e400}'])
def test_garbage_is_a_message_error(data: Any) -> None:
    for _, reader in _readers():
        with pytest.raises(MessageError):
            reader(data)


def test_each_missing_top_level_field_is_a_message_error() -> None:
    for example, reader in _readers():
        for key in example:
            if key in OPTIONAL or key in ("error", "reason"):
                continue
            if example is CREATION and key == "creationId":
                continue  # then it is a deletion (the test above)
            with pytest.raises(MessageError):
                reader(_replaced(example, (key,), None, delete=True))


def test_every_field_with_every_wrong_shape_reads_or_is_a_message_error() -> None:
    for example, reader in _readers():
        for path in _paths(example):
            for bad in BAD_VALUES:
                _read_or_message_error(reader, _replaced(example, path, bad))
                _read_or_message_error(reader, json.dumps(_replaced(example, path, bad)))


def test_wrong_types_of_required_top_level_fields_are_refused() -> None:
    creation = {"transid": "x", "invocationNamespace": 1, "action": "alice/a", "revision": 3,
                "whiskActionMetaData": [], "rootSchedulerIndex": {"asString": "bad id"},
                "schedulerHost": None, "rpcPort": "13001", "creationId": "EFD2C358" * 4}
    for key, bad in creation.items():
        with pytest.raises(MessageError):
            parse_container_message(_replaced(CREATION, (key,), bad))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzzed_fields_read_or_are_a_message_error(data: st.DataObject) -> None:
    example, reader = data.draw(st.sampled_from(_readers()))
    path = data.draw(st.sampled_from(_paths(example)))
    _read_or_message_error(reader, _replaced(example, path, data.draw(JSON)))
