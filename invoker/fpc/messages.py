"""The FPC scheduler's messages (C/connector/Message.scala), beside the classic ones in
``invoker.messages`` and written the same way (spray-json: ``None`` options left out).

On Kafka ``invoker{N}`` the scheduler sends a ``ContainerCreationMessage`` or a
``ContainerDeletionMessage`` (one reader tells them apart by ``creationId``); the invoker
answers every creation with a ``ContainerCreationAckMessage`` on ``creationAck{sid}``. In etcd
the invoker publishes an ``InvokerResourceMessage`` and reads a queue leader's
``SchedulerEndpoints``. Every reader raises ``MessageError`` and nothing else, whatever the bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from invoker.entities import ActionLimits, Parameter, parse_key_values
from invoker.messages import (
    FullyQualifiedEntityName,
    InvokerInstanceId,
    JsonObject,
    MessageError,
    TransactionId,
    serialize,
)

__all__ = [
    "ActionMetaData",
    "ContainerCreationAckMessage",
    "ContainerCreationError",
    "ContainerCreationMessage",
    "ContainerDeletionMessage",
    "ContainerMessage",
    "InvokerResourceMessage",
    "InvokerStatus",
    "SchedulerEndpoints",
    "WARM_UP_ACTION",
    "parse_container_message",
    "parse_json",
]

T = TypeVar("T")

# The scheduler's warm-up creation (C/WarmUp.scala): a nodejs container nobody uses; it has no
# document in the store. The Scala invoker drops it (I/invoker/ContainerMessageConsumer.scala).
WARM_UP_ACTION = FullyQualifiedEntityName("whisk.system", "warmUp")

_CREATION_ID = re.compile(r"[0-9a-f]{32}")  # CreationId.parse: 32 lowercase hex digits
_INSTANCE_NAME = re.compile(r"[a-zA-Z0-9._-]+")  # InstanceId's legal characters (Kafka topics)


def parse_json(data: bytes | str | Any, reader: Callable[[Any], T], what: str) -> T:
    """``reader`` applied to the JSON in ``data`` (bytes or text; anything else is taken as
    parsed JSON). The one seam that turns every failure into a ``MessageError``."""
    try:
        value = json.loads(data) if isinstance(data, bytes | bytearray | str) else data
        return reader(value)
    except MessageError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MessageError(f"{what}: not JSON: {error}") from error
    except RecursionError as error:
        raise MessageError(f"{what}: JSON nested too deeply") from error
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as error:
        # Any shape the field readers did not foresee is still a bad message, never a crash.
        raise MessageError(f"not a {what}: {type(error).__name__}: {error}") from error


def _field(obj: Any, key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    if not isinstance(obj, dict):
        raise MessageError(f"expected a JSON object holding {key!r}, got {type(obj).__name__}")
    value = obj.get(key)
    if value is None:
        if optional:
            return None
        raise MessageError(f"missing field {key!r}")
    # bool is an int in Python, never in JSON.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise MessageError(f"field {key!r} has the wrong type: {type(value).__name__}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _revision(obj: JsonObject) -> str | None:
    # DocRevision: a string, or null for the empty revision (the warm-up action's).
    if "revision" not in obj:
        raise MessageError("missing field 'revision'")
    return _field(obj, "revision", str, optional=True)


def _creation_id(obj: JsonObject) -> str:
    value = _field(obj, "creationId", str)
    if not _CREATION_ID.fullmatch(value):
        raise MessageError(f"not a creation id (32 lowercase hex digits): {value!r}")
    return value


def _port(obj: JsonObject, key: str) -> int:
    value = _field(obj, key, int)
    if not 0 <= value <= 65535:
        raise MessageError(f"field {key!r} is not a port: {value}")
    return value


# --------------------------------------------------------------------------- the action


@dataclass(frozen=True)
class ActionMetaData:
    """A ``WhiskActionMetaData`` as the scheduler sends it: the action without its code.

    ``raw`` is kept verbatim: the ack echoes it, and the pool reads what it needs (kind,
    limits, annotations) from the parsed fields. The code itself comes from the store."""

    raw: JsonObject
    namespace: str
    name: str
    kind: str
    limits: ActionLimits
    annotations: tuple[Parameter, ...]
    version: str | None

    @classmethod
    def from_json(cls, value: Any) -> ActionMetaData:
        exec_ = _field(value, "exec", dict)
        return cls(
            raw=value,
            namespace=_field(value, "namespace", str),
            name=_field(value, "name", str),
            kind=_field(exec_, "kind", str),
            limits=ActionLimits.from_json(_field(value, "limits", dict)),
            annotations=parse_key_values(value.get("annotations")),
            version=_field(value, "version", str, optional=True),
        )

    def annotation(self, key: str) -> Any:
        """The value of annotation ``key``, or None."""
        return next((a.value for a in self.annotations if a.key == key), None)

    def to_json(self) -> JsonObject:
        return self.raw


# --------------------------------------------------------------------------- Kafka: invoker{N}


@dataclass(frozen=True)
class ContainerCreationMessage:
    """Scheduler → ``invoker{N}``: create and initialise a container for an action revision,
    then pull its activations from ``schedulerHost:rpcPort``."""

    transid: TransactionId
    invocation_namespace: str
    action: FullyQualifiedEntityName
    revision: str | None
    action_metadata: ActionMetaData
    root_scheduler_index: str  # SchedulerInstanceId.asString: the ack goes to creationAck{this}
    scheduler_host: str
    rpc_port: int
    retry_count: int
    creation_id: str

    @classmethod
    def from_json(cls, value: Any) -> ContainerCreationMessage:
        scheduler = _field(_field(value, "rootSchedulerIndex", dict), "asString", str)
        if not _INSTANCE_NAME.fullmatch(scheduler):
            raise MessageError(f"invalid scheduler id {scheduler!r}")
        retry_count = _field(value, "retryCount", int, optional=True) or 0
        if retry_count < 0:
            raise MessageError(f"negative retryCount {retry_count}")
        return cls(
            transid=TransactionId.from_json(_field(value, "transid", list)),
            invocation_namespace=_field(value, "invocationNamespace", str),
            action=FullyQualifiedEntityName.from_json(_field(value, "action", dict)),
            revision=_revision(value),
            action_metadata=ActionMetaData.from_json(_field(value, "whiskActionMetaData", dict)),
            root_scheduler_index=scheduler,
            # The warm-up creation names no scheduler: host "" and port 0.
            scheduler_host=_field(value, "schedulerHost", str),
            rpc_port=_port(value, "rpcPort"),
            retry_count=retry_count,
            creation_id=_creation_id(value),
        )

    @property
    def is_warm_up(self) -> bool:
        return self.action.path == WARM_UP_ACTION.path and self.action.name == WARM_UP_ACTION.name

    @property
    def ack_topic_suffix(self) -> str:
        """The ack goes to ``creationAck`` + this (``SchedulerInstanceId.asString``)."""
        return self.root_scheduler_index

    def to_json(self) -> JsonObject:
        return {
            "transid": self.transid.to_json(),
            "invocationNamespace": self.invocation_namespace,
            "action": self.action.to_json(),
            "revision": self.revision,
            "whiskActionMetaData": self.action_metadata.to_json(),
            "rootSchedulerIndex": {"asString": self.root_scheduler_index},
            "schedulerHost": self.scheduler_host,
            "rpcPort": self.rpc_port,
            "retryCount": self.retry_count,
            "creationId": self.creation_id,
        }

    def serialize(self) -> bytes:
        return serialize(self.to_json())


@dataclass(frozen=True)
class ContainerDeletionMessage:
    """Scheduler → ``invoker{N}``: remove this invoker's containers of an action revision."""

    transid: TransactionId
    invocation_namespace: str
    action: FullyQualifiedEntityName
    revision: str | None
    action_metadata: ActionMetaData

    @classmethod
    def from_json(cls, value: Any) -> ContainerDeletionMessage:
        return cls(
            transid=TransactionId.from_json(_field(value, "transid", list)),
            invocation_namespace=_field(value, "invocationNamespace", str),
            action=FullyQualifiedEntityName.from_json(_field(value, "action", dict)),
            revision=_revision(value),
            action_metadata=ActionMetaData.from_json(_field(value, "whiskActionMetaData", dict)),
        )

    def to_json(self) -> JsonObject:
        return {
            "transid": self.transid.to_json(),
            "invocationNamespace": self.invocation_namespace,
            "action": self.action.to_json(),
            "revision": self.revision,
            "whiskActionMetaData": self.action_metadata.to_json(),
        }

    def serialize(self) -> bytes:
        return serialize(self.to_json())


ContainerMessage = ContainerCreationMessage | ContainerDeletionMessage


def _container_message(value: Any) -> ContainerMessage:
    if not isinstance(value, dict):
        raise MessageError(f"a container message is a JSON object, not {type(value).__name__}")
    # ContainerMessage.serdes: a creationId field makes it a creation, whatever its value.
    if "creationId" in value:
        return ContainerCreationMessage.from_json(value)
    return ContainerDeletionMessage.from_json(value)


def parse_container_message(data: bytes | str | Any) -> ContainerMessage:
    """A record of ``invoker{N}`` under FPC; raises only ``MessageError``."""
    return parse_json(data, _container_message, "container message")


# --------------------------------------------------------------------------- Kafka: creationAck{sid}


class ContainerCreationError(StrEnum):
    """Why a creation failed: OpenWhisk's 13 names, written as they are spelled."""

    NoAvailableInvokersError = "NoAvailableInvokersError"
    NoAvailableResourceInvokersError = "NoAvailableResourceInvokersError"
    ResourceNotEnoughError = "ResourceNotEnoughError"
    WhiskError = "WhiskError"
    UnknownError = "UnknownError"
    TimeoutError = "TimeoutError"
    ShuttingDownError = "ShuttingDownError"
    NonExecutableActionError = "NonExecutableActionError"
    DBFetchError = "DBFetchError"
    BlackBoxError = "BlackBoxError"
    ZeroNamespaceLimit = "ZeroNamespaceLimit"
    TooManyConcurrentRequests = "TooManyConcurrentRequests"
    InvalidActionLimitError = "InvalidActionLimitError"

    @property
    def retried_by_scheduler(self) -> bool:
        """In ``ContainerCreationError.whiskErrors``: the scheduler sends the creation to
        another invoker (CreationJobManager, up to its retry limit) instead of failing the
        queued activations. ``ResourceNotEnoughError`` is the refusal for "does not fit here"."""
        return self in _WHISK_ERRORS

    @property
    def readable_by_scheduler(self) -> bool:
        """Whether the scheduler's reader parses this name back. Its parser misspells
        ``NONEXECUTBLEACTIONERROR`` and lacks ``SHUTTINGDOWNERROR``, so an ack with either
        cannot be read there, though OpenWhisk's own invoker sends both."""
        return self not in (ContainerCreationError.NonExecutableActionError,
                            ContainerCreationError.ShuttingDownError)

    @classmethod
    def parse(cls, value: Any) -> ContainerCreationError:
        # The Scala reader trims and ignores case.
        if isinstance(value, str):
            wanted = value.strip().upper()
            for error in cls:
                if error.value.upper() == wanted:
                    return error
        raise MessageError(f"not a ContainerCreationError: {value!r}")


_WHISK_ERRORS = frozenset({
    ContainerCreationError.NoAvailableInvokersError,
    ContainerCreationError.NoAvailableResourceInvokersError,
    ContainerCreationError.ResourceNotEnoughError,
    ContainerCreationError.WhiskError,
    ContainerCreationError.ShuttingDownError,
    ContainerCreationError.UnknownError,
    ContainerCreationError.TimeoutError,
    ContainerCreationError.ZeroNamespaceLimit,
})


@dataclass(frozen=True)
class ContainerCreationAckMessage:
    """Invoker → ``creationAck{sid}``: the container is initialised (no ``error``), or the
    creation failed (``error`` and ``reason``)."""

    transid: TransactionId
    creation_id: str
    invocation_namespace: str
    action: FullyQualifiedEntityName
    revision: str | None
    action_metadata: ActionMetaData
    root_invoker_index: InvokerInstanceId
    scheduler_host: str
    rpc_port: int
    retry_count: int = 0
    error: ContainerCreationError | None = None
    reason: str | None = None

    @classmethod
    def answering(cls, creation: ContainerCreationMessage, invoker: InvokerInstanceId,
                  error: ContainerCreationError | None = None,
                  reason: str | None = None) -> ContainerCreationAckMessage:
        """The ack of ``creation`` from ``invoker``, echoing what the scheduler matches on."""
        return cls(
            transid=creation.transid,
            creation_id=creation.creation_id,
            invocation_namespace=creation.invocation_namespace,
            action=creation.action,
            revision=creation.revision,
            action_metadata=creation.action_metadata,
            root_invoker_index=invoker,
            scheduler_host=creation.scheduler_host,
            rpc_port=creation.rpc_port,
            retry_count=creation.retry_count,
            error=error,
            reason=reason,
        )

    @property
    def succeeded(self) -> bool:
        return self.error is None

    @classmethod
    def from_json(cls, value: Any) -> ContainerCreationAckMessage:
        error = value.get("error") if isinstance(value, dict) else None
        return cls(
            transid=TransactionId.from_json(_field(value, "transid", list)),
            creation_id=_creation_id(value),
            invocation_namespace=_field(value, "invocationNamespace", str),
            action=FullyQualifiedEntityName.from_json(_field(value, "action", dict)),
            revision=_revision(value),
            action_metadata=ActionMetaData.from_json(_field(value, "actionMetaData", dict)),
            root_invoker_index=InvokerInstanceId.from_json(_field(value, "rootInvokerIndex", dict)),
            scheduler_host=_field(value, "schedulerHost", str),
            rpc_port=_port(value, "rpcPort"),
            retry_count=_field(value, "retryCount", int, optional=True) or 0,
            error=ContainerCreationError.parse(error) if error is not None else None,
            reason=_field(value, "reason", str, optional=True),
        )

    @classmethod
    def parse(cls, data: bytes | str | Any) -> ContainerCreationAckMessage:
        return parse_json(data, cls.from_json, "container creation ack")

    def to_json(self) -> JsonObject:
        out: JsonObject = {
            "transid": self.transid.to_json(),
            "creationId": self.creation_id,
            "invocationNamespace": self.invocation_namespace,
            "action": self.action.to_json(),
            "revision": self.revision,
            "actionMetaData": self.action_metadata.to_json(),
            "rootInvokerIndex": self.root_invoker_index.to_json(),
            "schedulerHost": self.scheduler_host,
            "rpcPort": self.rpc_port,
            "retryCount": self.retry_count,
        }
        if self.error is not None:
            out["error"] = self.error.value
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    def serialize(self) -> bytes:
        return serialize(self.to_json())


# --------------------------------------------------------------------------- etcd values


class InvokerStatus(StrEnum):
    """``InvokerState.asString`` (common/Message.scala); the scheduler places work only on ``up``."""

    UP = "up"
    UNHEALTHY = "unhealthy"
    UNRESPONSIVE = "unresponsive"
    DOWN = "down"


@dataclass(frozen=True)
class InvokerResourceMessage:
    """The value of ``whisk/invokers/{N}...``: what the scheduler knows of an invoker.
    Memory in MB (JSON numbers); the scheduler takes ``freeMemory`` as the capacity left."""

    status: InvokerStatus
    free_memory_mb: int
    busy_memory_mb: int
    in_progress_memory_mb: int
    tags: tuple[str, ...] = ()
    dedicated_namespaces: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, value: Any) -> InvokerResourceMessage:
        status = _field(value, "status", str)
        try:
            parsed = InvokerStatus(status)
        except ValueError as error:
            raise MessageError(f"not an invoker status: {status!r}") from error
        return cls(
            status=parsed,
            free_memory_mb=_field(value, "freeMemory", int),
            busy_memory_mb=_field(value, "busyMemory", int),
            in_progress_memory_mb=_field(value, "inProgressMemory", int),
            tags=_strings(value, "tags"),
            dedicated_namespaces=_strings(value, "dedicatedNamespaces"),
        )

    @classmethod
    def parse(cls, data: bytes | str | Any) -> InvokerResourceMessage:
        return parse_json(data, cls.from_json, "invoker resource message")

    def to_json(self) -> JsonObject:
        return {
            "status": self.status.value,
            "freeMemory": self.free_memory_mb,
            "busyMemory": self.busy_memory_mb,
            "inProgressMemory": self.in_progress_memory_mb,
            "tags": list(self.tags),
            "dedicatedNamespaces": list(self.dedicated_namespaces),
        }

    def serialize(self) -> str:
        return serialize(self.to_json()).decode("utf-8")


def _strings(obj: JsonObject, key: str) -> tuple[str, ...]:
    value = _field(obj, key, list)
    if not all(isinstance(item, str) for item in value):
        raise MessageError(f"field {key!r} must be an array of strings")
    return tuple(value)


@dataclass(frozen=True)
class SchedulerEndpoints:
    """The value of a queue's ``.../leader`` key: where its scheduler answers gRPC.
    The third field was ``akkaPort`` before OpenWhisk moved to Pekko, ``pekkoPort`` after;
    the invoker needs neither, so both are read and neither is required."""

    host: str
    rpc_port: int
    remoting_port: int | None = None

    @classmethod
    def from_json(cls, value: Any) -> SchedulerEndpoints:
        remoting = _field(value, "pekkoPort", int, optional=True)
        if remoting is None:
            remoting = _field(value, "akkaPort", int, optional=True)
        host = _field(value, "host", str)
        if not host:
            raise MessageError("field 'host' is empty")
        return cls(host=host, rpc_port=_port(value, "rpcPort"), remoting_port=remoting)

    @classmethod
    def parse(cls, data: bytes | str | Any) -> SchedulerEndpoints:
        return parse_json(data, cls.from_json, "scheduler endpoints")

    @property
    def rpc_target(self) -> str:
        return f"{self.host}:{self.rpc_port}"

    def to_json(self) -> JsonObject:
        out: JsonObject = {"host": self.host, "rpcPort": self.rpc_port}
        if self.remoting_port is not None:
            out["pekkoPort"] = self.remoting_port
        return out
