"""What happens to one activation on a container: the ``/init`` and ``/run`` payloads, how
the runtime's answers become OpenWhisk's responses, the activation record and its logs.

The error texts are OpenWhisk's own (``invoker.entities.Messages``) and the mapping of answers to
responses follows ``ContainerProxy.scala`` and ``ActivationResponse.scala``, so a record
written here cannot be told from one the Scala invoker writes. Pure functions of their
arguments: ``ContainerProxy.execute`` makes the calls and hands their outcomes here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from owruntime.guard import split_env

from invoker.clock import now_ms
from invoker.containerpool.container import HttpOutcome
from invoker.containerpool.logs import (
    COLLECTION_ISSUE,
    DEVELOPER_ERROR_NOTE,
    IDLE_TIMEOUT_S,
    LogBuffer,
    note_line,
)
from invoker.entities import ActivationResponse, Messages, WhiskAction, WhiskActivation
from invoker.messages import ActivationMessage


@dataclass
class Job:
    """One activation to run, with what the reactive layer already prepared."""

    msg: ActivationMessage
    action: WhiskAction
    arguments: dict | list  # content with initArgs removed and locked args decrypted
    init_env: dict[str, str]  # initArgs, stringified
    sink: ActivationSink

    @property
    def invocation_namespace(self) -> str:
        return self.msg.user.namespace_name


class ActivationSink(Protocol):
    """Where the proxy reports an activation (implemented by the reactive layer).

    Its methods never raise into the pool and never block on the broker: sends are chained on
    futures, and ``completed`` is idempotent (a second call is logged and ignored), so the pool
    may report a fallback after a failure without acking twice."""

    def result_ready(self, job: Job, activation: WhiskActivation) -> None:
        """The run ended; logs are not collected yet (the blocking ``ResultMessage``)."""

    def completed(self, job: Job, activation: WhiskActivation) -> None:
        """Logs collected: the activation is final (``CompletionMessage`` and the record)."""


@dataclass(frozen=True)
class PoolLimits:
    max_payload_bytes: int = 1024 * 1024
    truncation_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class InitContext:
    """What ``/init`` needs: the action, and who and what it is initialised for. Under the
    classic protocol that is the container's first activation (``for_job``); under FPC the
    container is initialised at its creation, before any activation: no activation id, and no
    API key (each ``/run`` still carries its own)."""

    action: WhiskAction
    namespace: str  # the invocation namespace
    transaction_id: str = ""
    activation_id: str = ""
    api_key: str | None = None
    init_env: Mapping[str, str] = field(default_factory=dict)  # initArgs, stringified

    @classmethod
    def for_job(cls, job: Job) -> InitContext:
        msg = job.msg
        return cls(job.action, msg.user.namespace_name, msg.transid.id, msg.activation_id, msg.user.api_key,
                   job.init_env)


def init_payload(job: Job) -> dict[str, Any]:
    return init_payload_for(InitContext.for_job(job))


def init_payload_for(init: InitContext) -> dict[str, Any]:
    action = init.action
    payload: dict[str, Any] = {
        "name": action.name,
        "binary": action.binary,
        "main": action.main or "main",
    }
    if action.code is not None:
        payload["code"] = action.code
    env, _ = split_env(dict(init.init_env))  # no GPU/MPS or runtime variable: set at creation (stock images too)
    context = _context_of(action, init.namespace, init.activation_id, init.transaction_id, init.api_key)
    env.update({f"__OW_{k.upper()}": v for k, v in context.items()})
    payload["env"] = env
    return payload


def run_payload(job: Job) -> dict[str, Any]:
    payload: dict[str, Any] = {"value": job.arguments}
    msg = job.msg
    payload.update(_context_of(job.action, msg.user.namespace_name, msg.activation_id, msg.transid.id,
                               msg.user.api_key))
    return payload


def _context_of(action: WhiskAction, namespace: str, activation_id: str, transaction_id: str,
                api_key: str | None) -> dict[str, str]:
    context = {
        "namespace": namespace,
        "action_name": action.fully_qualified_name,
        "action_version": action.version,
        "activation_id": activation_id,
        "transaction_id": transaction_id,
        "deadline": str(now_ms() + action.limits.timeout_ms),
    }
    if action.provide_api_key and api_key is not None:
        context["api_key"] = api_key
    return context


def init_failure(outcome: HttpOutcome, timeout_ms: int) -> ActivationResponse | None:
    if outcome.timed_out:
        return ActivationResponse.developer_error(Messages.timed_out(timeout_ms, init=True))
    if outcome.status is None:
        return ActivationResponse.developer_error(Messages.abnormal_init)
    if outcome.ok:
        return None
    body = outcome.body.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "error" in parsed:
        return ActivationResponse.developer_error(parsed["error"])
    return ActivationResponse.developer_error(Messages.invalid_init_response(body))


def run_response(outcome: HttpOutcome, timeout_ms: int, limits: PoolLimits,
                 oom_killed: Callable[[], bool]) -> tuple[ActivationResponse, bool]:
    if outcome.timed_out or (outcome.status is not None and outcome.end_ms - outcome.start_ms >= timeout_ms):
        return ActivationResponse.developer_error(Messages.timed_out(timeout_ms, init=False)), False
    if outcome.status is None:
        if oom_killed():
            return ActivationResponse.developer_error(Messages.memory_exhausted), False
        return ActivationResponse.developer_error(Messages.abnormal_run), False
    length = len(outcome.body) if outcome.length is None else outcome.length  # only limit + 1 bytes are read
    if length > limits.max_payload_bytes:
        prefix = outcome.body[: limits.truncation_bytes].decode("utf-8", errors="ignore")
        message = Messages.truncated(length, limits.max_payload_bytes, prefix)
        return ActivationResponse.application_error(message, length), True
    body = outcome.body.decode("utf-8", errors="replace")
    size = len(body)
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if outcome.ok:
        if isinstance(parsed, dict):
            if "error" in parsed:
                return ActivationResponse(1, parsed, size), True
            return ActivationResponse.success(parsed, size), True
        if isinstance(parsed, list):
            return ActivationResponse.success(parsed, size), True
        return ActivationResponse.developer_error(Messages.invalid_run_response(body), size), False
    if isinstance(parsed, dict) and "error" in parsed:
        return ActivationResponse.developer_error(parsed["error"], size), False
    return ActivationResponse.developer_error(Messages.invalid_run_response(body), size), False


def activation_record(
    job: Job,
    start_ms: int,
    end_ms: int,
    response: ActivationResponse,
    init: HttpOutcome | None,
) -> WhiskActivation:
    action, msg = job.action, job.msg
    return WhiskActivation(
        namespace=msg.user.namespace_name,
        name=action.name,
        subject=msg.user.subject,
        activation_id=msg.activation_id,
        start_ms=start_ms,
        end_ms=end_ms,
        response=response,
        version=action.version,
        annotations=[
            ("limits", action.limits.to_json()),
            ("path", action.path),
            ("kind", action.kind),
        ],
        cause=msg.cause,
        duration_ms=end_ms - start_ms,
    )


def finish_annotations(job: Job, activation: WhiskActivation, init: HttpOutcome | None, start_ms: int) -> None:
    if job.msg.cause is not None:
        activation.annotations.append(("causedBy", "sequence"))
    if init is not None:
        activation.annotations.append(("initTime", init.end_ms - init.start_ms))
    activation.annotations.append(("waitTime", max(0, start_ms - job.msg.transid.start_ms)))
    if job.msg.action.binding is not None:
        activation.annotations.append(("binding", job.msg.action.binding))


def collect_logs(buffer: LogBuffer, job: Job, activation: WhiskActivation) -> bool:
    """Fill ``activation.logs``; False when collection failed (container goes)."""
    limit_mb = job.action.limits.logs_mb
    if limit_mb <= 0:
        buffer.discard()
        return True
    developer_error = activation.response.status_code == 2
    # After a developer error the sentinels may never come (crash, timeout): take
    # what arrives without a long wait; the container is removed anyway.
    collected = buffer.collect(
        limit_bytes=limit_mb * 1024 * 1024,
        wait_for_sentinels=True,
        total_timeout_s=1.0 if developer_error else max(limit_mb, 5) * 2.0,
        idle_timeout_s=0.2 if developer_error else IDLE_TIMEOUT_S,
    )
    activation.logs = collected.lines
    if collected.incomplete and not developer_error:
        activation.logs.append(note_line(COLLECTION_ISSUE))
    if developer_error:
        activation.logs.append(note_line(DEVELOPER_ERROR_NOTE))
    return not collected.incomplete
