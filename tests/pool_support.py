"""Driving a ``ContainerPool`` directly in tests: actions, jobs, and a sink that collects
what the pool reports (``from pool_support import ...``; tests/ is on sys.path)."""

from __future__ import annotations

import threading
import time

from invoker.containerpool.activation import Job
from invoker.containerpool.pool import ImageResolver
from invoker.embedded.controller import new_identity
from invoker.entities import WhiskAction, WhiskActivation, action_document
from invoker.messages import (
    ActivationMessage,
    ControllerInstanceId,
    FullyQualifiedEntityName,
    TransactionId,
)

SLEEPY = "import time\ndef main(args):\n    time.sleep(args.get('sleep', 0))\n    return {'ok': True}\n"


class PythonOnly(ImageResolver):
    """The process backend runs the project's Python runtime for every python kind."""

    def image_for(self, kind: str) -> str:
        if not kind.startswith("python"):
            raise KeyError(kind)
        return "owruntime"


class Recorder:
    """Collects what the pool reports; a test's window into the sink protocol."""

    def __init__(self) -> None:
        self.results: dict[str, WhiskActivation] = {}
        self.done = threading.Condition()

    def result_ready(self, job, activation) -> None:
        pass

    def completed(self, job, activation) -> None:
        with self.done:
            self.results[job.msg.activation_id] = activation
            self.done.notify_all()

    def wait(self, n: int, timeout_s: float = 30) -> None:
        """Until ``n`` activations have completed."""
        deadline = time.monotonic() + timeout_s
        with self.done:
            while len(self.results) < n:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"only {len(self.results)} of {n} finished"
                self.done.wait(remaining)

    def wait_for(self, job: Job, timeout_s: float = 60) -> WhiskActivation:
        deadline = time.monotonic() + timeout_s
        with self.done:
            while job.msg.activation_id not in self.results:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"activation {job.msg.activation_id} did not finish"
                self.done.wait(remaining)
            return self.results[job.msg.activation_id]

    def result(self, job: Job, timeout_s: float = 60) -> dict:
        activation = self.wait_for(job, timeout_s)
        assert activation.response.status_code == 0, activation.response.result
        return activation.response.result


def make_action(name: str, memory: int = 256, concurrency: int = 1, code: str = SLEEPY, rev: str = "1-a",
                kind: str = "python:3", annotations: list[dict] | None = None, **limits: int) -> WhiskAction:
    """An action document as the store holds it; ``limits``: more of them (timeout, logs)."""
    doc = action_document("guest", name, kind, None, False)
    doc["limits"].update(memory=memory, concurrency=concurrency, **limits)
    doc["_rev"] = rev
    if annotations is not None:
        doc["annotations"] = annotations
    return WhiskAction.from_document(doc, code)


_user = new_identity()


def job(action: WhiskAction, sink: Recorder, args: dict | None = None, user=_user) -> Job:
    msg = ActivationMessage(
        transid=TransactionId.new("t" * 32, int(time.time() * 1000)),
        action=FullyQualifiedEntityName("guest", action.name, "0.0.1"),
        revision=action.rev, user=user, activation_id=f"{time.time_ns():032x}"[-32:],
        root_controller_index=ControllerInstanceId("0"), blocking=True,
    )
    return Job(msg=msg, action=action, arguments=args or {}, init_env={}, sink=sink)
