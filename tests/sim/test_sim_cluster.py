"""The cluster simulator: conservation, the real pool is what runs, and a cluster small enough
to work out by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sim_support import MB, Recording, poisson, population, run

from invoker.gpu.ledger import GpuLedger
from sim.cluster import ClusterConfig, MembershipChange
from sim.costs import CostTable, Figure
from sim.policies import (
    POLICIES,
    Classic,
    generate_hash,
    java_string_hash,
    pairwise_coprime_numbers_until,
)
from sim.workload import Population, make_function

pytest.importorskip("greenlet")


@pytest.mark.parametrize("policy", POLICIES)
def test_every_arrival_completes_exactly_once(policy):
    # Memory pressure on purpose (4 GPUs, 60 functions up to 6 GB): evictions, waits, stem cells.
    pop = population()
    arrivals = poisson(rate=8.0, duration_s=240, seed=11)
    result = run(4, policy, pop, arrivals, gpus_per_node=2)
    stats = result.stats
    assert result.errors == []
    assert stats.arrivals == len(arrivals)
    assert stats.completed == len(arrivals)
    assert stats.duplicates == 0 and stats.failed == 0
    assert stats.latency.n == len(arrivals)
    counts = result.pool_counts
    # every call was placed once by some pool: warm, stem cell or cold
    assert counts["warm_starts"] + counts["prewarm_starts"] + counts["cold_starts"] >= len(arrivals)
    assert counts["gpu_evictions"] + counts["gpu_sleeps"] > 0, "the scenario should press on GPU memory"


def test_the_same_seed_gives_the_same_result():
    pop = population()
    arrivals = poisson(rate=5.0, duration_s=120, seed=2)
    a = run(2, "classic", pop, arrivals).summary()
    b = run(2, "classic", pop, arrivals).summary()
    for key in ("p50_ms", "p99_ms", "cold_start_share", "slo_attainment", "gpu_evictions", "events"):
        assert a[key] == b[key]


def test_a_change_to_the_pools_placement_order_changes_the_result(monkeypatch):
    # The real pool places GPU cold starts on the GPU with the most free memory first
    # (GpuLedger.candidates). Reverse that (best fit) and the simulated cluster must notice.
    pop = population()
    arrivals = poisson(rate=8.0, duration_s=240, seed=11)
    before = run(4, "classic", pop, arrivals, gpus_per_node=4).summary()

    def best_fit(self, memory_mb, loads):
        fitting = [g for g in self.devices if self.admits(g, memory_mb)]
        return sorted(fitting, key=lambda g: (self.free_mb(g), loads.get(g, 0), g))

    monkeypatch.setattr(GpuLedger, "candidates", best_fit)
    after = run(4, "classic", pop, arrivals, gpus_per_node=4).summary()
    keys = ("p50_ms", "p99_ms", "cold_start_share", "gpu_evictions", "gpu_waits", "events")
    assert {k: before[k] for k in keys} != {k: after[k] for k in keys}


def test_warm_reuse_is_the_pools_own(monkeypatch):
    # A pool that never finds a warm container (the warm branch of ContainerPool._place needs
    # has_capacity) makes every call pay /init: the simulator has no placement of its own.
    from invoker.containerpool import rules

    pop = population(n=5, max_model_mb=100)
    arrivals = poisson(rate=2.0, duration_s=60, seed=4)
    assert run(1, "classic", pop, arrivals).summary()["cold_start_share"] < 0.5
    monkeypatch.setattr(rules, "has_capacity", lambda member: False)
    assert run(1, "classic", pop, arrivals).summary()["cold_start_share"] == 1.0


def hand_costs() -> CostTable:
    fig = lambda v: Figure(v, "s", "test")  # noqa: E731
    return replace(
        CostTable(), container_create=fig(1.0), runtime_init=fig(0.5), run_overhead=fig(0.0), resume=fig(0.0),
        destroy=fig(0.0), dispatch_round_trip=fig(0.2), framework_import=fig(2.0), cuda_context=fig(1.0),
        cold_load_bandwidth=Figure(100 * MB, "B/s", "test"), forward_floor=fig(0.25),
        forward_bandwidth=Figure(1e15, "B/s", "test"))


def test_one_gpu_two_functions_by_hand():
    costs = hand_costs()
    a = make_function("a", 100 * MB, 1, costs)  # loads in 1 s, runs 0.25 s
    b = make_function("b", 300 * MB, 2, costs)  # loads in 3 s, two passes: 0.5 s
    assert a.warm_latency_s == pytest.approx(0.45) and b.warm_latency_s == pytest.approx(0.7)
    cluster = Recording(ClusterConfig(gpus=1, gpus_per_node=1, stem_cells=()), "classic",
                        Population((a, b), (0.5, 1.0)), costs)
    result = cluster.run(iter([(0.0, a), (10.0, a), (20.0, b), (30.0, b)]), warm_up_s=0.0)
    # cold: 0.1 dispatch + 1 create + (0.5 init + 3 import and context) + load + forward + 0.1 back
    cold_a = 0.1 + 1.0 + 3.5 + 1.0 + 0.25 + 0.1
    cold_b = 0.1 + 1.0 + 3.5 + 3.0 + 0.5 + 0.1
    expected = [("a", cold_a, True), ("a", 0.45, False), ("b", cold_b, True), ("b", 0.7, False)]
    assert [(f, init) for f, _, init in cluster.calls] == [(f, init) for f, _, init in expected]
    assert [lat for _, lat, _ in cluster.calls] == pytest.approx([lat for _, lat, _ in expected], abs=1e-9)
    s = result.stats
    assert (s.completed, s.paid_init, s.slo_met) == (4, 2, 2)  # SLO 5 x warm: only the warm calls
    assert result.pool_counts["cold_starts"] == 2 and result.pool_counts["warm_starts"] == 2


def test_stem_cell_start_by_hand():
    # A GPU stem cell of the action's size class has paid import and context: /init and the load remain.
    costs = hand_costs()
    a = make_function("a", 100 * MB, 1, costs)
    cluster = Recording(ClusterConfig(gpus=1, gpus_per_node=1, stem_cells=((a.memory_mb, 1),)), "classic",
                        Population((a,), (1.0,)), costs)
    result = cluster.run(iter([(0.0, a)]), warm_up_s=10.0)
    assert cluster.calls[0][1] == pytest.approx(0.1 + 0.5 + 1.0 + 0.25 + 0.1)
    assert result.pool_counts["prewarm_starts"] == 1 and result.pool_counts["cold_starts"] == 0


def test_classic_hashing_matches_openwhisk():
    assert java_string_hash("guest") == 98708952  # "guest".hashCode() in Java
    assert pairwise_coprime_numbers_until(10) == [1, 3, 7]  # coprime with 10 and with each other
    h = generate_hash("guest", "guest/fn00001")
    policy = Classic(10, seed=0)
    home, step = policy.start("guest", "guest/fn00001")
    assert home == h % 10 and step == [1, 3, 7][h % 3]
    walk = policy.walk("guest", "guest/fn00001")
    assert walk[0] == home and sorted(set(walk)) == list(range(10))  # a coprime step visits every invoker


def test_a_call_that_never_runs_is_reported_not_waited_for_forever():
    # 1 GPU, 6 GB of user memory, 3 GB of it held by the GPU stem cells of the 1 and 2 GB
    # classes, and a call of the 4 GB class: see the next test.
    costs = CostTable()
    big = make_function("big", 3000 * MB, 1, costs)
    assert big.memory_mb == 4096
    cluster = Recording(ClusterConfig(gpus=1, gpus_per_node=1, host_memory_per_gpu_mb=6144,
                                      stem_cells=((1024, 1), (2048, 1))), "classic", Population((big,), (1.0,)), costs)
    result = cluster.run(iter([(0.0, big)]), warm_up_s=60.0, drain_limit_s=600.0)
    assert result.unfinished + result.stats.completed == 1


def test_idle_stem_cells_give_way_to_a_call_waiting_for_host_memory():
    costs = CostTable()
    big = make_function("big", 3000 * MB, 1, costs)
    cluster = Recording(ClusterConfig(gpus=1, gpus_per_node=1, host_memory_per_gpu_mb=6144,
                                      stem_cells=((1024, 1), (2048, 1))), "classic", Population((big,), (1.0,)), costs)
    result = cluster.run(iter([(0.0, big)]), warm_up_s=60.0, drain_limit_s=600.0)
    assert result.unfinished == 0 and result.stats.completed == 1


def _moved_by_scale_out(n: int, grown: int, moved: bool) -> str:
    """A function name whose classic home moves (or stays) when the GPU pool grows from n to grown."""
    for i in range(1000):
        name = f"fn{i:05d}"
        before, after = Classic(n, 0).start("guest", f"guest/{name}"), Classic(grown, 0).start("guest", f"guest/{name}")
        if (before[0] != after[0]) == moved:
            return name
    raise AssertionError("no such name in 1000")


@pytest.mark.parametrize("moved", [True, False])
def test_a_scale_out_remaps_a_home_and_locality_keeps_the_warm_holder(moved):
    costs = CostTable()
    fn = make_function(_moved_by_scale_out(2, 3, moved), 500 * MB, 1, costs)
    pop = Population((fn,), (1.0,))
    arrivals = [(5.0 * k, fn) for k in range(1, 25)]  # one call every 5 s: always warm on its invoker
    change = MembershipChange(at_s=60.0, add_nodes=1, window_s=60.0)
    windows = {}
    for policy in ("classic", "locality"):
        cluster = Recording(ClusterConfig(gpus=2, gpus_per_node=1), policy, pop, costs)
        cluster.change_at(change)
        result = cluster.run(iter(arrivals))
        assert result.errors == [] and result.stats.completed == len(arrivals)
        assert len(cluster.invokers) == 3
        windows[policy] = result.window
    assert windows["locality"].paid_init == 0  # the old home still advertises the model: no cold start
    assert windows["classic"].paid_init == (1 if moved else 0)  # the new home starts it once, then it is warm


def test_a_failed_invoker_gets_no_new_work_and_its_actions_walk_on():
    costs = CostTable()
    fn = make_function("fn00001", 500 * MB, 1, costs)
    pop = Population((fn,), (1.0,))
    arrivals = [(5.0 * k, fn) for k in range(1, 25)]
    home = Classic(2, 0).start("guest", fn.fqn)[0]
    cluster = Recording(ClusterConfig(gpus=2, gpus_per_node=1), "classic", pop, costs)
    cluster.change_at(MembershipChange(at_s=60.0, fail=(home,), window_s=60.0))
    result = cluster.run(iter(arrivals))
    assert result.stats.completed == len(arrivals) and result.errors == []
    assert result.window.paid_init == 1  # the next invoker in the walk starts it once
    pool = cluster.invokers[home].pool
    before = sum(1 for t, _ in arrivals if t < 60.0)
    assert pool.counts.warm_starts + pool.counts.cold_starts + pool.counts.prewarm_starts == before  # nothing placed there after
