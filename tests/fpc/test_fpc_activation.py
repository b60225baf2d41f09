"""The ActivationService client against a real gRPC server that answers as the scheduler."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fpc_scheduler import FakeActivationService, SchedulerServer

from invoker.embedded.child import HOST, free_port
from invoker.fpc.activation import (
    ActionMismatch,
    ActivationClient,
    FetchRequest,
    NoActivationMessage,
    NoMemoryQueue,
    SchedulerTimeout,
    SchedulerUnavailable,
    decode_fetch_response,
    encode_fetch_response,
)
from invoker.messages import (
    ActivationMessage,
    FullyQualifiedEntityName,
    MessageError,
    TransactionId,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "messages"
FQN = FullyQualifiedEntityName("alice_dev", "gpu-infer", version="0.0.3")
REV = "3-9a1c5e0f2b7d4c8e6a3f1b0d2c4e6a8f"
CID = "309535b6d39536b0808b67ccbe1af0df03bc5ec7b53c4797f974e3152dc34acf"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


ACTIVATION = decode_fetch_response(fixture("fpc-fetch-response.json")["activationMessage"])


def request(**changes: Any) -> FetchRequest:
    fields: dict[str, Any] = dict(invocation_namespace="alice_dev", action=FQN, revision=REV, container_id=CID)
    fields.update(changes)
    return FetchRequest(**fields)


@pytest.fixture
def scheduler() -> Iterator[SchedulerServer]:
    server = SchedulerServer(FakeActivationService(hold_s=0.3)).start()
    server.service.add_queue("alice_dev", FQN, REV)
    yield server
    server.stop(0)


@pytest.fixture
def client(scheduler: SchedulerServer) -> Iterator[ActivationClient]:
    with ActivationClient(scheduler.host, scheduler.port) as client:
        yield client


# --------------------------------------------------------------------------- the envelope


def test_the_example_responses_decode() -> None:
    assert isinstance(ACTIVATION, ActivationMessage)
    assert ACTIVATION.activation_id == "97974ee567ccd54bcb4b352a71414ae6"
    assert ACTIVATION.action == FQN and ACTIVATION.revision == REV
    empty = decode_fetch_response(fixture("fpc-fetch-response-empty.json")["activationMessage"])
    assert empty == NoActivationMessage("no activation message exist")


@pytest.mark.parametrize("result", [ACTIVATION, NoActivationMessage(), NoMemoryQueue(), ActionMismatch()])
def test_every_variant_round_trips(result: Any) -> None:
    assert decode_fetch_response(encode_fetch_response(result)) == result


def test_queue_errors_are_written_as_the_scheduler_writes_them() -> None:
    assert json.loads(encode_fetch_response(NoMemoryQueue())) == {
        "message": {"noMemoryQueue": "no memory queue exist", "type": "NoMemoryQueue"}}
    assert json.loads(encode_fetch_response(ActionMismatch())) == {
        "message": {"actionMisMatch": "action version does not match", "type": "ActionMismatch"}}


@pytest.mark.parametrize("text", ["", "nope", "[]", "{}", '{"message": null}', '{"message": []}',
                                  '{"message": {"type": "Other"}}', '{"message": {"type": "NoMemoryQueue"}}',
                                  '{"message": {"type": 3}}', '{"message": {"activationId": "x"}}', "[" * 50_000])
def test_a_broken_envelope_is_a_message_error(text: str) -> None:
    with pytest.raises(MessageError):
        decode_fetch_response(text)


def test_a_request_is_written_as_the_example() -> None:
    example = fixture("fpc-fetch-request.json")
    transid = TransactionId.from_json(json.loads(example["transactionId"]))
    proto = request(warmed=True, last_duration_ms=2840, transid=transid).to_proto(now_ms=0)
    assert {
        "transactionId": proto.transactionId, "invocationNamespace": proto.invocationNamespace,
        "fqn": proto.fqn, "rev": proto.rev, "containerId": proto.containerId, "warmed": proto.warmed,
        "lastDuration": proto.lastDuration.value, "alive": proto.alive,
    } == example
    assert not request().to_proto(now_ms=0).HasField("lastDuration")


# --------------------------------------------------------------------------- over gRPC


def test_fetch_gets_the_queued_activation(scheduler: SchedulerServer, client: ActivationClient) -> None:
    scheduler.service.enqueue("alice_dev", ACTIVATION)
    assert client.fetch(request(), timeout_s=5) == ACTIVATION


def test_fetch_of_an_empty_queue_is_no_activation_message(client: ActivationClient) -> None:
    started = time.monotonic()
    assert client.fetch(request(), timeout_s=5) == NoActivationMessage()
    assert time.monotonic() - started >= 0.25  # it was a long poll


def test_fetch_for_an_action_without_queue_is_no_memory_queue(client: ActivationClient) -> None:
    other = FullyQualifiedEntityName("alice_dev", "other")
    assert client.fetch(request(action=other), timeout_s=5) == NoMemoryQueue()


def test_fetch_for_another_revision_is_action_mismatch(client: ActivationClient) -> None:
    assert client.fetch(request(revision="4-new"), timeout_s=5) == ActionMismatch()


def test_the_scheduler_reads_what_the_client_sent(scheduler: SchedulerServer, client: ActivationClient) -> None:
    client.fetch(request(warmed=True, last_duration_ms=2840), timeout_s=5)
    client.fetch(request(alive=False), timeout_s=5)  # the container's last fetch
    first, last = scheduler.service.requests
    assert (first.invocation_namespace, first.action, first.revision, first.container_id) == (
        "alice_dev", FQN, REV, CID)
    assert first.warmed and first.last_duration_ms == 2840 and first.alive
    assert first.transid is not None and len(first.transid.id) == 32
    assert not last.alive and last.last_duration_ms is None
    assert first.transid != last.transid  # a fresh transaction per fetch


def test_reschedule_puts_the_activation_back(scheduler: SchedulerServer, client: ActivationClient) -> None:
    assert client.reschedule("alice_dev", FQN, REV, ACTIVATION, timeout_s=5)
    assert client.fetch(request(), timeout_s=5) == ACTIVATION
    assert not client.reschedule("alice_dev", FullyQualifiedEntityName("alice_dev", "gone"), REV, ACTIVATION,
                                 timeout_s=5)


def test_an_unreadable_answer_is_a_message_error(scheduler: SchedulerServer, client: ActivationClient) -> None:
    scheduler.service.answer_raw = '{"message": "garbage"}'
    with pytest.raises(MessageError):
        client.fetch(request(), timeout_s=5)


def test_fetch_from_a_dead_scheduler_is_scheduler_unavailable() -> None:
    port = free_port()  # nothing listens there
    with ActivationClient(HOST, port) as client:
        started = time.monotonic()
        with pytest.raises(SchedulerUnavailable, match=f"fetch at scheduler {HOST}:{port}: UNAVAILABLE"):
            client.fetch(request(), timeout_s=10)
        assert time.monotonic() - started < 5  # refused at once, not at the deadline
        with pytest.raises(SchedulerUnavailable):
            client.reschedule("alice_dev", FQN, REV, ACTIVATION, timeout_s=10)


def test_a_scheduler_that_holds_past_the_deadline_is_scheduler_timeout(scheduler: SchedulerServer,
                                                                       client: ActivationClient) -> None:
    scheduler.service.hold_s = 5.0
    with pytest.raises(SchedulerTimeout):
        client.fetch(request(), timeout_s=0.3)


def test_a_scheduler_going_away_mid_fetch_is_scheduler_unavailable() -> None:
    server = SchedulerServer(FakeActivationService(hold_s=30.0)).start()
    server.service.add_queue("alice_dev", FQN, REV)
    outcome: list[BaseException | object] = []
    with ActivationClient(server.host, server.port) as client:
        def fetch() -> None:
            try:
                outcome.append(client.fetch(request(), timeout_s=20))
            except Exception as error:  # the test inspects it
                outcome.append(error)

        thread = threading.Thread(target=fetch)
        thread.start()
        deadline = time.monotonic() + 5
        while not server.service.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        server.stop(0)
        thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], SchedulerUnavailable), outcome
