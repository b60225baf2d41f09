"""One container created for an action under FPC, pulling its work from the scheduler
(I/containerpool/v2/ActivationClientProxy.scala): one long poll per concurrency slot.

What a fetch answers:

* ``ActivationMessage``    run it on the container (``ContainerPool.run_on``), then fetch again;
* ``NoActivationMessage``  nothing queued: fetch again;
* ``NoMemoryQueue``        the queue moved or ended: its leader is read again from etcd, and the
                           loop reconnects there; no leader after a few tries: the container goes;
* ``ActionMismatch``       the action changed: the container goes.

A container that cannot take a fetched activation (it died, or is being removed) gives it back
(``RescheduleActivation``); if the scheduler does not take it, it is answered with a whisk error.
When the last slot ends, one last fetch says ``alive=false`` and the owner removes the container.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from invoker.clock import now_ms
from invoker.containerpool.creation import MemberGone
from invoker.containerpool.pool import ContainerPool
from invoker.containerpool.proxy import ContainerProxy
from invoker.entities import ActivationResponse, Messages, WhiskAction, instant_activation
from invoker.fpc.activation import (
    ActionMismatch,
    ActivationClient,
    FetchRequest,
    NoActivationMessage,
    NoMemoryQueue,
    SchedulerError,
)
from invoker.fpc.messages import SchedulerEndpoints
from invoker.frontends.actions import build_job
from invoker.frontends.completions import Acknowledgements, Completions
from invoker.messages import ActivationMessage, FullyQualifiedEntityName, MessageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PullSettings:
    fetch_timeout_s: float = 30.0
    retry_delay_s: float = 1.0  # after a failed fetch, before the next
    leader_tries: int = 3  # NoMemoryQueue answers without a queue leader before the container goes
    unreachable_s: float = 60.0  # fetches failing this long: the scheduler is gone, and so is the container


@dataclass(frozen=True)
class ContainerTarget:
    """Which queue a container pulls from: what the creation message named."""

    invocation_namespace: str
    action: FullyQualifiedEntityName
    revision: str | None
    scheduler: SchedulerEndpoints


class PullingContainer:
    """A created pool member and its pull loops. ``start``, then ``stop``; ``on_gone`` is called
    once, after the last loop ended, whatever ended it."""

    def __init__(self, pool: ContainerPool, proxy: ContainerProxy, action: WhiskAction, target: ContainerTarget,
                 completions: Completions, find_leader: Callable[[], SchedulerEndpoints | None],
                 on_gone: Callable[[PullingContainer], None], settings: PullSettings = PullSettings()) -> None:
        self.pool = pool
        self.proxy = proxy
        self.action = action
        self.target = target
        self.completions = completions
        self.find_leader = find_leader
        self.on_gone = on_gone
        self.settings = settings
        self.container_id = proxy.container.id if proxy.container is not None else "-"
        self._lock = threading.Lock()
        self._client = ActivationClient(target.scheduler.host, target.scheduler.rpc_port)
        self._stop = threading.Event()
        slots = max(1, action.limits.concurrency)
        self._running = slots
        self._threads = [threading.Thread(target=self._slot, name=f"fpc-pull {self.container_id}/{i}", daemon=True)
                         for i in range(slots)]
        self.runs = 0

    def __repr__(self) -> str:
        return f"<PullingContainer {self.container_id} {self.action.path} from {self._client.target}>"

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """End the loops (a fetch in flight is cut short); ``on_gone`` follows."""
        self._stop.set()
        with self._lock:
            client = self._client
        client.close()

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ one slot

    def _slot(self) -> None:
        try:
            self._pull()
        except BaseException:  # a loop must never die unheard
            log.exception("%r: pull loop failed; the container goes", self)
            self._stop.set()
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self._finish()

    def _pull(self) -> None:
        last_duration: int | None = None
        no_leader = 0
        failing_since: float | None = None
        while not self._stop.is_set():
            try:
                result = self._current().fetch(self._request(last_duration), self.settings.fetch_timeout_s)
            except (SchedulerError, MessageError) as error:
                if self._stop.is_set():
                    return
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since >= self.settings.unreachable_s:
                    log.error("%r: fetches failing for %.0f s (%s); removing the container", self,
                              now - failing_since, error)
                    self._stop.set()
                    return
                log.warning("%r: fetch failed: %s", self, error)
                self._stop.wait(self.settings.retry_delay_s)
                continue
            failing_since = None
            if isinstance(result, ActivationMessage):
                no_leader = 0
                started = time.monotonic()
                if not self._run(result):
                    return
                last_duration = int((time.monotonic() - started) * 1000)
            elif isinstance(result, NoActivationMessage):
                no_leader = 0
            elif isinstance(result, ActionMismatch):
                log.info("%r: the action changed (%s); removing the container", self, result.reason)
                self._stop.set()
            elif isinstance(result, NoMemoryQueue):
                no_leader = 0 if self._reconnect() else no_leader + 1
                if no_leader >= self.settings.leader_tries:
                    log.info("%r: no queue for the action any more; removing the container", self)
                    self._stop.set()
                elif no_leader:
                    self._stop.wait(self.settings.retry_delay_s)

    def _request(self, last_duration: int | None, alive: bool = True) -> FetchRequest:
        t = self.target
        return FetchRequest(t.invocation_namespace, t.action, t.revision, self.container_id,
                            last_duration_ms=last_duration, alive=alive)

    def _current(self) -> ActivationClient:
        with self._lock:
            return self._client

    def _reconnect(self) -> bool:
        """After ``NoMemoryQueue``: pull from the queue's leader now; False when there is none."""
        try:
            leader = self.find_leader()
        except Exception as error:  # etcd away: try again at the next answer
            log.warning("%r: cannot read the queue leader: %s", self, error)
            return False
        if leader is None:
            return False
        with self._lock:
            if self._stop.is_set() or self._client.target == leader.rpc_target:
                return True
            old, self._client = self._client, ActivationClient(leader.host, leader.rpc_port)
        log.info("%r: the queue moved; pulling from %s", self, leader.rpc_target)
        old.close()
        return True

    # ------------------------------------------------------------------ one activation

    def _run(self, msg: ActivationMessage) -> bool:
        """Run a fetched activation; False when the container can take no more."""
        if msg.action.docid != self.target.action.docid:
            # The scheduler answers for this queue only: anything else is not ours to run.
            log.error("%r: fetched activation %s is for %s; giving it back", self, msg.activation_id,
                      msg.action.docid)
            self._give_back(msg)
            return True
        sink = Acknowledgements(self.completions, msg, end=lambda: None)
        try:
            reusable = self.pool.run_on(self.proxy, build_job(msg, self.action, sink))
        except MemberGone as error:
            log.warning("%r: cannot run %s (%s); giving it back", self, msg.activation_id, error)
            self._give_back(msg)
            self._stop.set()
            return False
        self.runs += 1
        if not reusable:
            log.info("%r: the container cannot be reused after %s; it goes", self, msg.activation_id)
            self._stop.set()
        return reusable

    def _give_back(self, msg: ActivationMessage, client: ActivationClient | None = None) -> None:
        t = self.target
        try:
            if (client or self._current()).reschedule(t.invocation_namespace, t.action, t.revision, msg):
                return
            log.error("%r: the scheduler did not take %s back", self, msg.activation_id)
        except SchedulerError as error:
            log.error("%r: could not give %s back: %s", self, msg.activation_id, error)
        # Nobody else will run it: answer it, so its caller is not left waiting.
        response = ActivationResponse.whisk_error(Messages.resource_error)
        sink = Acknowledgements(self.completions, msg, end=lambda: None)
        sink.completed_activation(instant_activation(msg, response, None, now_ms()), fallback=True)

    def _finish(self) -> None:
        """The last loop ended: say ``alive=false`` (best effort, on a channel of its own: ``stop``
        closed the loops' one), then hand the container back."""
        try:
            with self._lock:
                self._client.close()
                target = self._client.target
            host, _, port = target.rpartition(":")
            with ActivationClient(host, int(port)) as last:
                try:
                    result = last.fetch(self._request(None, alive=False), timeout_s=2.0)
                except (SchedulerError, MessageError) as error:
                    log.debug("%r: the last fetch (alive=false) failed: %s", self, error)
                else:
                    if isinstance(result, ActivationMessage):  # not ours to run any more
                        self._give_back(result, last)
        finally:
            self.on_gone(self)
