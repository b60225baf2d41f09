"""One container and its life: the per-container state machine and what happens
to one activation on it (``/init`` once, ``/run``, logs, result mapping).

The state names are the Scala ``ContainerProxy``'s (PROTOCOL.md §6.1); the error
texts and status codes are those of §6.6, kept in ``ERRORS`` so tests and code
share one wording.
"""

from __future__ import annotations

import enum
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from owruntime.guard import split_env

from invoker.clock import SYSTEM_CLOCK, Clock
from invoker.containerpool.container import Container, HttpOutcome, now_ms
from invoker.containerpool.logs import (
    COLLECTION_ISSUE,
    DEVELOPER_ERROR_NOTE,
    IDLE_TIMEOUT_S,
    note_line,
)
from invoker.entities import (
    ActivationResponse,
    WhiskAction,
    WhiskActivation,
)
from invoker.messages import ActivationMessage


class Messages:
    """OpenWhisk's own error texts (``Messages.scala``), word for word."""

    @staticmethod
    def timed_out(timeout_ms: int, init: bool) -> str:
        suffix = " during initialization." if init else "."
        return f"The action exceeded its time limits of {timeout_ms} milliseconds{suffix}"

    @staticmethod
    def truncated(length: int, limit: int, prefix: str) -> str:
        return (
            f"The action produced a response that exceeded the allowed length: {length} > {limit} bytes. "
            f"The truncated response was: {prefix}"
        )

    @staticmethod
    def invalid_run_response(body: str) -> str:
        if body:
            return f"The action did not produce a valid JSON or JSON Array response: {body}"
        return "The action did not produce a valid JSON or JSON Array response."

    @staticmethod
    def invalid_init_response(body: str) -> str:
        if body:
            return f"The action failed during initialization: {body}"
        return "The action failed during initialization."

    memory_exhausted = "The action exhausted its memory and was aborted."
    abnormal_run = "The action did not produce a valid response and exited unexpectedly."
    abnormal_init = "The action did not initialize and exited unexpectedly."
    resource_error = "Failed to provision resources to run the action."
    action_not_found = "Action could not be found or may have been deleted."
    action_incompatible = "Action version is not compatible and cannot be invoked."
    action_fetch_failed = "Action could not be fetched."
    blacklisted = "The action was not invoked due to a blacklisted namespace."


class State(enum.Enum):
    STARTING = "starting"
    STARTED = "started"  # prewarmed stem cell, not initialised
    RUNNING = "running"  # at least one activation in flight
    READY = "ready"  # warm and idle
    PAUSED = "paused"
    SLEEPING = "sleeping"  # GPU: ``POST /sleep`` under way; its charge is still whole
    ASLEEP = "asleep"  # GPU: models in host memory; its charge shrunk to what it still holds
    REMOVING = "removing"


class IllegalTransition(RuntimeError):
    """A state change the table ``ALLOWED`` does not list: a bug in the pool."""


# Every state change a container may make. Waking has no state of its own: a claim of an ASLEEP
# container grows its GPU charge and moves it to RUNNING under one hold of the pool's lock, and
# its next /run wakes the models (the protocol has no wake call), so there is no in-between
# for anyone to see. A paused container is resumed by the sleep task before ``/sleep``.
ALLOWED: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.RUNNING, State.REMOVING}),
    State.STARTED: frozenset({State.RUNNING, State.REMOVING}),
    State.RUNNING: frozenset({State.RUNNING, State.READY, State.REMOVING}),
    State.READY: frozenset({State.RUNNING, State.PAUSED, State.SLEEPING, State.REMOVING}),
    State.PAUSED: frozenset({State.RUNNING, State.SLEEPING, State.REMOVING}),
    State.SLEEPING: frozenset({State.ASLEEP, State.READY, State.REMOVING}),
    State.ASLEEP: frozenset({State.RUNNING, State.REMOVING}),
    State.REMOVING: frozenset({State.REMOVING}),
}


@dataclass
class Job:
    """One activation to run, with what the reactive layer already prepared."""

    msg: ActivationMessage
    action: WhiskAction
    arguments: dict | list  # content with initArgs removed and locked args decrypted
    init_env: dict[str, str]  # initArgs, stringified
    sink: ActivationSink
    received_ms: int = field(default_factory=now_ms)

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


class ContainerProxy:
    """A container plus the pool's bookkeeping about it."""

    def __init__(self, container: Container, kind: str, memory_mb: int, prewarmed: bool,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.container = container
        self.clock = clock
        self.kind = kind
        self.memory_mb = memory_mb
        self.state = State.STARTED if prewarmed else State.STARTING
        self.action: WhiskAction | None = None
        self.namespace: str | None = None
        self.initialized = False
        self.active = 0
        self.max_concurrency = 1
        self.last_used = clock.monotonic()
        self.created = clock.monotonic()
        self.init_lock = threading.Lock()
        self.pause_lock = threading.Lock()
        self.suspended = False  # the backend really paused it (state PAUSED may precede this)
        self.activations_run = 0
        self.gpu = None  # GpuPlacement of a GPU container (invoker.gpu.layer); None on the CPU
        self.sleep = None  # the pool's record of its sleep (state ASLEEP); None awake
        self.sleepless = False  # its last /sleep gave nothing back: not tried again until it runs

    def move_to(self, new: State) -> None:
        """The one way a container changes state (under the pool's lock): checked against
        ``ALLOWED``, so a path the table does not know fails loudly instead of drifting."""
        if new not in ALLOWED[self.state]:
            raise IllegalTransition(f"{self!r}: {self.state.value} -> {new.value}")
        self.state = new

    def __repr__(self) -> str:
        action = self.action.path if self.action else None
        return f"<ContainerProxy {self.container.id} {self.state.value} {action} active={self.active}>"

    @property
    def is_prewarm(self) -> bool:
        return self.action is None

    def bind(self, action: WhiskAction, namespace: str) -> None:
        self.action = action
        self.namespace = namespace
        self.max_concurrency = max(1, action.limits.concurrency)
        self.container.set_max_concurrency(self.max_concurrency)
        self.container.logs.set_limit(action.limits.logs_mb * 1024 * 1024)

    def has_capacity(self) -> bool:
        # Asleep or going to sleep: placed on only after its GPU charge has grown (the pool).
        return self.active < self.max_concurrency and self.state not in (State.REMOVING, State.SLEEPING,
                                                                         State.ASLEEP)

    # ------------------------------------------------------------------ the activation

    def execute(self, job: Job, limits: PoolLimits) -> tuple[WhiskActivation, bool]:
        """Run one activation; returns the final activation and whether the container
        may be reused. Reports the result to ``job.sink`` as soon as it is known."""
        action = job.action
        timeout_ms = action.limits.timeout_ms
        init_interval: HttpOutcome | None = None
        with self.init_lock:
            if not self.initialized:
                init_interval = self.container.initialize(self._init_payload(job), timeout_ms / 1000,
                                                          max_body=limits.max_payload_bytes)
                failure = self._init_failure(init_interval, timeout_ms)
                if failure is None:
                    self.initialized = True
        if init_interval is not None and not self.initialized:
            activation = self._activation(job, init_interval.start_ms, init_interval.end_ms, failure, init_interval)
            activation.annotations.append(("timeout", init_interval.timed_out))
            self._finish_annotations(job, activation, init_interval, init_interval.start_ms)
            job.sink.result_ready(job, activation)
            self._collect_logs(job, activation)
            job.sink.completed(job, activation)
            return activation, False

        run = self.container.run(self._run_payload(job), timeout_ms / 1000, max_body=limits.max_payload_bytes)
        response, reusable = self._run_response(run, timeout_ms, limits)
        start = init_interval.start_ms if init_interval is not None else run.start_ms
        activation = self._activation(job, start, run.end_ms, response, init_interval)
        timed_out = run.timed_out or (run.end_ms - run.start_ms) >= timeout_ms
        activation.annotations.append(("timeout", timed_out))
        self._finish_annotations(job, activation, init_interval, start)
        self.activations_run += 1
        job.sink.result_ready(job, activation)
        if not self._collect_logs(job, activation) and activation.response.status_code != 2:
            reusable = False
        job.sink.completed(job, activation)
        return activation, reusable

    def _init_payload(self, job: Job) -> dict[str, Any]:
        action = job.action
        payload: dict[str, Any] = {
            "name": action.name,
            "binary": action.binary,
            "main": action.main or "main",
        }
        if action.code is not None:
            payload["code"] = action.code
        env, _ = split_env(job.init_env)  # no GPU/MPS or runtime variable: set at creation (stock images too)
        env.update(self._context(job, prefix=True))
        payload["env"] = env
        return payload

    def _run_payload(self, job: Job) -> dict[str, Any]:
        payload: dict[str, Any] = {"value": job.arguments}
        payload.update(self._context(job, prefix=False))
        return payload

    def _context(self, job: Job, prefix: bool) -> dict[str, str]:
        action, msg = job.action, job.msg
        context = {
            "namespace": msg.user.namespace_name,
            "action_name": action.fully_qualified_name,
            "action_version": action.version,
            "activation_id": msg.activation_id,
            "transaction_id": msg.transid.id,
            "deadline": str(now_ms() + action.limits.timeout_ms),
        }
        api_key = msg.user.api_key
        if action.provide_api_key and api_key is not None:
            context["api_key"] = api_key
        if prefix:
            return {f"__OW_{k.upper()}": v for k, v in context.items()}
        return context

    def _init_failure(self, outcome: HttpOutcome, timeout_ms: int) -> ActivationResponse | None:
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

    def _run_response(self, outcome: HttpOutcome, timeout_ms: int, limits: PoolLimits) -> tuple[ActivationResponse, bool]:
        if outcome.timed_out or (outcome.status is not None and outcome.end_ms - outcome.start_ms >= timeout_ms):
            return ActivationResponse.developer_error(Messages.timed_out(timeout_ms, init=False)), False
        if outcome.status is None:
            if self._oom_killed():
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

    def _oom_killed(self) -> bool:
        # Docker reports OOMKilled a moment after the connection drops: poll up to 2 s.
        deadline = self.clock.monotonic() + 2.0
        while True:
            if self.container.was_oom_killed():
                return True
            if self.container.is_alive() or self.clock.monotonic() > deadline:
                return False
            self.clock.sleep(0.1)

    def _activation(
        self,
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

    def _finish_annotations(self, job: Job, activation: WhiskActivation, init: HttpOutcome | None, start_ms: int) -> None:
        if job.msg.cause is not None:
            activation.annotations.append(("causedBy", "sequence"))
        if init is not None:
            activation.annotations.append(("initTime", init.end_ms - init.start_ms))
        activation.annotations.append(("waitTime", max(0, start_ms - job.msg.transid.start_ms)))
        if job.msg.action.binding is not None:
            activation.annotations.append(("binding", job.msg.action.binding))

    def _collect_logs(self, job: Job, activation: WhiskActivation) -> bool:
        """Fill ``activation.logs``; False when collection failed (container goes)."""
        limit_mb = job.action.limits.logs_mb
        buffer = self.container.logs
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
