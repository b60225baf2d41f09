"""SIGKILL the invoker with activations in flight, start it again: nothing is lost,
nothing recorded is run twice (issue: the invoker end to end, delivery)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import pytest

from invoker.store.couchdb import CouchServer

REPO = Path(__file__).resolve().parents[2]

# Each run appends "<activation id> <token>" to a journal, and returns the token:
# the record's token must be the id's last run, or a run happened after the record.
JOURNALED = """
import os, time, uuid
def main(args):
    token = uuid.uuid4().hex
    with open(args["journal"], "a") as journal:
        journal.write(os.environ["__OW_ACTIVATION_ID"] + " " + token + "\\n")
    time.sleep(args.get("sleep", 0.02))
    return {"token": token}
"""


def start_invoker(deployment, couchdb_url: str, kafka_bootstrap: str, log_path: Path,
                  extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    url = urlparse(couchdb_url)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "KAFKA_HOSTS": kafka_bootstrap,
        "CONFIG_whisk_kafka_topics_prefix": deployment.prefix,
        "CONFIG_whisk_couchdb_protocol": url.scheme,
        "CONFIG_whisk_couchdb_host": url.hostname,
        "CONFIG_whisk_couchdb_port": str(url.port),
        "CONFIG_whisk_couchdb_databases_WhiskEntity": deployment.whisks.name,
        "CONFIG_whisk_couchdb_databases_WhiskActivation": deployment.activations.name,
        "CONFIG_whisk_containerPool_userMemory": "1024m",
        "CONFIG_whisk_kafka_consumer_sessionTimeoutMs": "6000",
        "CONFIG_whisk_kafka_consumer_heartbeatIntervalMs": "1000",
        "CONFIG_whisk_kafka_consumer_maxPollIntervalMs": "5000",
        "CONFIG_whisk_kafka_consumer_fetchMaxWaitMs": "5",
        "PORT": "0",
        **(extra_env or {}),
    }
    log = log_path.open("ab")
    return subprocess.Popen([sys.executable, "-m", "invoker", "--id", str(deployment.instance)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


@pytest.mark.slow
def test_sigkill_mid_flight_loses_nothing_and_reruns_nothing_recorded(
    deployment_factory, couchdb_url, kafka_bootstrap, tmp_path
):
    total = 200
    deployment = deployment_factory(start=False)
    journal = tmp_path / "journal"
    journal.touch()
    fqn, rev = deployment.deploy("journaled", JOURNALED, limits={"memory": 128})
    messages = [
        deployment.controller.message(fqn, rev, {"journal": str(journal)}, blocking=(i % 2 == 0))
        for i in range(total)
    ]
    deployment.controller.publish_many(deployment.instance, messages)

    log_path = tmp_path / "invoker.log"
    first = start_invoker(deployment, couchdb_url, kafka_bootstrap, log_path)
    try:
        deadline = time.monotonic() + 120
        while sum(1 for a in deployment.controller.all_acks().values() if a.slot_freeing) < total // 4:
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            assert first.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)  # mid-flight: activations are running right now
        first.wait(10)
        acked_at_crash = sum(1 for a in deployment.controller.all_acks().values() if a.slot_freeing)
        assert acked_at_crash < total, "the crash came too late to prove anything"

        second = start_invoker(deployment, couchdb_url, kafka_bootstrap, log_path)
        try:
            for msg in messages:
                deployment.controller.wait_for(msg.activation_id, timeout_s=180)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
    finally:
        if first.poll() is None:
            first.kill()

    # Exactly one record per activation.
    server = CouchServer(couchdb_url)
    rows = server.database(deployment.activations.name).all_docs(include_docs=True)
    records = {row["doc"]["activationId"]: row["doc"] for row in rows}
    assert set(records) == {m.activation_id for m in messages}
    assert len(rows) == total

    # None was run again after its record was written: the recorded run is the last one.
    runs: dict[str, list[str]] = {}
    for line in journal.read_text().splitlines():
        activation_id, token = line.split()
        runs.setdefault(activation_id, []).append(token)
    late_reruns = [
        (activation_id, runs[activation_id], record["response"]["result"]["token"])
        for activation_id, record in records.items()
        if record["response"]["result"]["token"] != runs[activation_id][-1]
    ]
    reruns = sum(1 for tokens in runs.values() if len(tokens) > 1)

    # At least one slot-freeing ack each; duplicates only around the crash.
    acks = deployment.controller.all_acks()
    counts = Counter(len(acks[m.activation_id].slot_freeing) for m in messages)
    duplicates = sum((n - 1) * c for n, c in counts.items() if n > 1)
    print(json.dumps({"activations": total, "acked_before_crash": acked_at_crash,
                      "rerun_after_crash": reruns, "run_again_after_their_record": len(late_reruns),
                      "duplicate_slot_freeing_acks": duplicates}))
    assert not late_reruns, late_reruns
    assert min(counts) >= 1
    # Only what was in flight at the crash can be acked twice or rerun.
    in_flight_bound = 64
    assert duplicates <= in_flight_bound and reruns <= in_flight_bound


def runtime_processes_of(owner: str) -> list[int]:
    """Runtime processes whose environment names ``owner`` as their invoker."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"owruntime" in cmdline and f"__OW_INVOKER={owner}".encode() in environ:
            pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize("backend", ["process", "docker"])
def test_restart_after_sigkill_leaves_no_orphaned_containers(
    deployment_factory, couchdb_url, kafka_bootstrap, tmp_path, backend, request
):
    deployment = deployment_factory(start=False, backend=backend)
    owner = f"wsk{deployment.instance}"
    if backend == "docker":
        docker_client = request.getfixturevalue("docker_client")

        def leftovers() -> list[str]:
            found = docker_client.containers.list(all=True, filters={"label": f"org.openwhisk.invoker={owner}"})
            return sorted(c.id for c in found)
    else:
        def leftovers() -> list[str]:
            return sorted(str(pid) for pid in runtime_processes_of(owner))

    actions = [deployment.deploy(f"warm{i}", "def main(args):\n    return args\n", limits={"memory": 128})
               for i in range(3)]
    log_path = tmp_path / "invoker.log"
    backend_env = {"INVOKER_BACKEND": backend}
    first = start_invoker(deployment, couchdb_url, kafka_bootstrap, log_path, backend_env)
    try:
        for fqn, rev in actions:  # three warm containers, one per action
            msg = deployment.controller.message(fqn, rev, {"x": 1})
            acks = deployment.controller.invoke(deployment.instance, msg, 120)
            assert acks.slot_freeing, log_path.read_text()[-3000:]
        before = leftovers()
        assert len(before) == 3, (before, log_path.read_text()[-3000:])
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert leftovers() == before  # nobody removed them: they are orphans now
    finally:
        if first.poll() is None:
            first.kill()

    second = start_invoker(deployment, couchdb_url, kafka_bootstrap, log_path, backend_env)
    try:
        # The restarted invoker removes the orphans before it takes work: a call after start-up
        # is a cold start in a new container, and the old ones are gone.
        fqn, rev = actions[0]
        msg = deployment.controller.message(fqn, rev, {"x": 2})
        acks = deployment.controller.invoke(deployment.instance, msg, 120)
        assert acks.slot_freeing, log_path.read_text()[-3000:]
        now = leftovers()
        assert not set(now) & set(before), (now, before)
        assert len(now) == 1
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert leftovers() == []  # and a clean stop leaves nothing either
