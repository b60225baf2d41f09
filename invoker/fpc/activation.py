"""The client of the scheduler's ``ActivationService`` (gRPC): where FPC containers pull work.

A container's pull loop (the pool's, not here) calls ``fetch`` once per concurrency slot and
acts on what comes back (I/containerpool/v2/ActivationClientProxy.scala):

* ``ActivationMessage``    run it;
* ``NoActivationMessage``  the long poll ended empty: fetch again (or let the container idle);
* ``NoMemoryQueue``        this scheduler has no queue for the action: look the queue leader
                           up again in etcd (``registry.read_queue_leader``) and fetch there;
* ``ActionMismatch``       the action was updated: remove the container.

A fetch with ``alive=False`` is the container's last (it is going away); ``reschedule`` gives
back an activation that a failed container held. The response envelope is
``{"message": ...}`` where ``...`` is an ``ActivationMessage`` or a queue error carrying a
``type`` field (S/grpc/ActivationServiceImpl.scala, S/queue/QueueManager.scala).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.wrappers_pb2 import Int64Value

from invoker.errors import InvokerError
from invoker.fpc import activation_pb2 as pb
from invoker.fpc import activation_pb2_grpc as pb_grpc
from invoker.fpc.messages import parse_json
from invoker.messages import (
    ActivationMessage,
    FullyQualifiedEntityName,
    MessageError,
    TransactionId,
    serialize,
)

__all__ = [
    "ActionMismatch",
    "ActivationClient",
    "FetchRequest",
    "FetchResult",
    "NoActivationMessage",
    "NoMemoryQueue",
    "SchedulerError",
    "SchedulerTimeout",
    "SchedulerUnavailable",
    "decode_fetch_response",
    "encode_fetch_response",
]

DEFAULT_FETCH_TIMEOUT_S = 30.0  # above the scheduler's own 5 s ask timeout for a fetch
DEFAULT_RESCHEDULE_TIMEOUT_S = 10.0


class SchedulerError(InvokerError):
    """A call to the scheduler's ActivationService did not complete."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class SchedulerUnavailable(SchedulerError):
    """The scheduler cannot be reached (gone, not listening, connection dropped)."""


class SchedulerTimeout(SchedulerError):
    """The scheduler did not answer within the call's deadline."""


# --------------------------------------------------------------------------- the envelope


@dataclass(frozen=True)
class NoActivationMessage:
    """The long poll ended with no activation for this container."""

    reason: str = "no activation message exist"


@dataclass(frozen=True)
class NoMemoryQueue:
    """This scheduler has no queue for the action (it moved, or it ended)."""

    reason: str = "no memory queue exist"


@dataclass(frozen=True)
class ActionMismatch:
    """The queue is for another revision of the action: this container is stale."""

    reason: str = "action version does not match"


QueueError = NoActivationMessage | NoMemoryQueue | ActionMismatch
FetchResult = ActivationMessage | QueueError

# type name → (class, the field its text is under), as MemoryQueueErrorSerdes writes them.
_QUEUE_ERRORS: dict[str, tuple[type[QueueError], str]] = {
    "NoActivationMessage": (NoActivationMessage, "noActivationMessage"),
    "NoMemoryQueue": (NoMemoryQueue, "noMemoryQueue"),
    "ActionMismatch": (ActionMismatch, "actionMisMatch"),  # sic: OpenWhisk's spelling
}


def _fetch_result(value: Any) -> FetchResult:
    if not isinstance(value, dict) or "message" not in value:
        raise MessageError("a fetch response is a JSON object holding 'message'")
    message = value["message"]
    if not isinstance(message, dict):
        raise MessageError(f"field 'message' must be an object, not {type(message).__name__}")
    if "type" not in message:
        return ActivationMessage.from_json(message)
    kind = message["type"]
    if kind not in _QUEUE_ERRORS:
        raise MessageError(f"unknown queue error type {kind!r}")
    cls, field = _QUEUE_ERRORS[kind]
    reason = message.get(field)
    if not isinstance(reason, str):
        raise MessageError(f"queue error {kind} without its text {field!r}")
    return cls(reason)


def decode_fetch_response(text: str | bytes) -> FetchResult:
    """What a ``FetchResponse.activationMessage`` holds; raises only ``MessageError``."""
    return parse_json(text, _fetch_result, "fetch response")


def encode_fetch_response(result: FetchResult) -> str:
    """The scheduler's side of ``decode_fetch_response`` (for schedulers in tests)."""
    if isinstance(result, ActivationMessage):
        message = result.to_json()
    else:
        kind = type(result).__name__
        message = {_QUEUE_ERRORS[kind][1]: result.reason, "type": kind}
    return serialize({"message": message}).decode("utf-8")


# --------------------------------------------------------------------------- the request


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class FetchRequest:
    """One long poll for one container's slot. ``revision`` None is the empty revision."""

    invocation_namespace: str
    action: FullyQualifiedEntityName
    revision: str | None
    container_id: str
    warmed: bool = False
    last_duration_ms: int | None = None
    alive: bool = True
    transid: TransactionId | None = None  # a fresh one per fetch when None

    def to_proto(self, now_ms: int) -> pb.FetchRequest:
        transid = self.transid or TransactionId.new(uuid.uuid4().hex, now_ms)
        request = pb.FetchRequest(
            transactionId=_json_text(transid.to_json()),
            invocationNamespace=self.invocation_namespace,
            fqn=_json_text(self.action.to_json()),
            rev=_json_text(self.revision),
            containerId=self.container_id,
            warmed=self.warmed,
            alive=self.alive,
        )
        if self.last_duration_ms is not None:
            request.lastDuration.CopyFrom(Int64Value(value=self.last_duration_ms))
        return request

    @classmethod
    def from_proto(cls, request: pb.FetchRequest) -> FetchRequest:
        """The scheduler's reading of a request (for schedulers in tests); ``MessageError``."""
        def read(request: pb.FetchRequest) -> FetchRequest:
            revision = json.loads(request.rev)
            if revision is not None and not isinstance(revision, str):
                raise MessageError(f"rev is not a JSON string: {request.rev!r}")
            return cls(
                invocation_namespace=request.invocationNamespace,
                action=FullyQualifiedEntityName.from_json(json.loads(request.fqn)),
                revision=revision,
                container_id=request.containerId,
                warmed=request.warmed,
                last_duration_ms=request.lastDuration.value if request.HasField("lastDuration") else None,
                alive=request.alive,
                transid=TransactionId.from_json(json.loads(request.transactionId)),
            )
        return parse_json(request, read, "fetch request")


# --------------------------------------------------------------------------- the client


def _scheduler_error(error: grpc.RpcError, what: str, target: str) -> SchedulerError:
    code = error.code() if isinstance(error, grpc.Call) else None
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    message = f"{what} at scheduler {target}: {code.name if code else 'error'}: {details}"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return SchedulerTimeout(message, code)
    if code is grpc.StatusCode.UNAVAILABLE:
        return SchedulerUnavailable(message, code)
    return SchedulerError(message, code)


class ActivationClient:
    """A channel to one scheduler's ActivationService (plain text, as
    ``whisk.scheduler.grpc.tls`` = false, OpenWhisk's default). Thread-safe: many pull loops
    may share it. ``close`` ends the channel and any call in flight."""

    def __init__(self, host: str, port: int, *, clock_ms: Callable[[], int] | None = None) -> None:
        self.target = f"{host}:{port}"
        self._channel = grpc.insecure_channel(self.target)
        self._stub = pb_grpc.ActivationServiceStub(self._channel)
        self._clock_ms = clock_ms or _now_ms

    def fetch(self, request: FetchRequest, timeout_s: float = DEFAULT_FETCH_TIMEOUT_S) -> FetchResult:
        """One long poll. Raises ``SchedulerTimeout``/``SchedulerUnavailable``/``SchedulerError``
        when the call fails, ``MessageError`` when the answer cannot be read."""
        try:
            response = self._stub.FetchActivation(request.to_proto(self._clock_ms()), timeout=timeout_s)
        except grpc.RpcError as error:
            raise _scheduler_error(error, "fetch", self.target) from error
        return decode_fetch_response(response.activationMessage)

    def reschedule(self, invocation_namespace: str, action: FullyQualifiedEntityName, revision: str | None,
                   message: ActivationMessage, timeout_s: float = DEFAULT_RESCHEDULE_TIMEOUT_S) -> bool:
        """Give ``message`` back to its queue; whether the scheduler took it."""
        request = pb.RescheduleRequest(
            invocationNamespace=invocation_namespace,
            fqn=_json_text(action.to_json()),
            rev=_json_text(revision),
            activationMessage=message.serialize().decode("utf-8"),
        )
        try:
            response = self._stub.RescheduleActivation(request, timeout=timeout_s)
        except grpc.RpcError as error:
            raise _scheduler_error(error, "reschedule", self.target) from error
        return response.isRescheduled

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ActivationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _now_ms() -> int:
    return int(time.time() * 1000)
