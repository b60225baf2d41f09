"""Faults under ``--scheduler fpc``, on real parts: etcd lost and back with live containers, a
deletion racing the creation it deletes, and SIGKILL of ``python -m invoker --scheduler fpc``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from fpc_deployment import FAST_KAFKA, ROOT, FpcDeployment, kafka_settings, wait_until
from fpc_driver import AckReader, creation, deletion
from fpc_scheduler import SchedulerServer
from fpc_support import EtcdServer

from invoker.embedded.controller import EmbeddedController
from invoker.entities import action_document
from invoker.fpc.etcd import EtcdClient
from invoker.fpc.keys import EtcdKeys
from invoker.messages import FullyQualifiedEntityName
from invoker.store.couchdb import CouchServer
from invoker.store.entities import EntityStore

SLOW_INIT = "import time\ntime.sleep(3)\n\ndef main(args):\n    return {'slow': args}\n"


def test_etcd_wiped_with_live_containers_gets_the_registration_and_container_keys_back(
        fpc_factory: Callable[..., FpcDeployment], etcd_factory: Callable[[], EtcdServer]):
    server = etcd_factory()
    fpc = fpc_factory("--etcd-lease-timeout", "2", etcd_hosts=server.hosts)
    fqn, rev, doc = fpc.deploy("survivor")
    fpc.scheduler.service.add_queue("guest", fqn, rev)
    assert fpc.create(fqn, rev, doc)[1].succeeded
    (member,) = fpc.invoker.pool.members
    health = fpc.names.invoker_health(fpc.invoker.settings.instance)
    wait_until(lambda: fpc.etcd.get(health), what="the registration")
    server.restart(wipe=True)  # every lease and key gone: what a lost etcd cluster looks like
    wait_until(lambda: fpc.etcd.get(health), 30, "the registration written again")
    keys = wait_until(lambda: fpc.container_keys(fqn, rev), 30, "the container's key written again")
    assert next(iter(keys)).endswith(f"/container/{member.container.id}")
    msg = fpc.controller.message(fqn, rev, {"after": "etcd"})  # the container kept pulling
    fpc.scheduler.service.enqueue("guest", msg)
    assert fpc.controller.wait_for(msg.activation_id, 30).acks[0].response["response"]["result"] == {
        "echo": {"after": "etcd"}}


def test_a_deletion_during_the_creation_removes_the_container_once_created(fpc: FpcDeployment):
    fqn, rev, doc = fpc.deploy("racing", code=SLOW_INIT)
    fpc.scheduler.service.add_queue("guest", fqn, rev)
    message = creation(fqn, rev, doc, fpc.scheduler.host, fpc.scheduler.port)
    fpc.send(message)
    wait_until(lambda: fpc.invoker.pool.members, what="the container starting")
    fpc.send(deletion(fqn, rev, doc))  # while /init still runs
    fpc.acks.wait_for(message.creation_id)
    wait_until(lambda: not fpc.invoker.pool.members, 20, "the container removed")
    assert fpc.invoker.frontend.containers == []
    time.sleep(1.5)  # a key written after the deletion would show now
    assert fpc.container_keys(fqn, rev) == {}


def test_sigkill_of_the_invoker_lets_its_keys_expire_and_runs_nothing_twice(
        kafka_bootstrap, couchdb_url, etcd: EtcdServer, cluster: str, tmp_path: Path):
    prefix = f"k{uuid.uuid4().hex[:8]}_"
    store = CouchServer(couchdb_url)
    whisks, activations = store.database(f"{prefix}whisks"), store.database(f"{prefix}activations")
    for db in (whisks, activations):
        db.ensure_exists()
    doc = action_document("guest", "once", "python:3")
    rev = EntityStore(whisks).put_action(doc, "def main(args):\n    return {'once': args}\n", False)
    doc["_rev"] = rev
    fqn = FullyQualifiedEntityName("guest", "once", "0.0.1")
    kafka = kafka_settings(kafka_bootstrap, prefix)
    controller, acks, scheduler = EmbeddedController(kafka), AckReader(kafka), SchedulerServer().start()
    client, names = EtcdClient.from_hosts(etcd.hosts), EtcdKeys(cluster)
    url = urlsplit(couchdb_url)
    command = [sys.executable, "-m", "invoker", "--id", "78", "--port", "0", "--scheduler", "fpc", "--backend",
               "process", "--etcd-hosts", etcd.hosts, "--cluster-name", cluster, "--etcd-lease-timeout", "2",
               "--topic-prefix", prefix, "--couchdb-host", url.hostname, "--couchdb-port", str(url.port),
               "--db-whisks", f"{prefix}whisks", "--db-activations", f"{prefix}activations", *FAST_KAFKA]
    env = dict(os.environ, PYTHONPATH=str(ROOT), KAFKA_HOSTS=kafka_bootstrap)
    processes: list[subprocess.Popen] = []
    orphans: list[int] = []

    def start() -> subprocess.Popen:
        log = (tmp_path / f"invoker{len(processes)}.log").open("w")
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        processes.append(process)
        wait_until(lambda: client.get(f"{cluster}/invokers/78"), 60, "the registration")
        return process

    try:
        first = start()
        scheduler.service.add_queue("guest", fqn, rev)
        message = creation(fqn, rev, doc, scheduler.host, scheduler.port)
        controller.publish(78, message.serialize())
        assert acks.wait_for(message.creation_id).succeeded
        prefix_key = names.existing_containers_prefix("guest", fqn, rev)
        assert len(client.get_prefix(prefix_key)) == 1
        msg = controller.message(fqn, rev, {"n": 1})
        scheduler.service.enqueue("guest", msg)
        controller.wait_for(msg.activation_id, 30)
        wait_until(lambda: _exists(activations, f"guest/{msg.activation_id}"), what="the record")
        orphans.extend(_children(first.pid))  # runtimes in sessions of their own: they outlive it
        assert orphans, "no runtime process under the invoker"
        os.killpg(first.pid, signal.SIGKILL)  # no goodbye: the lease is not revoked
        first.wait(10)
        killed = time.monotonic()
        wait_until(lambda: client.get_prefix(f"{cluster}/") == {}, 10, "every key expired")
        assert time.monotonic() - killed <= 2 + 3  # the TTL, and etcd's expiry granularity

        start()  # the same invoker again: the creation it had done is not done twice
        time.sleep(3)
        assert client.get_prefix(prefix_key) == {}
        assert [a.creation_id for a in acks.acks] == [message.creation_id]
        assert len(controller.acks(msg.activation_id).slot_freeing) == 1
        assert sum(1 for r in scheduler.service.requests if r.alive) >= 1
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
        for pid in orphans:  # what a restarted invoker's cleanup of its prefix does for docker
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for closer in (acks.close, scheduler.stop, controller.close, client.close):
            closer()


def _exists(db, docid: str) -> bool:
    from invoker.store.database import DocumentNotFound

    try:
        db.get(docid)
        return True
    except DocumentNotFound:
        return False


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found
