"""Model locality across invokers: the action digest, the bounded set of held models, the
``held:`` tags in real pings, and the Python port of the controller's walk and its rule.

The fixed vectors here are asserted by the Scala check program as well
(controller_patch/scala/GpuRoutingCheck.scala, ``checkCrossLanguageVectors``): the digest the
invoker pings and the digest the controller looks up must be the same string."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from gpu_pool_support import PROBE, PythonOnly, Recorder, gpu_action, job
from pool_support import make_action

from invoker.cli import build_invoker
from invoker.config import ConfigError, load_config
from invoker.containerpool import rules
from invoker.containerpool.pool import ContainerPool, PoolConfig
from invoker.containerpool.process import ProcessContainerFactory
from invoker.containerpool.states import State
from invoker.embedded.controller import EmbeddedController, result_of
from invoker.embedded.standalone import EMBEDDED_KAFKA_TIMINGS
from invoker.entities import action_document
from invoker.gpu import locality
from invoker.gpu.inventory import parse_declared
from invoker.gpu.layer import GpuLayer, GpuSettings
from invoker.gpu.locality import Holding
from invoker.messages import FullyQualifiedEntityName
from invoker.messaging import KafkaSettings
from invoker.store.embedded import EmbeddedServer
from invoker.store.entities import EntityStore

# --------------------------------------------------------------------------- the digest


def test_the_digest_is_a_fixed_vector_shared_with_the_controller() -> None:
    assert locality.action_key("guest", "guest/models/resnet50", "0.0.1") == "guest|guest/models/resnet50@0.0.1"
    # sha256("guest|guest/models/resnet50@0.0.1") = 9b7d16ba6be833be...; the Scala check asserts the same
    assert locality.action_digest("guest", "guest/models/resnet50", "0.0.1") == "9b7d16ba6be8"
    assert locality.held_tag("9b7d16ba6be8") == "held:9b7d16ba6be8"


def test_the_digest_separates_what_warm_reuse_separates() -> None:
    base = locality.action_digest("guest", "guest/models/resnet50", "0.0.1")
    others = {
        locality.action_digest("alice", "guest/models/resnet50", "0.0.1"),  # another invocation namespace
        locality.action_digest("guest", "guest/models/resnet50", "0.0.2"),  # the action updated
        locality.action_digest("guest", "guest/models/resnet", "0.0.1"),
        locality.action_digest("guest", "guest/resnet50", "0.0.1"),  # no package
    }
    assert base not in others and len(others) == 4
    assert all(len(d) == locality.DIGEST_HEX_CHARS and int(d, 16) >= 0 for d in others | {base})
    # non-ASCII names are hashed as UTF-8 on both sides
    assert locality.action_digest("gäst", "gäst/modèle", "0.0.1") != locality.action_digest("gast", "gast/modele",
                                                                                           "0.0.1")


def test_held_digests_are_bounded_most_recent_first_and_distinct() -> None:
    holdings = [Holding("aa", 1.0), Holding("bb", 5.0), Holding("cc", 3.0), Holding("aa", 7.0), Holding("dd", 2.0)]
    assert locality.held_digests(holdings) == ("aa", "bb", "cc", "dd")  # aa by its latest use
    assert locality.held_digests(holdings, limit=2) == ("aa", "bb")
    assert locality.held_digests(holdings, limit=0) == ()
    many = [Holding(f"{i:012x}", float(i)) for i in range(300)]
    bounded = locality.held_digests(many)
    assert len(bounded) == locality.MAX_HELD == 256
    assert bounded == tuple(f"{i:012x}" for i in range(299, 43, -1))


def test_held_tags_are_sorted_so_pings_change_only_with_the_set() -> None:
    assert locality.held_tags(("bb", "aa", "cc")) == ("held:aa", "held:bb", "held:cc")
    assert locality.held_tags(("cc", "aa", "bb")) == locality.held_tags(("bb", "aa", "cc"))
    assert locality.held_digests_of(("gpu", "gpu-mps", "held:aa", "held:bb", "holder")) == {"aa", "bb"}


@dataclasses.dataclass
class _Proxy:
    gpu: object | None = "placement"
    action: object | None = dataclasses.field(
        default_factory=lambda: make_action("m", kind="python:3-gpu"))
    namespace: str | None = "guest"
    initialized: bool = True
    state: State = State.READY
    last_used: float = 0.0


@pytest.mark.parametrize(("proxy", "holds"), [
    (_Proxy(), True),
    (_Proxy(state=State.RUNNING), True),
    (_Proxy(state=State.PAUSED), True),
    (_Proxy(gpu=None), False),  # a CPU container
    (_Proxy(action=None, namespace=None, state=State.STARTED), False),  # a stem cell
    (_Proxy(initialized=False, state=State.RUNNING), False),  # still in /init
    (_Proxy(state=State.STARTING), False),
    (_Proxy(state=State.REMOVING), False),
])
def test_which_containers_hold_their_model(proxy: _Proxy, holds: bool) -> None:
    assert rules.holds_model(proxy) is holds


# --------------------------------------------------------------------------- the controller's walk, in Python


def test_java_string_hash_and_the_home_invoker_match_the_jvm() -> None:
    # Values the Scala check asserts too (String.hashCode over UTF-16, surrogate pairs included).
    assert locality.java_string_hash("") == 0
    assert locality.java_string_hash("guest") == 98708952
    assert locality.java_string_hash("guest/models/resnet50") == 1853796390
    assert locality.java_string_hash("ü😀") == 2015071
    assert locality.java_string_hash("polygenelubricants") == -2147483648  # Int.MinValue
    assert locality.generate_hash("guest", "guest/models/resnet50") == 1805426174
    assert locality.start(1805426174, 7) == (6, 3)
    assert locality.start(10, 7) == (3, 3)  # GpuRoutingCheck: "start for hash 10 over 7 invokers"
    assert locality.start(-(2**31), 7) == (2, 1)
    assert locality.start(5, 0) is None
    assert locality.pairwise_coprime_numbers_until(10) == [1, 3, 7]


def test_the_classic_walk_visits_every_invoker_once_from_home() -> None:
    assert locality.classic_walk(7, 3, 3) == [3, 6, 2, 5, 1, 4, 0]
    for n in range(1, 30):
        for step in locality.pairwise_coprime_numbers_until(n):
            assert sorted(locality.classic_walk(n, n - 1, step)) == list(range(n))


def test_prefer_holders_reorders_the_walk() -> None:
    walk = [3, 6, 2, 5, 1, 4, 0]
    # a holder is preferred over home
    assert locality.prefer_holders(walk, {5: {"d"}}, "d") == [5, 3, 6, 2, 1, 4, 0]
    # two holders: the first in walk order, then the other, then the rest
    assert locality.prefer_holders(walk, {4: {"d"}, 6: {"x", "d"}}, "d") == [6, 4, 3, 2, 5, 1, 0]
    # no holder of this digest (other digests held): the classic walk
    assert locality.prefer_holders(walk, {5: {"x"}, 0: set()}, "d") == walk
    assert locality.prefer_holders(walk, {}, "d") == walk
    # home holding it stays first
    assert locality.prefer_holders(walk, {3: {"d"}}, "d") == walk


# --------------------------------------------------------------------------- the pool


@pytest.fixture
def pools(tmp_path):
    made: list[tuple[ContainerPool, GpuLayer | None]] = []

    def make(gpu: bool = True) -> ContainerPool:
        layer = GpuLayer.start(parse_declared("0:8GiB"), GpuSettings(reserved_mb=0), "off",
                               "nvidia-cuda-mps-control", tmp_path / "mps") if gpu else None
        factory = ProcessContainerFactory(extra_env={"__OW_INVOKER": "localitytest"})
        pool = ContainerPool(factory, PythonOnly(), PoolConfig(user_memory_mb=8192), gpu=layer)
        pool.start()
        made.append((pool, layer))
        return pool

    yield make
    for pool, layer in made:
        pool.shutdown()
        if layer is not None:
            layer.stop()


def _run(pool: ContainerPool, sink: Recorder, action, args: dict | None = None) -> None:
    j = job(action, sink, args)
    pool.run(j)
    sink.result(j)


def test_the_pool_holds_its_warm_gpu_actions_most_recent_first(pools) -> None:
    pool = pools()
    sink = Recorder()
    first, second = gpu_action("first", gpu={"memory": "512 MB"}), gpu_action("second", gpu={"memory": "512 MB"})
    cpu = make_action("cpu", code=PROBE)
    _run(pool, sink, first, {"load": "m1"})
    _run(pool, sink, second)
    _run(pool, sink, cpu)
    digest = {a.name: locality.action_digest("guest", a.path, a.version) for a in (first, second, cpu)}
    assert pool.held_models() == (digest["second"], digest["first"])  # the CPU action is no GPU holder
    _run(pool, sink, first)
    assert pool.held_models() == (digest["first"], digest["second"])
    assert pool.held_models(limit=1) == (digest["first"],)


def test_a_pool_without_gpus_holds_nothing(pools) -> None:
    pool = pools(gpu=False)
    sink = Recorder()
    _run(pool, sink, make_action("cpu", code=PROBE))
    assert pool.held_models() == ()


# --------------------------------------------------------------------------- pings, through the embedded broker


def _controller(kafka_bootstrap: str, prefix: str) -> EmbeddedController:
    return EmbeddedController(KafkaSettings(kafka_bootstrap, topic_prefix=prefix, session_timeout_ms=6000,
                                            heartbeat_interval_ms=1000, max_poll_interval_ms=5000,
                                            fetch_max_wait_ms=5))


def _stores():
    store = EmbeddedServer()
    whisks, activations = store.database("whisks"), store.database("activations")
    for db in (whisks, activations):
        db.ensure_exists()
    return whisks, activations


def _ping_after(controller: EmbeddedController, predicate, timeout_s: float = 20.0):
    """The first ping read after now that satisfies ``predicate``."""
    seen = controller.ping_count
    while True:
        ping = controller.wait_for_ping(timeout_s, after=seen)
        seen = controller.ping_count
        if predicate(ping):
            return ping


def test_a_gpu_invoker_pings_the_models_it_holds(kafka_bootstrap, tmp_path) -> None:
    prefix = f"l{uuid.uuid4().hex[:8]}_"
    whisks, activations = _stores()
    args = ["--id", "4", "--port", "0", "--topic-prefix", prefix, "--user-memory", "2048 m", "--tags", "gpu",
            "--gpus", "0:4GiB", "--gpu-mps", "off", "--gpu-mps-dir", str(tmp_path / "mps"),
            *EMBEDDED_KAFKA_TIMINGS]
    invoker = build_invoker(load_config(args, env={}), kafka_bootstrap, env={}, whisks=whisks, activations=activations)
    controller = _controller(kafka_bootstrap, prefix)
    try:
        invoker.start()
        assert invoker.wait_ready(60)
        assert controller.wait_for_ping(10).instance.tags == ("gpu", "gpu-time-slicing")  # nothing held yet
        doc = action_document("guest", "gpuprobe", "python:3-gpu", None, False)
        doc["annotations"] = [{"key": "gpu", "value": {"memory": "1 GB"}}]
        rev = EntityStore(whisks).put_action(doc, PROBE, False)
        msg = controller.message(FullyQualifiedEntityName("guest", "gpuprobe", "0.0.1"), rev, {"load": "m1"})
        assert result_of(controller.invoke(4, msg, 60))["gpu"] == "0"

        # what the patched controller computes for this activation, and looks up in the ping
        digest = locality.action_digest(msg.user.namespace_name, "guest/gpuprobe", "0.0.1")
        ping = _ping_after(controller, lambda p: len(p.instance.tags) > 2)
        assert ping.instance.tags == ("gpu", "gpu-time-slicing", f"held:{digest}")
        assert ping.instance.instance == 4 and ping.is_enabled
        # on the wire: name.tags, a JSON list of strings, as InvokerInstanceId.serdes reads it
        assert ping.to_json()["name"]["tags"] == ["gpu", "gpu-time-slicing", f"held:{digest}"]
        assert _ping_after(controller, lambda p: True).instance.tags == ping.instance.tags  # steady: no churn

        # the setting off: no held tags, although the pool still holds the model
        invoker.settings = dataclasses.replace(invoker.settings, held_tags=0)
        assert _ping_after(controller, lambda p: True).instance.tags == ("gpu", "gpu-time-slicing")
        assert invoker.pool.held_models() == (digest,)
    finally:
        controller.close()
        invoker.stop()


def test_a_cpu_invoker_pings_no_held_tags(kafka_bootstrap) -> None:
    prefix = f"l{uuid.uuid4().hex[:8]}_"
    whisks, activations = _stores()
    args = ["--id", "5", "--port", "0", "--topic-prefix", prefix, "--tags", "fast", *EMBEDDED_KAFKA_TIMINGS]
    invoker = build_invoker(load_config(args, env={}), kafka_bootstrap, env={}, whisks=whisks, activations=activations)
    controller = _controller(kafka_bootstrap, prefix)
    try:
        invoker.start()
        assert invoker.wait_ready(60)
        doc = action_document("guest", "cpuprobe", "python:3", None, False)
        rev = EntityStore(whisks).put_action(doc, PROBE, False)
        msg = controller.message(FullyQualifiedEntityName("guest", "cpuprobe", "0.0.1"), rev)
        assert result_of(controller.invoke(5, msg, 60))["gpu"] is None  # it ran, on the CPU
        assert _ping_after(controller, lambda p: True).instance.tags == ("fast",)
    finally:
        controller.close()
        invoker.stop()


def test_the_held_tags_setting() -> None:
    assert load_config(["--id", "0"], env={}).gpu_held_tags == 256
    assert load_config(["--id", "0", "--gpu-held-tags", "0"], env={}).gpu_held_tags == 0
    assert load_config(["--id", "0"], env={"INVOKER_GPU_HELD_TAGS": "8"}).gpu_held_tags == 8
    with pytest.raises(ConfigError, match="--gpu-held-tags"):
        load_config(["--id", "0", "--gpu-held-tags", "-1"], env={})
