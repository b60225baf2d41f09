"""The invoker's lease and registration against a real etcd on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
from fpc_support import EtcdServer

from invoker.embedded.child import free_port
from invoker.fpc.etcd import EtcdClient, EtcdEndpoint, EtcdUnavailable, LeaseNotFound
from invoker.fpc.keys import EtcdKeys
from invoker.fpc.lease import LeaseConfig, LeaseKeeper
from invoker.fpc.messages import InvokerResourceMessage, InvokerStatus, SchedulerEndpoints
from invoker.fpc.registry import InvokerRegistration, LeaseBoundKeys, read_queue_leader
from invoker.messages import ByteSize, FullyQualifiedEntityName, InvokerInstanceId

TTL_S = 2  # etcd's smallest useful TTL here (its minimum is 1.5 election timeouts)
FAST = LeaseConfig(ttl_s=TTL_S, keep_alive_interval_s=0.2)
INVOKER = InvokerInstanceId(3, ByteSize.mb(32768), tags=("gpu",))
RESOURCES = InvokerResourceMessage(InvokerStatus.UP, 28672, 2048, 2048, ("gpu",), ())
FQN = FullyQualifiedEntityName("alice_dev", "gpu-infer", version="0.0.3")
REV = "3-9a1c5e0f2b7d4c8e6a3f1b0d2c4e6a8f"


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)


class Invoker:
    """The etcd side of an FPC invoker: lease keeper, lease-bound keys, registration."""

    def __init__(self, hosts: str, cluster: str, config: LeaseConfig = FAST) -> None:
        self.client = EtcdClient.from_hosts(hosts, timeout_s=1.0)
        self.names = EtcdKeys(cluster)
        self.keys = LeaseBoundKeys(self.client)
        self.registration = InvokerRegistration(self.keys, INVOKER, self.names)
        self.fatal: list[BaseException] = []
        self.keeper = LeaseKeeper(self.client, self.registration.lease_key, self.keys,
                                  self.fatal.append, config)

    def start(self) -> Invoker:
        self.registration.publish(RESOURCES)
        self.keeper.start()
        assert self.keeper.wait_for_lease(10.0) is not None, "no lease within 10 s"
        return self

    def stop(self, revoke: bool = True) -> None:
        self.keeper.stop(revoke=revoke)
        self.client.close()


@pytest.fixture
def make_invoker() -> Iterator[Callable[..., Invoker]]:
    made: list[Invoker] = []

    def make(hosts: str, cluster: str, config: LeaseConfig = FAST) -> Invoker:
        invoker = Invoker(hosts, cluster, config)
        made.append(invoker)
        return invoker.start()

    yield make
    for invoker in made:
        invoker.stop()
        assert not invoker.fatal


def lease_of(client: EtcdClient, key: str) -> int | None:
    items = client._call("get", lambda c: c.get(key, metadata=True))
    return int(items[0][1].get("lease", 0)) if items else None


# --------------------------------------------------------------------------- the client


def test_hosts_are_read_as_whisk_etcd_hosts() -> None:
    assert EtcdEndpoint.parse_hosts("a:1, http://b:2,c") == (
        EtcdEndpoint("a", 1), EtcdEndpoint("b", 2), EtcdEndpoint("c", 2379))
    with pytest.raises(ValueError):
        EtcdEndpoint.parse_hosts(" , ")


def test_client_calls_and_errors(etcd_client: EtcdClient, cluster: str) -> None:
    lease = etcd_client.grant(TTL_S)
    etcd_client.put(f"{cluster}/a", "1", lease)
    etcd_client.put(f"{cluster}/b", "2")
    assert etcd_client.get(f"{cluster}/a") == "1"
    assert etcd_client.get_prefix(f"{cluster}/") == {f"{cluster}/a": "1", f"{cluster}/b": "2"}
    assert etcd_client.keep_alive_once(lease) == TTL_S
    etcd_client.revoke(lease)
    assert etcd_client.get(f"{cluster}/a") is None  # the lease's keys went with it
    assert etcd_client.delete(f"{cluster}/b") and not etcd_client.delete(f"{cluster}/b")
    with pytest.raises(LeaseNotFound):
        etcd_client.keep_alive_once(lease)
    with pytest.raises(LeaseNotFound):
        etcd_client.put(f"{cluster}/c", "3", lease)


def test_a_second_endpoint_answers_when_the_first_does_not(etcd: EtcdServer, cluster: str) -> None:
    client = EtcdClient([EtcdEndpoint("127.0.0.1", free_port()), EtcdEndpoint("127.0.0.1", etcd.port)], 1.0)
    client.put(f"{cluster}/k", "v")
    assert client.get(f"{cluster}/k") == "v"
    client.close()


def test_no_endpoint_answering_is_etcd_unavailable() -> None:
    client = EtcdClient([EtcdEndpoint("127.0.0.1", free_port())], timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(EtcdUnavailable, match="no endpoint answered"):
        client.grant(10)
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------- lease and registration


def test_registration_is_written_with_the_lease(etcd: EtcdServer, etcd_client: EtcdClient, cluster: str,
                                                make_invoker: Callable[..., Invoker]) -> None:
    invoker = make_invoker(etcd.hosts, cluster)
    lease = invoker.keeper.lease_id
    assert etcd_client.get(f"{cluster}/instance/invoker3/lease") == str(lease)
    health = etcd_client.get(f"{cluster}/invokers/3")
    assert health is not None and json.loads(health) == {
        "status": "up", "freeMemory": 28672, "busyMemory": 2048, "inProgressMemory": 2048,
        "tags": ["gpu"], "dedicatedNamespaces": []}
    assert lease_of(etcd_client, f"{cluster}/invokers/3") == lease
    assert lease_of(etcd_client, f"{cluster}/instance/invoker3/lease") == lease
    assert 0 < etcd_client.time_to_live(lease) <= TTL_S

    # Memory changes: the same key, the new value.
    invoker.registration.publish(InvokerResourceMessage(InvokerStatus.UP, 26624, 4096, 0, ("gpu",), ()))
    assert json.loads(etcd_client.get(f"{cluster}/invokers/3") or "{}")["freeMemory"] == 26624


def test_container_keys_follow_the_containers_life(etcd: EtcdServer, etcd_client: EtcdClient, cluster: str,
                                                   make_invoker: Callable[..., Invoker]) -> None:
    invoker = make_invoker(etcd.hosts, cluster)
    existing = f"{cluster}/namespace/bob/alice_dev/gpu-infer/{REV}/invoker3/container/c1"
    warmed = f"{cluster}/warmed/bob/alice_dev/gpu-infer/{REV}/invoker/3/container/c1"
    registration = invoker.registration

    registration.container_ready("bob", FQN, REV, "c1")
    assert etcd_client.get(existing) == "" and etcd_client.get(warmed) is None
    assert lease_of(etcd_client, existing) == invoker.keeper.lease_id
    registration.container_paused("bob", FQN, REV, "c1")
    assert etcd_client.get(existing) is None and etcd_client.get(warmed) == ""
    registration.container_resumed("bob", FQN, REV, "c1")
    assert etcd_client.get(existing) == "" and etcd_client.get(warmed) is None
    registration.container_removed("bob", FQN, REV, "c1")
    assert etcd_client.get_prefix(f"{cluster}/namespace/") == {}
    assert etcd_client.get_prefix(f"{cluster}/warmed/") == {}


def test_keep_alive_holds_the_keys_past_the_ttl(etcd: EtcdServer, etcd_client: EtcdClient, cluster: str,
                                                make_invoker: Callable[..., Invoker]) -> None:
    invoker = make_invoker(etcd.hosts, cluster)
    lease = invoker.keeper.lease_id
    time.sleep(TTL_S * 2)
    assert etcd_client.get(f"{cluster}/invokers/3") is not None
    assert invoker.keeper.lease_id == lease and invoker.keeper.grants == 1


def test_keys_expire_within_the_ttl_when_keep_alive_stops(etcd: EtcdServer, etcd_client: EtcdClient, cluster: str,
                                                          make_invoker: Callable[..., Invoker]) -> None:
    invoker = make_invoker(etcd.hosts, cluster)
    invoker.registration.container_ready("bob", FQN, REV, "c1")
    invoker.keeper.stop(revoke=False)  # as a SIGKILL leaves it: nothing revoked, nothing renewed
    stopped = time.monotonic()
    wait_until(lambda: etcd_client.get_prefix(f"{cluster}/") == {}, TTL_S + 2.0, "keys gone after the TTL")
    assert time.monotonic() - stopped <= TTL_S + 2.0


def test_a_clean_stop_revokes_the_lease_and_its_keys_go_at_once(etcd: EtcdServer, etcd_client: EtcdClient,
                                                                cluster: str,
                                                                make_invoker: Callable[..., Invoker]) -> None:
    invoker = make_invoker(etcd.hosts, cluster)
    invoker.keeper.stop(revoke=True)
    assert etcd_client.get_prefix(f"{cluster}/") == {}


def test_a_lost_lease_is_granted_again_and_every_key_rewritten(etcd: EtcdServer, etcd_client: EtcdClient,
                                                               cluster: str,
                                                               make_invoker: Callable[..., Invoker]) -> None:
    invoker = make_invoker(etcd.hosts, cluster)
    invoker.registration.container_ready("bob", FQN, REV, "c1")
    before = etcd_client.get_prefix(f"{cluster}/")
    old = invoker.keeper.lease_id
    etcd_client.revoke(old)  # as an expiry does: etcd forgets the lease and deletes its keys
    wait_until(lambda: invoker.keeper.grants == 2 and invoker.keys.pending == 0, 5.0, "a new lease")
    new = invoker.keeper.lease_id
    assert new not in (None, old)
    after = etcd_client.get_prefix(f"{cluster}/")
    assert after.pop(f"{cluster}/instance/invoker3/lease") == str(new)
    before.pop(f"{cluster}/instance/invoker3/lease")
    assert after == before
    assert lease_of(etcd_client, f"{cluster}/invokers/3") == new


def test_etcd_restarted_without_its_data_gets_everything_back(etcd_factory: Callable[[], EtcdServer],
                                                              cluster: str,
                                                              make_invoker: Callable[..., Invoker]) -> None:
    server = etcd_factory()
    invoker = make_invoker(server.hosts, cluster)
    invoker.registration.container_ready("bob", FQN, REV, "c1")
    server.stop()
    # While etcd is away the invoker goes on; a container change waits for etcd.
    time.sleep(0.5)
    invoker.registration.container_paused("bob", FQN, REV, "c1")
    assert invoker.keys.pending > 0
    server.restart(wipe=True)
    wait_until(lambda: invoker.keeper.grants == 2 and invoker.keys.pending == 0, 10.0, "re-registration")
    client = EtcdClient.from_hosts(server.hosts)
    keys = client.get_prefix(f"{cluster}/")
    client.close()
    assert set(keys) == {
        f"{cluster}/instance/invoker3/lease", f"{cluster}/invokers/3",
        f"{cluster}/warmed/bob/alice_dev/gpu-infer/{REV}/invoker/3/container/c1"}
    assert json.loads(keys[f"{cluster}/invokers/3"]) == RESOURCES.to_json()


def test_etcd_restarted_with_its_data_keeps_the_lease(etcd_factory: Callable[[], EtcdServer], cluster: str,
                                                      make_invoker: Callable[..., Invoker]) -> None:
    server = etcd_factory()
    invoker = make_invoker(server.hosts, cluster)
    lease = invoker.keeper.lease_id
    server.stop()
    time.sleep(0.5)
    invoker.registration.container_ready("bob", FQN, REV, "c1")  # deferred while etcd is away
    server.restart()
    wait_until(lambda: invoker.keys.pending == 0, 10.0, "the deferred write")
    # etcd restores its leases on restart: the same lease, renewed, and the write done under it.
    assert invoker.keeper.lease_id == lease and invoker.keeper.grants == 1
    client = EtcdClient.from_hosts(server.hosts)
    assert lease_of(client, f"{cluster}/namespace/bob/alice_dev/gpu-infer/{REV}/invoker3/container/c1") == lease
    client.close()


def test_the_lease_waits_for_an_etcd_that_is_not_there_yet(etcd_factory: Callable[[], EtcdServer],
                                                           cluster: str, tmp_path) -> None:
    server = EtcdServer(tmp_path)  # not started
    invoker = Invoker(server.hosts, cluster)
    invoker.registration.publish(RESOURCES)
    invoker.keeper.start()
    try:
        assert invoker.keeper.wait_for_lease(0.5) is None
        server.start()
        assert invoker.keeper.wait_for_lease(10.0) is not None
        client = EtcdClient.from_hosts(server.hosts)
        assert client.get(f"{cluster}/invokers/3") == RESOURCES.serialize()
        client.close()
    finally:
        invoker.stop()
        server.stop()
    assert not invoker.fatal


def test_queue_leader_is_read_from_etcd(etcd_client: EtcdClient, cluster: str) -> None:
    names = EtcdKeys(cluster)
    assert read_queue_leader(etcd_client, "bob", FQN, names) is None
    etcd_client.put(names.queue_leader("bob", FQN), '{"host":"10.0.3.17","rpcPort":13001,"pekkoPort":25520}')
    assert read_queue_leader(etcd_client, "bob", FQN, names) == SchedulerEndpoints("10.0.3.17", 13001, 25520)
    etcd_client.put(names.queue_leader("bob", FQN), "not json")
    assert read_queue_leader(etcd_client, "bob", FQN, names) is None
