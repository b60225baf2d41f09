"""The scheduler's side of the ActivationService, for tests: a real gRPC server on
127.0.0.1 whose servicer answers as OpenWhisk's ``ActivationServiceImpl`` with its
``MemoryQueue``s does (S/grpc/ActivationServiceImpl.scala):

* a fetch for a queued action revision waits up to ``hold_s`` for an activation, then
  answers ``NoActivationMessage``;
* a fetch for an action whose queue holds another revision: ``ActionMismatch``;
* a fetch for an action with no queue here: ``NoMemoryQueue``;
* a reschedule puts the activation back in its queue (``isRescheduled``), or answers false.
"""

from __future__ import annotations

import queue
import threading
from concurrent import futures

import grpc

from invoker.embedded.child import HOST
from invoker.fpc import activation_pb2 as pb
from invoker.fpc import activation_pb2_grpc as pb_grpc
from invoker.fpc.activation import (
    ActionMismatch,
    FetchRequest,
    FetchResult,
    NoActivationMessage,
    NoMemoryQueue,
    encode_fetch_response,
)
from invoker.messages import ActivationMessage, FullyQualifiedEntityName, MessageError

QueueKey = tuple[str, str]  # (invocation namespace, action docid)


class FakeActivationService(pb_grpc.ActivationServiceServicer):
    def __init__(self, hold_s: float = 0.3) -> None:
        self.hold_s = hold_s
        self.requests: list[FetchRequest] = []
        self.answer_raw: str | None = None  # answer this text instead (a broken scheduler)
        self._lock = threading.Lock()
        self._queues: dict[QueueKey, tuple[str | None, queue.Queue[ActivationMessage]]] = {}

    def add_queue(self, invocation_namespace: str, action: FullyQualifiedEntityName, revision: str | None) -> None:
        with self._lock:
            self._queues[(invocation_namespace, action.docid)] = (revision, queue.Queue())

    def enqueue(self, invocation_namespace: str, message: ActivationMessage) -> None:
        with self._lock:
            self._queues[(invocation_namespace, message.action.docid)][1].put(message)

    def _queue(self, namespace: str, action: FullyQualifiedEntityName,
               revision: str | None) -> queue.Queue[ActivationMessage] | FetchResult:
        with self._lock:
            found = self._queues.get((namespace, action.docid))
        if found is None:
            return NoMemoryQueue()
        if found[0] != revision:
            return ActionMismatch()
        return found[1]

    def FetchActivation(self, request: pb.FetchRequest, context: grpc.ServicerContext) -> pb.FetchResponse:
        try:
            fetch = FetchRequest.from_proto(request)
        except MessageError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        with self._lock:
            self.requests.append(fetch)
        if self.answer_raw is not None:
            return pb.FetchResponse(activationMessage=self.answer_raw)
        if not fetch.alive:  # a container going away: nothing more for it
            return pb.FetchResponse(activationMessage=encode_fetch_response(NoActivationMessage()))
        found = self._queue(fetch.invocation_namespace, fetch.action, fetch.revision)
        if isinstance(found, queue.Queue):
            try:
                result: FetchResult = found.get(timeout=self.hold_s)
            except queue.Empty:
                result = NoActivationMessage()
        else:
            result = found
        return pb.FetchResponse(activationMessage=encode_fetch_response(result))

    def RescheduleActivation(self, request: pb.RescheduleRequest,
                             context: grpc.ServicerContext) -> pb.RescheduleResponse:
        probe = pb.FetchRequest(transactionId='["r",0]', invocationNamespace=request.invocationNamespace,
                                fqn=request.fqn, rev=request.rev)
        try:
            fetch = FetchRequest.from_proto(probe)
            message = ActivationMessage.parse(request.activationMessage)
        except MessageError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        found = self._queue(fetch.invocation_namespace, fetch.action, fetch.revision)
        if not isinstance(found, queue.Queue):
            return pb.RescheduleResponse(isRescheduled=False)
        found.put(message)
        return pb.RescheduleResponse(isRescheduled=True)


class SchedulerServer:
    """A gRPC server with a ``FakeActivationService`` on 127.0.0.1 (``port``, or one the OS picks)."""

    def __init__(self, service: FakeActivationService | None = None, port: int = 0) -> None:
        self.service = service or FakeActivationService()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_ActivationServiceServicer_to_server(self.service, self._server)
        self.host = HOST
        self.port = self._server.add_insecure_port(f"{HOST}:{port}")  # 0: one the OS picks

    def start(self) -> SchedulerServer:
        self._server.start()
        return self

    def stop(self, grace_s: float | None = None) -> None:
        self._server.stop(grace_s).wait()
