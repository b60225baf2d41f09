"""No silent death (issue #12, point 2): a feed thread that dies is restarted; one that keeps
dying is fatal, and the invoker stops pinging; a failure on a path nobody waited on (the
duplicate check's store read) still ends its record."""

from __future__ import annotations

import time

from fault_support import SLEEPER

from invoker.store.database import StoreUnavailable
from invoker.supervision import RestartPolicy


def kill_consumer(invoker) -> None:
    """The feed's Kafka consumer closed under it: its next poll raises on the feed thread."""
    invoker.feed._consumer.close(autocommit=False)


def test_a_dead_feed_thread_is_restarted(fault_deployment, kafka_bootstrap, couchdb_url):
    deployment = fault_deployment(kafka_bootstrap, couchdb_url)
    invoker = deployment.invoker
    fqn, rev = deployment.deploy("sleeper", SLEEPER, limits={"memory": 128})
    deployment.invoke(fqn, rev, {"n": 1})
    kill_consumer(invoker)
    msg, acks = deployment.invoke(fqn, rev, {"n": 2}, timeout_s=60)
    assert acks.slot_freeing and not acks.slot_freeing[0].is_system_error
    assert invoker.feed.restarts >= 1 and invoker.feed.consuming and not invoker.failed.is_set()


def test_a_feed_that_keeps_dying_stops_the_pings(fault_deployment, kafka_bootstrap, couchdb_url):
    deployment = fault_deployment(kafka_bootstrap, couchdb_url)
    invoker, controller = deployment.invoker, deployment.controller
    controller.wait_for_ping(10)
    supervised = getattr(invoker.feed, "_thread", None)
    if hasattr(supervised, "policy"):
        supervised.policy = RestartPolicy(max_restarts=0)  # the first death is fatal
    kill_consumer(invoker)
    deadline = time.monotonic() + 10
    while invoker.healthy if hasattr(invoker, "healthy") else True:
        assert time.monotonic() < deadline, "the invoker still calls itself healthy with no feed"
        time.sleep(0.1)
    time.sleep(1.5)  # a ping already on its way may land
    pings = len(controller.pings)
    time.sleep(3 * invoker.settings.ping_interval_s + 1)
    assert len(controller.pings) == pings, "pings carried on with no feed"
    assert invoker.failed.is_set()  # cli.main exits non-zero on it


def test_a_store_failure_in_the_duplicate_check_still_ends_the_record(fault_deployment, kafka_bootstrap,
                                                                      couchdb_url):
    deployment = fault_deployment(kafka_bootstrap, couchdb_url)
    invoker, controller = deployment.invoker, deployment.controller
    fqn, rev = deployment.deploy("sleeper", SLEEPER, limits={"memory": 128})
    msg = controller.message(fqn, rev, {"sleep": 2}, blocking=False)

    def store_down(docid: str):
        raise StoreUnavailable("FAKE store outage stand-in: the duplicate check cannot read")

    invoker.reactive.activations.get = store_down
    controller.publish(deployment.instance, msg)
    controller.publish(deployment.instance, msg)  # the same activation again, while it runs
    controller.wait_for(msg.activation_id, timeout_s=60)
    deadline = time.monotonic() + 20
    while invoker.feed.in_flight:
        assert time.monotonic() < deadline, "the duplicate's feed slot was never given back"
        time.sleep(0.1)
    assert len(controller.acks(msg.activation_id).slot_freeing) == 1


def test_a_dead_pool_janitor_is_restarted_and_idling_goes_on():
    # Idling, pausing and draining all hang on the janitor: a thread that dies must come back.
    from pool_support import PythonOnly

    from invoker.containerpool.pool import ContainerPool, PoolConfig
    from invoker.containerpool.process import ProcessContainerFactory

    fatal: list[BaseException] = []
    pool = ContainerPool(ProcessContainerFactory(extra_env={"__OW_INVOKER": "janitortest"}), PythonOnly(),
                         PoolConfig(user_memory_mb=512), on_fatal=fatal.append)
    passes: list[float] = []
    real_pass = pool._janitor_pass

    def dies_once() -> None:
        passes.append(time.monotonic())
        if len(passes) == 1:
            raise KeyboardInterrupt("the janitor thread dies (not a failed pass)")
        real_pass()

    pool._janitor_pass = dies_once
    pool.start()
    try:
        deadline = time.monotonic() + 20
        while len(passes) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(passes) >= 3, "the janitor did not come back after its thread died"
        assert fatal == []
    finally:
        pool.shutdown()
