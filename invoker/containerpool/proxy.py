"""One container of the pool and its life (OpenWhisk's ``ContainerProxy.scala``).

A proxy is a member of the pool from the moment the pool decides to start a container
(``STARTING``, holding its memory) until the container is gone. It changes its own state,
only through the named transitions below, each checked against ``states.ALLOWED``; the
ones that make an engine call say which. Transitions that change state alone are called
with the pool's lock held (``guard``); those that make an engine call are called without
it and take it around their state changes, so no engine call ever runs under the lock.
Every state's idle deadline is set when the state is entered (``deadlines``).
"""

from __future__ import annotations

import threading
from typing import Any

from owruntime.resident import Residency

from invoker.clock import SYSTEM_CLOCK, Clock
from invoker.containerpool import activation as act
from invoker.containerpool import rules
from invoker.containerpool.activation import Job, PoolLimits
from invoker.containerpool.container import (
    Container,
    ContainerFactory,
    ContainerSpec,
    HttpOutcome,
    SleepReport,
)
from invoker.containerpool.states import (
    ALLOWED,
    CLAIMABLE,
    Deadline,
    IllegalTransition,
    State,
    Timeouts,
    deadlines_for,
)
from invoker.entities import ActivationResponse, WhiskAction, WhiskActivation

_NOTHING_RESIDENT = Residency()


class ContainerProxy:
    """A container plus what the pool knows about it."""

    def __init__(self, kind: str, memory_mb: int, guard: threading.Lock, timeouts: Timeouts,
                 clock: Clock = SYSTEM_CLOCK, gpu: Any = None) -> None:
        self.kind = kind
        self.memory_mb = memory_mb
        self.guard = guard  # the pool's lock: every state change happens under it
        self.timeouts = timeouts
        self.clock = clock
        self.gpu = gpu  # GpuPlacement of a GPU container (invoker.gpu.layer); None on the CPU
        self.container: Container | None = None  # None while STARTING
        self.state = State.STARTING
        self.deadlines: tuple[Deadline, ...] = ()
        self.action: WhiskAction | None = None
        self.namespace: str | None = None
        self.initialized = False
        self.active = 0
        self.max_concurrency = 1
        self.last_used = clock.monotonic()
        self.activations_run = 0
        self.sleep: Any = None  # the pool's record of its sleep while ASLEEP (invoker.containerpool.gpupool)
        self.sleepless = False  # its last /sleep gave nothing back: not tried again until it runs
        # A container a front end created for an action (FPC): its front end decides when it goes,
        # so the janitor never pauses or removes it, and no eviction takes it.
        self.pinned = False
        self.init_lock = threading.Lock()
        self.pause_lock = threading.Lock()  # held across pause, resume and sleep engine calls
        self.start_done = threading.Event()  # the container exists, or its start failed
        self._creator_chosen = False

    def __repr__(self) -> str:
        action = self.action.path if self.action else None
        cid = self.container.id if self.container is not None else "-"
        return f"<ContainerProxy {cid} {self.state.value} {action} active={self.active}>"

    # ------------------------------------------------------------------ what the rules read

    @property
    def is_prewarm(self) -> bool:
        return self.action is None

    @property
    def residency(self) -> Residency:
        """What the runtime last reported resident (nothing before it exists)."""
        return self.container.residency if self.container is not None else _NOTHING_RESIDENT

    def has_capacity(self) -> bool:
        return rules.has_capacity(self)

    # ------------------------------------------------------------------ transitions (lock held)

    def _move(self, new: State) -> None:
        if new not in ALLOWED[self.state]:
            raise IllegalTransition(f"{self!r}: {self.state.value} -> {new.value}")
        self.state = new
        self.deadlines = deadlines_for(new, self.last_used, self.timeouts, rules.sleepable(self))

    def bind(self, action: WhiskAction, namespace: str) -> None:
        """Give a new container, or a stem cell, its action (no engine call: limits apply at /init)."""
        self.action = action
        self.namespace = namespace
        self.max_concurrency = max(1, action.limits.concurrency)
        if self.container is not None:
            self._apply_limits()

    def _apply_limits(self) -> None:
        assert self.container is not None and self.action is not None
        self.container.set_max_concurrency(self.max_concurrency)
        self.container.logs.set_limit(self.action.limits.logs_mb * 1024 * 1024)

    def claim(self) -> None:
        """A job takes one of its concurrency slots. A paused, pausing or starting container stays
        so until the job resumes it (``resume_for_run``) or its start ends (``started``)."""
        if self.state not in CLAIMABLE and self.state not in (State.STARTED, State.ASLEEP):
            raise IllegalTransition(f"{self!r}: claimed while {self.state.value}")
        self.active += 1
        self.last_used = self.clock.monotonic()
        self.sleepless = False  # it may load models now
        if self.state in (State.READY, State.STARTED, State.ASLEEP):
            self._move(State.RUNNING)

    def release(self, reusable: bool) -> bool:
        """A job gives its slot back; True when the container must be removed now."""
        self.active = max(0, self.active - 1)
        self.last_used = self.clock.monotonic()
        alive = self.container is not None and self.container.is_alive()
        if not reusable or not alive or self.state is State.REMOVING:
            if self.active:
                self._move(State.REMOVING)  # removed once its other runs finish
                return False
            return True
        if self.active == 0 and self.state is State.RUNNING:
            self._move(State.READY)
        return False

    def begin_pause(self) -> None:
        """READY -> PAUSING; the pool then runs ``pause`` off the lock."""
        self._move(State.PAUSING)

    def begin_sleep(self) -> bool:
        """READY or PAUSED -> SLEEPING; whether it is paused (``sleep`` resumes it first)."""
        paused = self.state is State.PAUSED
        self._move(State.SLEEPING)
        return paused

    def slept(self, record: Any) -> None:
        """SLEEPING -> ASLEEP, with the pool's record of what it still holds."""
        self.sleep = record
        self._move(State.ASLEEP)

    def stayed_awake(self) -> None:
        """SLEEPING -> READY: its sleep gave nothing back; not tried again until it runs."""
        self.sleepless = True
        self._move(State.READY)

    def woken(self) -> None:
        """The sleep record goes once a claim has grown its GPU charge back."""
        self.sleep = None

    def retire(self) -> None:
        """-> REMOVING; the pool destroys it (``destroy``) once it holds no job."""
        self._move(State.REMOVING)

    def take_start(self) -> bool:
        """Whether the caller is the one job that creates this STARTING container (the first)."""
        first, self._creator_chosen = not self._creator_chosen, True
        return first

    # ------------------------------------------------------------------ engine calls (lock not held)

    def start(self, factory: ContainerFactory, spec: ContainerSpec, ready_timeout_s: float | None = None) -> None:
        """``factory.create``, and for a stem cell that warms up (GPU) ``GET /ready`` until it
        answers: STARTING -> RUNNING (a job's container) or STARTED (a stem cell). Raises what
        the engine raised; ``start_done`` is set either way."""
        try:
            container = factory.create(spec)
            try:
                if ready_timeout_s is not None and container.wait_ready(ready_timeout_s) is None:
                    raise TimeoutError(f"{container.id} did not get ready in {ready_timeout_s:g} s")
                with self.guard:
                    self.container = container
                    removed = self.state is State.REMOVING  # meanwhile: nobody else will destroy it
                    if not removed:
                        if self.action is not None:
                            self._apply_limits()
                        self._move(State.RUNNING if self.active else State.STARTED)
                if removed:
                    container.destroy()
            except BaseException:
                container.destroy()
                raise
        finally:
            self.start_done.set()

    def pause(self) -> bool:
        """``Container.suspend``: PAUSING -> PAUSED; a claim before the call began cancels it
        (-> RUNNING). False when nothing was paused. Raises what the engine raised."""
        with self.pause_lock:
            with self.guard:
                if self.state is not State.PAUSING:
                    return False  # removed meanwhile
                if self.active:
                    self._move(State.RUNNING)
                    return False
            assert self.container is not None
            self.container.suspend()
            with self.guard:
                if self.state is State.PAUSING:
                    self._move(State.PAUSED)  # claimed meanwhile: that job resumes it
            return True

    def resume_for_run(self) -> bool:
        """Make a claimed container runnable: ``Container.resume`` if paused (PAUSED ->
        RUNNING), after any pause or sleep under way. False when it cannot run."""
        assert self.container is not None
        if self.state not in (State.PAUSING, State.PAUSED):
            # The warm path takes no lock: while this job holds its claim nothing can start a
            # pause (only an idle container is paused), so the state cannot become either.
            return self.container.is_alive()
        with self.pause_lock:
            with self.guard:
                if self.state is State.PAUSING:
                    self._move(State.RUNNING)  # its pause never reached the engine
                paused = self.state is State.PAUSED
            if paused:
                try:
                    self.container.resume()
                except Exception:
                    return False
                with self.guard:
                    if self.state is State.PAUSED:
                        self._move(State.RUNNING)
        return self.container.is_alive()

    def sleep_call(self, resume_first: bool, timeout_s: float) -> SleepReport:
        """``Container.resume`` if it was paused, then ``POST /sleep``. Raises what the engine raised."""
        assert self.container is not None
        with self.pause_lock:
            if resume_first:
                self.container.resume()
            return self.container.sleep(timeout_s)

    def destroy(self) -> None:
        """``Container.destroy`` (nothing while it was never created)."""
        if self.container is not None:
            self.container.destroy()

    # ------------------------------------------------------------------ one activation

    def initialize(self, init: act.InitContext, limits: PoolLimits) -> ActivationResponse | None:
        """``/init`` before any activation (a container created for an action under FPC): None
        once it is initialised, else the developer error ``/init`` answered."""
        assert self.container is not None
        timeout_ms = init.action.limits.timeout_ms
        with self.init_lock:
            if self.initialized:
                return None
            outcome = self.container.initialize(act.init_payload_for(init), timeout_ms / 1000,
                                                max_body=limits.max_payload_bytes)
            failure = act.init_failure(outcome, timeout_ms)
            self.initialized = failure is None
            return failure

    def execute(self, job: Job, limits: PoolLimits) -> tuple[WhiskActivation, bool]:
        """Run one activation; returns the final activation and whether the container may be
        reused. Reports the result to ``job.sink`` as soon as it is known."""
        assert self.container is not None
        container = self.container
        action = job.action
        timeout_ms = action.limits.timeout_ms
        init: HttpOutcome | None = None
        with self.init_lock:
            if not self.initialized:
                init = container.initialize(act.init_payload(job), timeout_ms / 1000,
                                            max_body=limits.max_payload_bytes)
                failure = act.init_failure(init, timeout_ms)
                if failure is None:
                    self.initialized = True
        if init is not None and not self.initialized:
            activation = act.activation_record(job, init.start_ms, init.end_ms, failure, init)
            activation.annotations.append(("timeout", init.timed_out))
            act.finish_annotations(job, activation, init, init.start_ms)
            job.sink.result_ready(job, activation)
            act.collect_logs(container.logs, job, activation)
            job.sink.completed(job, activation)
            return activation, False

        run = container.run(act.run_payload(job), timeout_ms / 1000, max_body=limits.max_payload_bytes)
        response, reusable = act.run_response(run, timeout_ms, limits, self._oom_killed)
        start = init.start_ms if init is not None else run.start_ms
        activation = act.activation_record(job, start, run.end_ms, response, init)
        timed_out = run.timed_out or (run.end_ms - run.start_ms) >= timeout_ms
        activation.annotations.append(("timeout", timed_out))
        act.finish_annotations(job, activation, init, start)
        self.activations_run += 1
        job.sink.result_ready(job, activation)
        if not act.collect_logs(container.logs, job, activation) and activation.response.status_code != 2:
            reusable = False
        job.sink.completed(job, activation)
        return activation, reusable

    def _oom_killed(self) -> bool:
        # Docker reports OOMKilled a moment after the connection drops: poll up to 2 s.
        assert self.container is not None
        deadline = self.clock.monotonic() + 2.0
        while True:
            if self.container.was_oom_killed():
                return True
            if self.container.is_alive() or self.clock.monotonic() > deadline:
                return False
            self.clock.sleep(0.1)
