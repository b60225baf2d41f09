"""etcd key names, as OpenWhisk's EtcdKV builds them (C/etcd/EtcdUtils.scala)."""

from __future__ import annotations

from invoker.fpc.keys import EtcdKeys
from invoker.messages import ByteSize, FullyQualifiedEntityName, InvokerInstanceId

FQN = FullyQualifiedEntityName("alice_dev/ml", "infer", version="0.0.3")  # the version never shows
REV = "3-9a1c5e0f2b7d4c8e6a3f1b0d2c4e6a8f"


def invoker(unique: str | None = None, display: str | None = None) -> InvokerInstanceId:
    return InvokerInstanceId(2, ByteSize.mb(1024), unique_name=unique, displayed_name=display)


def test_lease_and_health_keys_follow_the_invokers_names() -> None:
    keys = EtcdKeys()
    assert keys.instance_lease(invoker()) == "whisk/instance/invoker2/lease"
    assert keys.instance_lease(invoker("u", "d")) == "whisk/instance/invoker2/u/d/lease"
    assert keys.invoker_health(invoker()) == "whisk/invokers/2"
    assert keys.invoker_health(invoker("u")) == "whisk/invokers/2/u"
    assert keys.invoker_health(invoker("u", "d")) == "whisk/invokers/2/u/d"
    # A displayed name alone would read as a unique name: InvokerKeys.health leaves it out.
    assert keys.invoker_health(invoker(None, "d")) == "whisk/invokers/2"


def test_container_keys() -> None:
    keys = EtcdKeys()
    assert keys.existing_container("bob", FQN, REV, 2, "c1") == (
        f"whisk/namespace/bob/alice_dev/ml/infer/{REV}/invoker2/container/c1")
    assert keys.warmed_container("bob", FQN, REV, 2, "c1") == (
        f"whisk/warmed/bob/alice_dev/ml/infer/{REV}/invoker/2/container/c1")
    assert keys.existing_containers_prefix("bob", FQN) == "whisk/namespace/bob/alice_dev/ml/infer/"


def test_queue_leader_and_cluster_name() -> None:
    assert EtcdKeys().queue_leader("bob", FQN) == "whisk/queue/bob/alice_dev/ml/infer/leader"
    assert EtcdKeys("prod").queue_leader("bob", FQN) == "prod/queue/bob/alice_dev/ml/infer/leader"
    assert EtcdKeys("prod").invokers_prefix == "prod/invokers/"
