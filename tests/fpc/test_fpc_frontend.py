"""The invoker under ``--scheduler fpc``, end to end on real parts (``fpc_deployment``)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid

from fpc_deployment import FAST_KAFKA, ROOT, FpcDeployment, wait_until
from fpc_driver import creation, deletion
from fpc_scheduler import SchedulerServer

from invoker.fpc.etcd import EtcdClient
from invoker.fpc.messages import ContainerCreationError, InvokerResourceMessage, InvokerStatus
from invoker.messages import FullyQualifiedEntityName


def test_creation_init_ack_fetch_run_completion_one_record_then_deletion(fpc: FpcDeployment):
    fqn, rev, doc = fpc.deploy("echo")
    fpc.scheduler.service.add_queue("guest", fqn, rev)
    creation_msg, ack = fpc.create(fqn, rev, doc)
    assert ack.succeeded and ack.error is None
    assert ack.root_invoker_index.instance == fpc.instance and ack.creation_id == creation_msg.creation_id
    (member,) = fpc.invoker.pool.members
    assert member.initialized and member.pinned  # /init ran before the ack
    keys = fpc.container_keys(fqn, rev)
    assert len(keys) == 1 and next(iter(keys)).endswith(f"invoker{fpc.instance}/container/{member.container.id}")

    for n in range(2):  # the second is warm: same container, no init
        msg = fpc.controller.message(fqn, rev, {"n": n})
        fpc.scheduler.service.enqueue("guest", msg)
        book = fpc.controller.wait_for(msg.activation_id, 30)
        assert [type(a).__name__ for a in book.acks] == ["ResultMessage", "CompletionMessage"]
        assert book.acks[0].response["response"]["result"] == {"echo": {"n": n}}
        record = fpc.record(msg)
        assert record["response"]["result"] == {"echo": {"n": n}}
        assert any("echo" in line for line in record["logs"])
    time.sleep(0.3)
    assert len(fpc.controller.acks(msg.activation_id).slot_freeing) == 1  # one completion, no more
    assert fpc.invoker.pool.members == [member] and fpc.invoker.pool.counts.cold_starts == 1
    fetches = [r for r in fpc.scheduler.service.requests if r.container_id == member.container.id]
    assert fetches and all(r.alive for r in fetches) and fetches[-1].last_duration_ms is not None

    fpc.send(deletion(fqn, rev, doc))
    wait_until(lambda: not fpc.invoker.pool.members, what="the container removed")
    wait_until(lambda: not fpc.container_keys(fqn, rev), what="its etcd key removed")
    wait_until(lambda: any(not r.alive for r in fpc.scheduler.service.requests), what="a last fetch with alive=false")
    assert fpc.invoker.frontend.containers == []


def test_registration_is_published_with_memory_and_tags(fpc: FpcDeployment):
    key = fpc.names.invoker_health(fpc.invoker.settings.instance)
    value = wait_until(lambda: fpc.etcd.get(key), what="the registration")
    resources = InvokerResourceMessage.parse(value)
    assert resources.status is InvokerStatus.UP
    assert resources.free_memory_mb == 1024 and resources.busy_memory_mb == 0
    assert set(resources.tags) >= {"gpu", "fast"}
    fqn, rev, doc = fpc.deploy("mem", memory=256)
    fpc.scheduler.service.add_queue("guest", fqn, rev)
    assert fpc.create(fqn, rev, doc)[1].succeeded
    wait_until(lambda: InvokerResourceMessage.parse(fpc.etcd.get(key)).free_memory_mb == 768, what="free memory")
    assert fpc.etcd.get(fpc.names.instance_lease(fpc.invoker.settings.instance))  # the lease key


def test_creation_of_an_action_that_does_not_exist_is_answered_db_fetch_error(fpc: FpcDeployment):
    fqn, rev, doc = fpc.deploy("real")
    ghost = FullyQualifiedEntityName("guest", "ghost", "0.0.1")
    _, ack = fpc.create(ghost, "1-0000", doc)
    assert ack.error is ContainerCreationError.DBFetchError and ack.reason
    assert fpc.invoker.pool.members == []


def test_creation_that_does_not_fit_is_answered_resource_not_enough(fpc: FpcDeployment):
    fqn, rev, doc = fpc.deploy("big", memory=768)
    fpc.scheduler.service.add_queue("guest", fqn, rev)
    assert fpc.create(fqn, rev, doc)[1].succeeded
    _, ack = fpc.create(fqn, rev, doc)  # a second one: 256 MB left
    assert ack.error is ContainerCreationError.ResourceNotEnoughError
    assert ack.error.retried_by_scheduler  # the scheduler sends it to another invoker
    assert len(fpc.invoker.pool.members) == 1


def test_creation_with_limits_out_of_bounds_is_answered_invalid_action_limit(fpc: FpcDeployment):
    fqn, rev, doc = fpc.deploy("tiny", memory=16)
    _, ack = fpc.create(fqn, rev, doc)
    assert ack.error is ContainerCreationError.InvalidActionLimitError


def test_malformed_and_warm_up_messages_are_dropped_and_the_next_creation_still_runs(fpc: FpcDeployment):
    fqn, rev, doc = fpc.deploy("after")
    fpc.scheduler.service.add_queue("guest", fqn, rev)
    good = creation(fqn, rev, doc, fpc.scheduler.host, fpc.scheduler.port)
    bad_id = {**good.to_json(), "creationId": "not-hex"}
    no_action = {k: v for k, v in good.to_json().items() if k != "action"}
    warm_up = {**good.to_json(), "action": {"path": "whisk.system", "name": "warmUp"},
               "creationId": "0" * 32}
    nowhere = {**good.to_json(), "schedulerHost": "", "rpcPort": 0, "creationId": "1" * 32}
    for value in (b"\xff\x00 not json", b"[]", json.dumps(bad_id).encode(), json.dumps(no_action).encode(),
                  json.dumps(warm_up).encode(), json.dumps(nowhere).encode()):
        fpc.send(value)
    fpc.send(good)
    assert fpc.acks.wait_for(good.creation_id).succeeded
    assert fpc.invoker.frontend.malformed == 5
    assert [a.creation_id for a in fpc.acks.acks] == [good.creation_id]  # no ack for the warm-up
    assert len(fpc.invoker.pool.members) == 1


def test_an_init_failure_is_the_first_activations_developer_error_not_a_failed_creation(fpc: FpcDeployment):
    """OpenWhisk's FPC invoker initialises a container with its first activation
    (FunctionPullingContainerProxy.initializeAndRun), so a failing /init answers that activation
    with a developer error. Acked as a failed creation (WhiskError, as this invoker first did),
    OpenWhisk's scheduler retried it 5 times per creation, kept creating, and left the activation
    waiting out the queue's retention (60 s) to end as a whisk internal error: seen against the
    real scheduler (tools/openwhisk/TRANSCRIPT-fpc.md)."""
    fqn, rev, doc = fpc.deploy("broken", code="def main(args)\n    return {}\n")  # a syntax error
    fpc.scheduler.service.add_queue("guest", fqn, rev)
    _, ack = fpc.create(fqn, rev, doc)
    assert ack.succeeded and ack.error is None and ack.reason is None
    (member,) = fpc.invoker.pool.members
    assert not member.initialized  # left to the first activation
    assert len(fpc.container_keys(fqn, rev)) == 1
    msg = fpc.controller.message(fqn, rev, {"n": 1})
    fpc.scheduler.service.enqueue("guest", msg)
    book = fpc.controller.wait_for(msg.activation_id, 30)
    assert [type(a).__name__ for a in book.acks] == ["ResultMessage", "CompletionMessage"]
    response = book.acks[0].response["response"]
    assert response["statusCode"] == 2  # ActivationResponse.DeveloperError
    assert "error" in response["result"]
    record = fpc.record(msg)
    assert record["response"]["statusCode"] == 2
    assert "initTime" in {a["key"] for a in record["annotations"]}
    wait_until(lambda: not fpc.invoker.pool.members, what="the failed container removed")
    wait_until(lambda: not fpc.container_keys(fqn, rev), what="its key removed")


def test_action_mismatch_removes_the_container(fpc: FpcDeployment):
    fqn, rev, doc = fpc.deploy("stale")
    fpc.scheduler.service.add_queue("guest", fqn, "9-newer")  # the queue holds another revision
    assert fpc.create(fqn, rev, doc)[1].succeeded
    wait_until(lambda: not fpc.invoker.pool.members, what="the stale container removed")
    wait_until(lambda: not fpc.container_keys(fqn, rev), what="its key removed")


def test_python_m_invoker_scheduler_fpc_starts_registers_and_leaves_cleanly(kafka_bootstrap, etcd, cluster, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), KAFKA_HOSTS=kafka_bootstrap)
    command = [sys.executable, "-m", "invoker", "--id", "77", "--port", "0", "--scheduler", "fpc",
               "--etcd-hosts", etcd.hosts, "--cluster-name", cluster, "--topic-prefix", f"s{uuid.uuid4().hex[:6]}_",
               "--embedded-store-dir", str(tmp_path / "store"), *FAST_KAFKA]
    log = (tmp_path / "invoker.log").open("w")
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    client = EtcdClient.from_hosts(etcd.hosts)
    try:
        def up() -> bool:  # unhealthy until its consumer has joined the group
            value = client.get(f"{cluster}/invokers/77")
            return value is not None and InvokerResourceMessage.parse(value).status is InvokerStatus.UP

        wait_until(up, 60, "the registration, up")
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, (tmp_path / "invoker.log").read_text()[-3000:]
        assert client.get_prefix(f"{cluster}/") == {}  # the lease revoked: every key gone at once
    finally:
        if process.poll() is None:
            process.kill()
        client.close()
        log.close()



def test_no_memory_queue_reads_the_leader_from_etcd_and_pulls_there(fpc: FpcDeployment, cluster: str):
    fqn, rev, doc = fpc.deploy("moved")
    leader = SchedulerServer().start()  # the queue lives here; the creation names the other scheduler
    try:
        leader.service.add_queue("guest", fqn, rev)
        fpc.etcd.put(fpc.names.queue_leader("guest", fqn), json.dumps({"host": leader.host, "rpcPort": leader.port,
                                                                      "pekkoPort": 0}))
        assert fpc.create(fqn, rev, doc)[1].succeeded  # fpc.scheduler has no queue: NoMemoryQueue
        msg = fpc.controller.message(fqn, rev, {"where": "leader"})
        leader.service.enqueue("guest", msg)
        book = fpc.controller.wait_for(msg.activation_id, 30)
        assert book.acks[0].response["response"]["result"] == {"echo": {"where": "leader"}}
    finally:
        leader.stop()


def test_an_activation_a_dead_container_fetched_is_given_back_and_the_container_goes(fpc: FpcDeployment):
    fqn, rev, doc = fpc.deploy("dies")
    fpc.scheduler.service.add_queue("guest", fqn, rev)
    assert fpc.create(fqn, rev, doc)[1].succeeded
    (member,) = fpc.invoker.pool.members
    os.killpg(member.container.pid, signal.SIGKILL)  # the runtime dies while idle
    wait_until(lambda: not member.container.is_alive(), what="the runtime dead")
    msg = fpc.controller.message(fqn, rev, {})
    fpc.scheduler.service.enqueue("guest", msg)
    wait_until(lambda: not fpc.invoker.pool.members, what="the dead container removed")
    wait_until(lambda: not fpc.container_keys(fqn, rev), what="its key removed")
    # Given back, not answered: the scheduler's queue holds it again for another container.
    queued = fpc.scheduler.service._queue("guest", fqn, rev)
    assert queued.get(timeout=5).activation_id == msg.activation_id
    assert fpc.controller.acks(msg.activation_id).acks == []


def test_the_scheduler_going_away_mid_fetch_is_ridden_out(fpc: FpcDeployment):
    fqn, rev, doc = fpc.deploy("outage")
    fpc.scheduler.service.add_queue("guest", fqn, rev)
    assert fpc.create(fqn, rev, doc)[1].succeeded
    port = fpc.scheduler.port
    fpc.scheduler.stop(grace_s=0)  # fetches in flight are cut; the next ones find nobody
    time.sleep(1.5)
    assert len(fpc.invoker.pool.members) == 1  # the container waits for its scheduler
    fpc.scheduler = SchedulerServer(port=port).start()
    fpc.scheduler.service.add_queue("guest", fqn, rev)
    msg = fpc.controller.message(fqn, rev, {"after": "outage"})
    fpc.scheduler.service.enqueue("guest", msg)
    book = fpc.controller.wait_for(msg.activation_id, 30)
    assert book.acks[0].response["response"]["result"] == {"echo": {"after": "outage"}}


def test_a_scheduler_that_never_comes_back_takes_its_containers_with_it(fpc: FpcDeployment):
    front = fpc.invoker.frontend
    front.settings = dataclasses.replace(front.settings, pull=dataclasses.replace(front.settings.pull,
                                                                                 unreachable_s=1.0))
    fqn, rev, doc = fpc.deploy("orphan")
    fpc.scheduler.service.add_queue("guest", fqn, rev)
    assert fpc.create(fqn, rev, doc)[1].succeeded
    fpc.scheduler.stop(grace_s=0)
    wait_until(lambda: not fpc.invoker.pool.members, 20, "the orphaned container removed")
    wait_until(lambda: not fpc.container_keys(fqn, rev), what="its key removed")
