"""Wire types against example messages in OpenWhisk's shapes (``Message.scala``), in tests/fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from invoker.entities import WhiskActivation
from invoker.messages import (
    ActivationMessage,
    ByteSize,
    CombinedCompletionAndResultMessage,
    CompletionMessage,
    InvokerInstanceId,
    MessageError,
    PingMessage,
    ResultMessage,
    TransactionId,
    parse_acknowledgement,
    serialize,
)

FIXTURES = Path(__file__).parent / "fixtures" / "messages"


def fixture(name: str):
    return json.loads((FIXTURES / name).read_text())


ACTIVATIONS = ["activation-message-blocking.json", "activation-message-health-test.json",
               "activation-message-sequence-component.json"]
ACKS = {
    "combined-completion-result.json": CombinedCompletionAndResultMessage,
    "combined-completion-result-shrunk.json": CombinedCompletionAndResultMessage,
    "result-message.json": ResultMessage,
    "completion-message.json": CompletionMessage,
    "completion-message-health-test.json": CompletionMessage,
}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_messages_round_trip(name):
    value = fixture(name)
    msg = ActivationMessage.parse(json.dumps(value))
    assert msg.to_json() == value
    assert json.loads(msg.serialize()) == value


def test_sequence_component_fields_are_read():
    msg = ActivationMessage.from_json(fixture("activation-message-sequence-component.json"))
    assert msg.transid.extra_logging is True
    assert msg.action.binding == "alice_dev/vision-prod"
    assert msg.action.docid == "alice_dev/vision/classify"
    assert msg.init_args == ("MODEL_NAME",)
    assert msg.locked_args == {"hf_token": "aes-256"}
    assert msg.cause == "2f681e7e84b65e9ce74358c7967865a3"


def test_health_test_message_has_null_revision_and_no_content():
    msg = ActivationMessage.from_json(fixture("activation-message-health-test.json"))
    assert msg.revision is None
    assert msg.content is None
    assert msg.transid.id == "sid_invokerHealth"
    assert "content" not in msg.to_json()
    assert msg.to_json()["revision"] is None  # non-option field: always written


@pytest.mark.parametrize("name,kind", ACKS.items())
def test_acks_round_trip_and_discriminate_like_the_controller(name, kind):
    value = fixture(name)
    ack = parse_acknowledgement(json.dumps(value))
    assert type(ack) is kind
    assert ack.to_json() == value


def test_ping_uses_the_name_key_and_round_trips():
    value = fixture("ping-message.json")
    ping = PingMessage.from_json(value)
    assert ping.to_json() == value
    assert "name" in ping.to_json() and "instance" not in ping.to_json()
    assert PingMessage.from_json({"name": value["name"]}).is_enabled is True


def test_invoker_instance_id_round_trips_and_requires_its_fields():
    value = fixture("invoker-instance-id.json")
    assert InvokerInstanceId.from_json(value).to_json() == value
    for required in ("instanceType", "tags", "dedicatedNamespaces", "userMemory"):
        broken = {k: v for k, v in value.items() if k != required}
        with pytest.raises(MessageError):
            InvokerInstanceId.from_json(broken)
    with pytest.raises(MessageError):
        InvokerInstanceId.from_json({**value, "instanceType": "controller"})


def test_optional_fields_are_omitted_not_null():
    instance = InvokerInstanceId(0, ByteSize.mb(1024))
    out = instance.to_json()
    assert out == {"instance": 0, "userMemory": "1073741824 B", "instanceType": "invoker",
                   "tags": [], "dedicatedNamespaces": []}


@pytest.mark.parametrize("text,expected", [
    ("2048 MB", 2048 * 1024**2), ("256 MB", 256 * 1024**2), ("2 GB", 2 * 1024**3),
    ("2147483648 B", 2147483648), ("1024m", 1024 * 1024**2), ("512 k", 512 * 1024),
])
def test_byte_size_reader_follows_the_scala_regex(text, expected):
    assert ByteSize.parse(text).bytes == expected


def test_byte_size_rejects_garbage():
    with pytest.raises(MessageError):
        ByteSize.parse("lots")


@pytest.mark.parametrize("mutate,why", [
    (lambda m: m.pop("transid"), "missing transid"),
    (lambda m: m.update(activationId="not-hex"), "bad activation id"),
    (lambda m: m.update(activationId="ABCDEF0123456789ABCDEF0123456789"), "upper-case id"),
    (lambda m: m.pop("revision"), "revision must always be written"),
    (lambda m: m.update(blocking="yes"), "blocking must be a boolean"),
    (lambda m: m.update(content="text"), "content must be object or array"),
    (lambda m: m.update(transid="abc"), "transid must be an array"),
    (lambda m: m["user"].pop("authkey"), "identity without authkey"),
])
def test_malformed_activation_messages_are_rejected(mutate, why):
    value = fixture("activation-message-blocking.json")
    mutate(value)
    with pytest.raises(MessageError):
        ActivationMessage.from_json(value)


def test_non_json_is_a_message_error():
    with pytest.raises(MessageError):
        ActivationMessage.parse(b"\xff\x00 not json")


def test_transaction_id_is_echoed_verbatim_including_flags():
    raw = ["iA3WjjYxm2zAl7pkRUnHPMAJCcwJquaO", 1714560100456, True]
    transid = TransactionId.from_json(raw)
    assert transid.to_json() == raw
    assert transid.start_ms == 1714560100456


def test_identity_repr_hides_the_auth_key():
    msg = ActivationMessage.from_json(fixture("activation-message-blocking.json"))
    assert msg.user.api_key is not None
    assert msg.user.api_key not in repr(msg)
    assert msg.user.api_key.split(":")[1] not in repr(msg.user)


@pytest.mark.parametrize("name", ["whisk-activation-success.json", "whisk-activation-developer-error-timeout.json",
                                  "whisk-activation-whisk-error-fallback.json"])
def test_activation_documents_round_trip(name):
    doc = fixture(name)
    activation = WhiskActivation.from_document(doc)
    assert activation.to_document(doc["updated"]) == doc


def test_serialize_is_compact_utf8():
    assert serialize({"a": "❄"}) == '{"a":"❄"}'.encode()
