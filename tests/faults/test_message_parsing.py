"""Property-based: whatever the bytes of an ``invoker{N}`` record, ``ActivationMessage.parse``
either returns a message or raises ``MessageError``, nothing else (issue #12, point 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invoker.messages import ActivationMessage, MessageError, salvage_addressee, serialize

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "messages"
EXAMPLES = sorted(FIXTURES.glob("*.json"))

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)


def parse_outcome(data: bytes) -> ActivationMessage | None:
    """Parse; a ``MessageError`` is a fine answer, any other exception fails the test."""
    try:
        return ActivationMessage.parse(data)
    except MessageError:
        return None


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_parses_or_raises_message_error(value: Any) -> None:
    parse_outcome(serialize(value))
    salvage_addressee(serialize(value))  # never raises either


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_message_error(data: bytes) -> None:
    parse_outcome(data)
    salvage_addressee(data)


@pytest.mark.parametrize("data", [
    b"null", b"[1,2]", b"\"text\"", b"5", b"true", b"{}", b"\xff\xfe\x00",
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON decoder's recursion limit
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
])
def test_hostile_shapes_raise_message_error(data: bytes) -> None:
    with pytest.raises(MessageError):
        ActivationMessage.parse(data)


# ------------------------------------------------------------------ mutations of the examples

def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside ``value`` (keys and list indices)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _replace(value: Any, path: tuple, new: Any, delete: bool) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy = dict(value) if isinstance(value, dict) else list(value)
    if not rest and delete:
        del copy[head]
    else:
        copy[head] = _replace(copy[head], rest, new, delete)
    return copy


@st.composite
def mutated_examples(draw: st.DrawFn) -> bytes:
    example = json.loads(draw(st.sampled_from(EXAMPLES)).read_text())
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(example)
        path = draw(st.sampled_from(paths))
        delete = bool(path) and draw(st.booleans())
        example = _replace(example, path, draw(json_values), delete)
    return serialize(example)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_examples())
def test_mutated_example_messages_parse_or_raise_message_error(data: bytes) -> None:
    message = parse_outcome(data)
    if message is not None:
        # What parse accepts can be acked and re-serialized: the fields the invoker uses have their types.
        assert isinstance(message.init_args, tuple) and all(isinstance(a, str) for a in message.init_args)
        assert all(isinstance(v, str) for v in message.locked_args.values())
        message.serialize()


@pytest.mark.parametrize("field,value", [
    ("initArgs", 5), ("initArgs", "ab"), ("initArgs", [1]), ("lockedArgs", "ab"), ("lockedArgs", [1, 2]),
    ("lockedArgs", {"a": 1}), ("traceContext", {"a": [1]}), ("transid", "x"), ("user", []),
])
def test_wrong_field_types_are_message_errors(field: str, value: Any) -> None:
    message = json.loads((FIXTURES / "activation-message-blocking.json").read_text())
    message[field] = value
    with pytest.raises(MessageError):
        ActivationMessage.parse(serialize(message))


def test_addressee_is_salvaged_from_a_message_with_a_broken_field() -> None:
    message = json.loads((FIXTURES / "activation-message-blocking.json").read_text())
    message["lockedArgs"] = "ab"
    addressee = salvage_addressee(serialize(message))
    assert addressee is not None
    assert addressee.activation_id == message["activationId"]
    assert addressee.controller.as_string == message["rootControllerIndex"]["asString"]
    assert salvage_addressee(b"[1,2]") is None


def test_a_controller_id_too_long_for_a_kafka_topic_is_a_message_error() -> None:
    # Acks go to ``completed<id>``: Kafka's topic names end at 249 characters.
    message = json.loads((FIXTURES / "activation-message-blocking.json").read_text())
    message["rootControllerIndex"]["asString"] = "c" * (249 - len("completed"))
    assert ActivationMessage.parse(serialize(message)).root_controller_index.as_string == "c" * 240
    message["rootControllerIndex"]["asString"] = "c" * 241
    with pytest.raises(MessageError, match="249"):
        ActivationMessage.parse(serialize(message))
    assert salvage_addressee(serialize(message)) is None  # nobody to answer: dropped at once
