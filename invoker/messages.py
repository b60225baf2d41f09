"""OpenWhisk wire types: what travels on Kafka between controller and invoker.

Serialization follows spray-json as OpenWhisk writes it (``Message.scala`` in
``common/scala/src/main/scala/org/apache/openwhisk/core/connector/``): ``None``
options are omitted, non-option fields always written, ``ByteSize`` as strings
such as ``"2048 MB"``, instants as epoch milliseconds, and the ``name`` key of a
ping. Every type has ``from_json`` (a parsed JSON value) and ``to_json`` (a JSON
value ready for ``json.dumps``); ``parse``/``serialize`` work on raw bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from invoker.errors import MessageError

__all__ = [
    "MessageError",
    "ByteSize",
    "TransactionId",
    "FullyQualifiedEntityName",
    "Identity",
    "ControllerInstanceId",
    "InvokerInstanceId",
    "ActivationMessage",
    "Addressee",
    "salvage_addressee",
    "CombinedCompletionAndResultMessage",
    "ResultMessage",
    "CompletionMessage",
    "PingMessage",
    "parse_acknowledgement",
]

JsonObject = dict[str, Any]


def _require(obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict):
        raise MessageError(f"expected a JSON object holding {key!r}, got {type(obj).__name__}")
    if key not in obj:
        raise MessageError(f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MessageError(f"field {key!r} has the wrong type: {type(value).__name__}")
    return value


def _optional(obj: JsonObject, key: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, kind):
        raise MessageError(f"field {key!r} has the wrong type: {type(value).__name__}")
    return value


def _string_list(obj: JsonObject, key: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise MessageError(f"field {key!r} must be an array of strings")
    return tuple(value)


def _string_map(obj: JsonObject, key: str) -> dict[str, str]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise MessageError(f"field {key!r} must be an object of strings")
    return dict(value)


def _put_optional(out: JsonObject, key: str, value: Any) -> None:
    if value is not None:
        out[key] = value


# --------------------------------------------------------------------------- sizes

_BYTE_SIZE = re.compile(r"(?i)\s?(\d+)\s?(GB|MB|KB|B|G|M|K)\s?")
_UNIT_BYTES = {"B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3}


@dataclass(frozen=True, order=True)
class ByteSize:
    """A size in bytes, written as OpenWhisk's ``ByteSize`` (``"2048 MB"``)."""

    bytes: int

    @classmethod
    def mb(cls, megabytes: int) -> ByteSize:
        return cls(megabytes * 1024**2)

    @classmethod
    def parse(cls, text: str) -> ByteSize:
        match = _BYTE_SIZE.fullmatch(text)
        if match is None:
            raise MessageError(f"not a ByteSize: {text!r}")
        return cls(int(match.group(1)) * _UNIT_BYTES[match.group(2).upper()])

    @property
    def megabytes(self) -> int:
        return self.bytes // 1024**2

    def to_json(self) -> str:
        # Scala's ByteSize.toString writes bytes with the unit "B".
        return f"{self.bytes} B"


# --------------------------------------------------------------------------- ids


@dataclass(frozen=True)
class TransactionId:
    """``[id, startMillis, extraLogging?, parent?]``, kept verbatim so acks echo it exactly."""

    raw: tuple[Any, ...]

    @classmethod
    def from_json(cls, value: Any) -> TransactionId:
        if (
            not isinstance(value, list)
            or len(value) < 2
            or not isinstance(value[0], str)
            or not isinstance(value[1], int | float)
            or isinstance(value[1], bool)
        ):
            raise MessageError(f"not a transaction id: {value!r}")
        return cls(tuple(value))

    @classmethod
    def new(cls, id: str, start_ms: int, extra_logging: bool = False) -> TransactionId:
        return cls((id, start_ms, True) if extra_logging else (id, start_ms))

    @property
    def id(self) -> str:
        return self.raw[0]

    @property
    def start_ms(self) -> int:
        return int(self.raw[1])

    @property
    def extra_logging(self) -> bool:
        return len(self.raw) > 2 and self.raw[2] is True

    def to_json(self) -> list[Any]:
        return list(self.raw)


_ACTIVATION_ID = re.compile(r"[0-9a-f]{32}")


def check_activation_id(value: Any) -> str:
    if not isinstance(value, str) or not _ACTIVATION_ID.fullmatch(value):
        raise MessageError(f"not an activation id (32 lowercase hex characters): {value!r}")
    return value


@dataclass(frozen=True)
class FullyQualifiedEntityName:
    """``{"path": "ns[/pkg]", "name": ..., "version"?: ..., "binding"?: ...}``."""

    path: str
    name: str
    version: str | None = None
    binding: str | None = None

    @classmethod
    def from_json(cls, value: Any) -> FullyQualifiedEntityName:
        if isinstance(value, str):
            path, _, name = value.strip("/").rpartition("/")
            if not path or not name:
                raise MessageError(f"not a fully qualified name: {value!r}")
            return cls(path=path, name=name)
        return cls(
            path=_require(value, "path", str),
            name=_require(value, "name", str),
            version=_optional(value, "version", str),
            binding=_optional(value, "binding", str),
        )

    @property
    def docid(self) -> str:
        """The CouchDB document id: ``path/name``, without the version."""
        return f"{self.path}/{self.name}"

    @property
    def namespace(self) -> str:
        return self.path.split("/", 1)[0]

    def to_json(self) -> JsonObject:
        out: JsonObject = {"path": self.path, "name": self.name}
        _put_optional(out, "version", self.version)
        _put_optional(out, "binding", self.binding)
        return out


@dataclass(frozen=True)
class Identity:
    """The invoking subject. ``authkey`` stays the generic JSON object it arrived as,
    because it is passed to the action as is (``api_key``)."""

    subject: str
    namespace_name: str
    namespace_uuid: str
    authkey: JsonObject
    rights: tuple[str, ...] = ()
    limits: JsonObject = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: Any) -> Identity:
        namespace = _require(value, "namespace", dict)
        return cls(
            subject=_require(value, "subject", str),
            namespace_name=_require(namespace, "name", str),
            namespace_uuid=_require(namespace, "uuid", str),
            authkey=_require(value, "authkey", dict),
            rights=tuple(_require(value, "rights", list)),
            limits=dict(_require(value, "limits", dict)),
        )

    @property
    def api_key(self) -> str | None:
        key = self.authkey.get("api_key")
        return key if isinstance(key, str) else None

    def to_json(self) -> JsonObject:
        return {
            "subject": self.subject,
            "namespace": {"name": self.namespace_name, "uuid": self.namespace_uuid},
            "authkey": self.authkey,
            "rights": list(self.rights),
            "limits": self.limits,
        }

    def __repr__(self) -> str:  # never let the auth key reach a log line
        return f"Identity(subject={self.subject!r}, namespace={self.namespace_name!r})"


# Kafka refuses longer topic names; a controller's acks go to ``completed<id>`` (as in
# OpenWhisk's ``ControllerInstanceId.MAX_NAME_LENGTH``).
MAX_TOPIC_NAME = 249
MAX_CONTROLLER_ID = MAX_TOPIC_NAME - len("completed")


@dataclass(frozen=True)
class ControllerInstanceId:
    as_string: str

    @classmethod
    def from_json(cls, value: Any) -> ControllerInstanceId:
        as_string = _require(value, "asString", str)
        kind = value.get("instanceType", "controller")
        if kind != "controller":
            raise MessageError(f"not a controller instance: {kind!r}")
        if not re.fullmatch(r"[a-zA-Z0-9._-]+", as_string):
            raise MessageError(f"invalid controller id {as_string!r}")
        if len(as_string) > MAX_CONTROLLER_ID:  # its acks could go to no topic: nobody to answer
            raise MessageError(f"controller id of {len(as_string)} characters: its topic completed<id> would exceed "
                               f"Kafka's {MAX_TOPIC_NAME}-character limit")
        return cls(as_string)

    def to_json(self) -> JsonObject:
        return {"asString": self.as_string, "instanceType": "controller"}


@dataclass(frozen=True)
class InvokerInstanceId:
    instance: int
    user_memory: ByteSize
    tags: tuple[str, ...] = ()
    dedicated_namespaces: tuple[str, ...] = ()
    unique_name: str | None = None
    displayed_name: str | None = None
    busy_memory: ByteSize | None = None

    @classmethod
    def from_json(cls, value: Any) -> InvokerInstanceId:
        if _require(value, "instanceType", str) != "invoker":
            raise MessageError(f"not an invoker instance: {value.get('instanceType')!r}")
        busy = _optional(value, "busyMemory", str)
        return cls(
            instance=_require(value, "instance", int),
            user_memory=ByteSize.parse(_require(value, "userMemory", str)),
            tags=tuple(_require(value, "tags", list)),
            dedicated_namespaces=tuple(_require(value, "dedicatedNamespaces", list)),
            unique_name=_optional(value, "uniqueName", str),
            displayed_name=_optional(value, "displayedName", str),
            busy_memory=ByteSize.parse(busy) if busy is not None else None,
        )

    @property
    def source(self) -> str:
        return f"invoker{self.instance}"

    def to_json(self) -> JsonObject:
        out: JsonObject = {"instance": self.instance, "userMemory": self.user_memory.to_json()}
        if self.busy_memory is not None:
            out["busyMemory"] = self.busy_memory.to_json()
        out["instanceType"] = "invoker"
        out["tags"] = list(self.tags)
        out["dedicatedNamespaces"] = list(self.dedicated_namespaces)
        _put_optional(out, "uniqueName", self.unique_name)
        _put_optional(out, "displayedName", self.displayed_name)
        return out


# --------------------------------------------------------------------------- activation


@dataclass(frozen=True)
class ActivationMessage:
    """Controller → ``invoker{N}`` (``ActivationMessage`` in ``Message.scala``)."""

    transid: TransactionId
    action: FullyQualifiedEntityName
    revision: str | None
    user: Identity
    activation_id: str
    root_controller_index: ControllerInstanceId
    blocking: bool
    content: JsonObject | list[Any] | None = None
    init_args: tuple[str, ...] = ()
    locked_args: dict[str, str] = field(default_factory=dict)
    cause: str | None = None
    trace_context: dict[str, str] | None = None

    @classmethod
    def from_json(cls, value: Any) -> ActivationMessage:
        if not isinstance(value, dict):
            raise MessageError(f"an activation message is a JSON object, not {type(value).__name__}")
        revision = value.get("revision")
        if revision is not None and not isinstance(revision, str):
            raise MessageError("field 'revision' has the wrong type")
        if "revision" not in value:
            raise MessageError("missing field 'revision'")
        content = value.get("content")
        if content is not None and not isinstance(content, dict | list):
            raise MessageError("field 'content' must be a JSON object or array")
        cause = _optional(value, "cause", str)
        return cls(
            transid=TransactionId.from_json(_require(value, "transid", list)),
            action=FullyQualifiedEntityName.from_json(_require(value, "action", (dict, str))),
            revision=revision,
            user=Identity.from_json(_require(value, "user", dict)),
            activation_id=check_activation_id(_require(value, "activationId", str)),
            root_controller_index=ControllerInstanceId.from_json(
                _require(value, "rootControllerIndex", dict)
            ),
            blocking=_require(value, "blocking", bool),
            content=content,
            init_args=_string_list(value, "initArgs"),
            locked_args=_string_map(value, "lockedArgs"),
            cause=check_activation_id(cause) if cause is not None else None,
            trace_context=_string_map(value, "traceContext") if value.get("traceContext") is not None else None,
        )

    @classmethod
    def parse(cls, data: bytes | str) -> ActivationMessage:
        """The message in ``data``; raises only ``MessageError``, whatever the bytes."""
        try:
            return cls.from_json(json.loads(data))
        except MessageError:
            raise
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise MessageError(f"not JSON: {error}") from error
        except RecursionError as error:
            raise MessageError("JSON nested too deeply") from error
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as error:
            # One seam: any shape the field readers did not foresee is still a bad message.
            raise MessageError(f"not an activation message: {type(error).__name__}: {error}") from error

    def to_json(self) -> JsonObject:
        out: JsonObject = {
            "transid": self.transid.to_json(),
            "action": self.action.to_json(),
            "revision": self.revision,
            "user": self.user.to_json(),
            "activationId": self.activation_id,
            "rootControllerIndex": self.root_controller_index.to_json(),
            "blocking": self.blocking,
        }
        _put_optional(out, "content", self.content)
        out["initArgs"] = list(self.init_args)
        out["lockedArgs"] = dict(self.locked_args)
        _put_optional(out, "cause", self.cause)
        _put_optional(out, "traceContext", self.trace_context)
        return out

    def serialize(self) -> bytes:
        return serialize(self.to_json())


@dataclass(frozen=True)
class Addressee:
    """Who waits for an activation whose message is broken: enough to free the
    controller's slot with a whisk-error completion instead of leaving it to time out."""

    activation_id: str
    controller: ControllerInstanceId
    transid: TransactionId | None


def salvage_addressee(data: bytes | str) -> Addressee | None:
    """The activation id and controller of a message that ``parse`` refused, when both
    can still be read; ``None`` otherwise. Never raises."""
    try:
        value = json.loads(data)
        if not isinstance(value, dict):
            return None
        activation_id = check_activation_id(value.get("activationId"))
        controller = ControllerInstanceId.from_json(value.get("rootControllerIndex"))
        try:
            transid: TransactionId | None = TransactionId.from_json(value.get("transid"))
        except MessageError:
            transid = None
        return Addressee(activation_id, controller, transid)
    except (MessageError, ValueError, TypeError, AttributeError, RecursionError):
        return None


# --------------------------------------------------------------------------- acks


@dataclass(frozen=True)
class CombinedCompletionAndResultMessage:
    """Resolves the blocking promise and frees the slot. ``response`` is the full
    activation (JSON object, without ``_id``/``entityType``/``updated``) or, shrunk,
    the activation id string."""

    transid: TransactionId
    response: JsonObject | str
    is_system_error: bool
    instance: InvokerInstanceId

    def to_json(self) -> JsonObject:
        return {
            "transid": self.transid.to_json(),
            "response": self.response,
            "isSystemError": self.is_system_error,
            "instance": self.instance.to_json(),
        }

    def shrink(self, activation_id: str) -> CombinedCompletionAndResultMessage:
        return CombinedCompletionAndResultMessage(
            self.transid, activation_id, self.is_system_error, self.instance
        )


@dataclass(frozen=True)
class ResultMessage:
    """Resolves the blocking promise only."""

    transid: TransactionId
    response: JsonObject | str

    def to_json(self) -> JsonObject:
        return {"transid": self.transid.to_json(), "response": self.response}

    def shrink(self, activation_id: str) -> ResultMessage:
        return ResultMessage(self.transid, activation_id)


@dataclass(frozen=True)
class CompletionMessage:
    """Frees the slot only."""

    transid: TransactionId
    activation_id: str
    is_system_error: bool
    instance: InvokerInstanceId

    def to_json(self) -> JsonObject:
        return {
            "transid": self.transid.to_json(),
            "activationId": self.activation_id,
            "isSystemError": self.is_system_error,
            "instance": self.instance.to_json(),
        }

    def shrink(self, activation_id: str) -> CompletionMessage:
        return self


AcknowledgementMessage = CombinedCompletionAndResultMessage | ResultMessage | CompletionMessage


def parse_acknowledgement(data: bytes | str | JsonObject) -> AcknowledgementMessage:
    """Read an ack as the controller does: ``instance`` + ``response`` → combined,
    only ``instance`` → completion, otherwise → result."""
    value = json.loads(data) if isinstance(data, bytes | str) else data
    transid = TransactionId.from_json(_require(value, "transid", list))
    if "instance" in value:
        instance = InvokerInstanceId.from_json(_require(value, "instance", dict))
        if "response" in value:
            response = _require(value, "response", (dict, str))
            return CombinedCompletionAndResultMessage(
                transid, response, bool(value.get("isSystemError", False)), instance
            )
        return CompletionMessage(
            transid,
            check_activation_id(_require(value, "activationId", str)),
            bool(value.get("isSystemError", False)),
            instance,
        )
    return ResultMessage(transid, _require(value, "response", (dict, str)))


# --------------------------------------------------------------------------- health


@dataclass(frozen=True)
class PingMessage:
    """Invoker → ``health`` every second. The instance goes under the key ``name``."""

    instance: InvokerInstanceId
    is_enabled: bool = True

    @classmethod
    def from_json(cls, value: Any) -> PingMessage:
        enabled = value.get("isEnabled", True) if isinstance(value, dict) else True
        return cls(InvokerInstanceId.from_json(_require(value, "name", dict)), bool(enabled))

    def to_json(self) -> JsonObject:
        return {"name": self.instance.to_json(), "isEnabled": self.is_enabled}


def serialize(value: Any) -> bytes:
    """Compact UTF-8 JSON, as the Kafka records carry it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
