"""The GPU layer's parts on their own: GPU requests, the declared inventory, the
admission ledger, the MPS manager (against a FAKE control program) and the metrics text."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gpu_pool_support import wait_until

from invoker.config import ConfigError, load_config
from invoker.gpu import metrics
from invoker.gpu.inventory import GpuDevice, Inventory, InventoryError, parse_declared
from invoker.gpu.ledger import AdmissionError, GpuLedger
from invoker.gpu.mps import MpsDaemon, MpsError, client_env, start_sharing
from invoker.gpu.request import GpuRequest, GpuRequestError, parse_request, parse_size_mb

# ----------------------------------------------------------------------------- requests


@pytest.mark.parametrize("text, mb", [("4 GB", 4096), ("4GiB", 4096), ("512 MB", 512), ("1.5G", 1536),
                                      ("512m", 512), (2048, 2048), ("80GiB", 81920), ("1048576 B", 1)])
def test_sizes(text, mb):
    assert parse_size_mb(text) == mb


def test_request_defaults_come_from_the_memory_limit():
    request = parse_request(None, 2048)
    assert request == GpuRequest(2048, None)
    assert request.sm_on(81920) == 10  # 2.5 % of the memory, raised to the floor
    assert GpuRequest(40960).sm_on(81920) == 50
    assert parse_request({"memory": "4 GB", "sm": 25}, 256) == GpuRequest(4096, 25)
    assert parse_request({"sm": 30}, 1024) == GpuRequest(1024, 30)


@pytest.mark.parametrize("annotation, words", [
    ("lots", "must be an object"),
    ({"memory": "four gigs"}, "not a size"),
    ({"sm": 0}, "1 to 100"),
    ({"sm": 101}, "1 to 100"),
    ({"sm": True}, "1 to 100"),
    ({"memroy": "1 GB"}, "unknown fields"),
])
def test_bad_requests_are_explained(annotation, words):
    with pytest.raises(GpuRequestError, match=words):
        parse_request(annotation, 256)


# ----------------------------------------------------------------------------- inventory


def test_declared_inventory_is_named_as_declared():
    inventory = parse_declared("1:40GiB, 0:80GiB")
    assert [d.index for d in inventory.devices] == [0, 1]
    assert [d.memory_total_mb for d in inventory.devices] == [81920, 40960]
    assert inventory.source == "declared"
    assert "declared, not detected" in inventory.describe()
    assert inventory.sample() is inventory  # no NVML to ask
    assert parse_declared("none").devices == ()


@pytest.mark.parametrize("text", ["0", "0:lots", "-1:8GiB", "0:8GiB,0:8GiB", "x:8GiB"])
def test_bad_declarations_are_refused(text):
    with pytest.raises(InventoryError):
        parse_declared(text)


def test_bad_gpu_settings_stop_the_invoker_with_the_option_named():
    with pytest.raises(ConfigError, match="--gpus"):
        load_config(["--gpus", "0:eighty"], env={})
    with pytest.raises(ConfigError, match="--gpu-stem-cells"):
        load_config(["--gpu-stem-cells", "python:3-gpu:2048MB"], env={})
    with pytest.raises(ConfigError, match="--gpu-mps"):
        load_config(["--gpu-mps", "maybe"], env={})
    config = load_config(["--gpu-stem-cells", "python:3-gpu:2 GB:2"], env={"INVOKER_GPUS": "0:16GiB"})
    assert config.gpus == "0:16GiB"
    assert [(c.kind, c.memory_mb, c.count) for c in config.gpu_stem_cells] == [("python:3-gpu", 2048, 2)]


def test_the_mps_user_applies_to_backends_that_choose_a_user(tmp_path):
    from invoker.cli import make_factory, make_gpu_layer
    from invoker.manifest import RuntimesManifest

    env = {"INVOKER_GPUS": "0:16GiB", "INVOKER_GPU_MPS_UID": "20002", "INVOKER_GPU_MPS_MAX_CLIENTS": "60",
           "INVOKER_GPU_MPS_DIR": str(tmp_path)}
    config = load_config([], env=env)
    assert (config.gpu_mps_uid, config.gpu_mps_max_clients) == (20002, 60)
    manifest = RuntimesManifest.load(None)
    process = make_factory(config, env)
    layer = make_gpu_layer(config, manifest, process)
    try:
        assert layer.settings.mps_client_uid is None  # processes run as the invoker's user
        assert layer.settings.mps_max_clients == 60
        assert (layer.settings.sleep_on_pressure, layer.settings.sleep_after_s) == (True, 0)  # the defaults
        assert (layer.settings.sleep_host_budget_mb, layer.settings.sleep_context_mb) == (8192, 300)
        assert layer.client_limits() == {}  # declared inventory: time-sliced, no MPS slots
    finally:
        layer.stop()
    with pytest.raises(ConfigError, match="--gpu-mps-max-clients"):
        load_config(["--gpu-mps-max-clients", "many"], env={})


def test_help_says_the_inventory_is_declared_not_detected():
    out = subprocess.run([sys.executable, "-m", "invoker", "--help"], capture_output=True, text=True, check=True).stdout
    assert "declared, not detected" in " ".join(out.split())


# ----------------------------------------------------------------------------- ledger


def two_gpus(mig_on_1: bool = False) -> Inventory:
    return Inventory((GpuDevice(0, 1000), GpuDevice(1, 2000, mig_enabled=mig_on_1)), "declared")


def test_ledger_never_commits_more_than_a_gpu_admits():
    ledger = GpuLedger(two_gpus(), reserved_mb=100)
    assert ledger.capacity_mb("0") == 900
    ledger.commit("a", "0", 600)
    with pytest.raises(AdmissionError):
        ledger.commit("b", "0", 301)
    ledger.commit("b", "0", 300)
    assert ledger.free_mb("0") == 0
    with pytest.raises(AdmissionError):
        ledger.resize("b", 301)
    ledger.mark_releasing("a")
    assert ledger.free_mb("0") == 0 and ledger.releasing_mb("0") == 600  # still held until gone
    ledger.release("a")
    assert ledger.free_mb("0") == 600


def test_candidates_most_free_memory_then_least_load():
    ledger = GpuLedger(two_gpus())
    assert ledger.candidates(500, {}) == ["1", "0"]
    ledger.commit("x", "1", 1000)  # both now have 1000 free
    assert ledger.candidates(500, {"0": 3, "1": 1}) == ["1", "0"]
    assert ledger.candidates(500, {"0": 1, "1": 3}) == ["0", "1"]
    assert ledger.candidates(1001, {}) == []
    assert ledger.fits_anywhere(2000) and not ledger.fits_anywhere(2001)


def test_an_mps_gpu_admits_no_more_containers_than_mps_has_client_slots():
    ledger = GpuLedger(two_gpus(), max_clients={"0": 2})  # GPU 1 time-sliced: no slot limit
    ledger.commit("a", "0", 10)
    ledger.commit("b", "0", 10)
    assert ledger.free_clients("0") == 0 and ledger.free_mb("0") == 980
    assert not ledger.admits("0", 10) and ledger.candidates(10, {}) == ["1"]  # memory left, no slot
    with pytest.raises(AdmissionError, match="client slots"):
        ledger.commit("c", "0", 10)
    for key in ("c", "d", "e"):
        ledger.commit(key, "1", 10)
    assert ledger.free_clients("1") is None
    ledger.mark_releasing("a")
    assert ledger.releasing_clients("0") == 1 and not ledger.admits("0", 10)  # its process still lives
    ledger.release("a")
    assert ledger.admits("0", 10)


def test_a_mig_gpu_admits_nothing():
    ledger = GpuLedger(two_gpus(mig_on_1=True))
    assert ledger.capacity_mb("1") == 0
    assert ledger.candidates(10, {}) == ["0"]


# ----------------------------------------------------------------------------- MPS (FAKE control program)


def test_mps_daemon_start_check_stop(fake_mps_control, tmp_path):
    daemon = MpsDaemon(str(fake_mps_control), tmp_path / "mps" / "pipe", tmp_path / "mps" / "log", ("GPU-abc",))
    assert not daemon.running()
    daemon.start()
    assert daemon.running() and daemon.started_here
    assert "CUDA_VISIBLE_DEVICES=GPU-abc" in (tmp_path / "mps" / "log" / "control.log").read_text()
    calls = (tmp_path / "mps" / "log" / "calls.log").read_text()
    assert f"-d pipe={tmp_path / 'mps' / 'pipe'} log={tmp_path / 'mps' / 'log'}" in calls
    daemon.stop()
    assert not daemon.running()
    assert "quit" in (tmp_path / "mps" / "log" / "calls.log").read_text()


def test_a_running_daemon_is_adopted_and_left_running(fake_mps_control, tmp_path):
    first = MpsDaemon(str(fake_mps_control), tmp_path / "pipe", tmp_path / "log")
    first.start()
    second = MpsDaemon(str(fake_mps_control), tmp_path / "pipe", tmp_path / "log")
    second.start()
    assert not second.started_here
    second.stop()
    assert first.running()
    first.stop()
    assert not first.running()


def test_a_failing_daemon_is_an_error_with_its_words(fake_mps_control, tmp_path):
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "FAKE_FAIL").touch()
    daemon = MpsDaemon(str(fake_mps_control), tmp_path / "pipe", tmp_path / "log")
    with pytest.raises(MpsError, match="no CUDA-capable device"):
        daemon.start()
    nvml = Inventory((GpuDevice(0, 1000, uuid="GPU-0"),), "nvml")
    status, started = start_sharing(nvml, "auto", str(fake_mps_control), tmp_path / "pipe", tmp_path / "log")
    assert started is None and not status.mps and "no CUDA-capable device" in status.reason


def test_client_env_carries_the_limits(tmp_path):
    daemon = MpsDaemon("unused", tmp_path / "pipe", tmp_path / "log")
    env = client_env(daemon, 4096, 25)
    assert env == {
        "CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "pipe"),
        "CUDA_MPS_LOG_DIRECTORY": str(tmp_path / "log"),
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=4096MB",
    }


def test_sharing_falls_back_to_time_slicing_and_says_why(fake_mps_control, tmp_path):
    declared = two_gpus()
    status, daemon = start_sharing(declared, "auto", str(fake_mps_control), tmp_path / "p", tmp_path / "l")
    assert (status.mps, daemon) == (False, None) and "declared" in status.reason
    status, _ = start_sharing(declared, "off", str(fake_mps_control), tmp_path / "p", tmp_path / "l")
    assert status.mode == "time-slicing" and "off" in status.reason
    detected = Inventory((GpuDevice(0, 1000, uuid="GPU-0", mig_enabled=True),), "nvml")
    status, _ = start_sharing(detected, "auto", str(fake_mps_control), tmp_path / "p", tmp_path / "l")
    assert not status.mps and "MIG" in status.reason
    nvml = Inventory((GpuDevice(0, 1000, uuid="GPU-0"),), "nvml")
    status, _ = start_sharing(nvml, "auto", str(tmp_path / "no-such-binary"), tmp_path / "p", tmp_path / "l")
    assert not status.mps and "not installed" in status.reason
    with pytest.raises(MpsError, match="required"):
        start_sharing(nvml, "on", str(tmp_path / "no-such-binary"), tmp_path / "p", tmp_path / "l")


def test_sharing_uses_mps_on_the_gpus_without_mig(fake_mps_control, tmp_path):
    inventory = Inventory((GpuDevice(0, 1000, uuid="GPU-0"), GpuDevice(1, 1000, uuid="GPU-1", mig_enabled=True)),
                          "nvml")
    status, daemon = start_sharing(inventory, "auto", str(fake_mps_control), tmp_path / "p", tmp_path / "l")
    try:
        assert status.mps and status.gpus == ("GPU-0",)
        assert status.mps_on("GPU-0") and not status.mps_on("GPU-1")
        assert "MIG" in status.reason
        assert daemon is not None and daemon.visible_devices == ("GPU-0",)
    finally:
        daemon.stop()


def test_the_mps_directories_are_given_to_the_user_gpu_containers_run_as(fake_mps_control, tmp_path):
    # MPS starts its server as the first client's user; that server writes the pipe and log
    # directories, so with containers running as 10001 both must be 10001's.
    daemon = MpsDaemon(str(fake_mps_control), tmp_path / "pipe", tmp_path / "log", client_uid=10001)
    if os.geteuid() != 0:
        with pytest.raises(MpsError, match="GPU containers run as uid 10001"):
            daemon.start()
        return
    daemon.start()
    try:
        assert (tmp_path / "pipe").stat().st_uid == 10001 and (tmp_path / "log").stat().st_uid == 10001
        assert daemon.running()
    finally:
        daemon.stop()
    # Clients running as the invoker's own user (the process backend) need nothing changed.
    own = MpsDaemon(str(fake_mps_control), tmp_path / "own-pipe", tmp_path / "own-log")
    own.start()
    own.stop()
    assert (tmp_path / "own-pipe").stat().st_uid == os.geteuid()


def test_gpu_containers_run_as_the_mps_user_only_under_mps(tmp_path):
    from invoker.gpu.layer import GpuLayer, GpuSettings
    from invoker.gpu.mps import SharingStatus

    daemon = MpsDaemon("unused", tmp_path / "pipe", tmp_path / "log", client_uid=10001)
    quiet = {"mps_check_interval_s": 0}  # no watchdog asking the "unused" program
    layer = GpuLayer(two_gpus(), SharingStatus(True, "ok", ("0",)), GpuSettings(mps_client_uid=10001, **quiet), daemon)
    assert layer.container_user("0") == "10001:10001"
    assert layer.container_user("1") is None  # time-sliced GPU: the image's user
    assert GpuLayer(two_gpus(), SharingStatus(True, "ok", ("0",)), GpuSettings(**quiet), daemon).container_user("0") is None
    time_sliced = GpuLayer(two_gpus(), SharingStatus(False, "off"), GpuSettings(mps_client_uid=10001))
    assert time_sliced.container_user("0") is None
    assert (time_sliced.sharing.tag, layer.sharing.tag) == ("gpu-time-slicing", "gpu-mps")


def _kill_fake_daemon(pipe: Path) -> None:
    pid = int((pipe / "fake-control.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # gone, or a zombie nobody reaps (the fake daemon is its own session)
        if Path(f"/proc/{pid}/status").exists() and "zombie" in Path(f"/proc/{pid}/status").read_text():
            break


def test_a_dead_mps_daemon_this_invoker_started_is_started_again_and_reported(fake_mps_control, tmp_path):
    from invoker.gpu.layer import GpuLayer, GpuSettings

    nvml = Inventory((GpuDevice(0, 1000, uuid="GPU-0"),), "nvml")
    layer = GpuLayer.start(nvml, GpuSettings(mps_check_interval_s=0.1), "on", str(fake_mps_control), tmp_path)
    try:
        assert layer.sharing_json()["daemon"] == {"up": True, "problem": None, "restarts": 0,
                                                  "pipe_dir": str(tmp_path / "pipe"), "started_here": True}
        _kill_fake_daemon(tmp_path / "pipe")
        wait_until(lambda: layer.daemon_restarts == 1, 15, what="the daemon started again")
        assert layer.daemon.running() and layer.daemon_up
        assert (tmp_path / "log" / "calls.log").read_text().count("-d pipe=") == 2
        lines = set(metrics.render({"sharing": layer.sharing_json(), "gpus": []}).splitlines())
        assert "owgpu_mps_daemon_up 1" in lines and "owgpu_mps_daemon_restarts_total 1" in lines
        # It cannot come back: reported as down, with the daemon's own words, and tried again.
        (tmp_path / "log" / "FAKE_FAIL").touch()
        _kill_fake_daemon(tmp_path / "pipe")
        wait_until(lambda: not layer.daemon_up, 15, what="the daemon reported down")
        assert "did not start again" in layer.daemon_problem and "no CUDA-capable device" in layer.daemon_problem
        assert "owgpu_mps_daemon_up 0" in metrics.render({"sharing": layer.sharing_json(), "gpus": []})
        (tmp_path / "log" / "FAKE_FAIL").unlink()
        wait_until(lambda: layer.daemon_up and layer.daemon_restarts == 2, 15, what="the daemon back")
    finally:
        layer.stop()
    assert not layer.daemon.running()


def test_an_adopted_mps_daemon_that_dies_is_reported_not_replaced(fake_mps_control, tmp_path):
    from invoker.gpu.layer import GpuLayer, GpuSettings

    owner = MpsDaemon(str(fake_mps_control), tmp_path / "pipe", tmp_path / "log")  # e.g. the systemd unit
    owner.start()
    nvml = Inventory((GpuDevice(0, 1000, uuid="GPU-0"),), "nvml")
    layer = GpuLayer.start(nvml, GpuSettings(mps_check_interval_s=0.1), "on", str(fake_mps_control), tmp_path)
    try:
        assert layer.daemon_up and not layer.daemon.started_here
        _kill_fake_daemon(tmp_path / "pipe")
        wait_until(lambda: not layer.daemon_up, 15, what="the adopted daemon reported down")
        assert "not started by this invoker" in layer.daemon_problem
        time.sleep(0.5)
        assert not layer.daemon.running() and layer.daemon_restarts == 0  # its owner restarts it, not us
        owner.start()  # the owner brings it back
        wait_until(lambda: layer.daemon_up, 15, what="the adopted daemon back")
        assert layer.daemon_problem is None
    finally:
        layer.stop()
        owner.stop()


# ----------------------------------------------------------------------------- metrics


def test_metrics_text_exposition():
    snapshot = {
        "inventory": {"source": "declared"},
        "sharing": {"mode": "time-slicing", "reason": "x"},
        "gpus": [{
            "index": 0, "uuid": None, "memory_total_mb": 1024, "capacity_mb": 1000, "committed_mb": 600,
            "memory_used_mb": None, "utilization_pct": None, "mps": False, "mig_enabled": False, "active": 1,
            "containers": [{"stem_cell": True}, {"stem_cell": False}, {"stem_cell": False}],
            "resident_models": ["m"], "resident_bytes": 123,
        }],
        "stats": {"cold_starts": 2, "prewarm_starts": 1, "warm_starts": 5, "gpu_evictions": 1, "gpu_waits": 3,
                  "gpu_refused": 0, "buffered": 0},
    }
    text = metrics.render(snapshot)
    lines = set(text.splitlines())
    assert 'owgpu_inventory_info{source="declared",sharing="time-slicing"} 1' in lines
    assert 'owgpu_gpu_memory_committed_bytes{gpu="0",uuid=""} 629145600' in lines
    assert 'owgpu_gpu_containers{gpu="0",uuid="",role="stem_cell"} 1' in lines
    assert 'owgpu_gpu_containers{gpu="0",uuid="",role="action"} 2' in lines
    assert 'owgpu_pool_starts_total{start="warm"} 5' in lines
    assert "# TYPE owgpu_gpu_evictions_total counter" in lines
    assert not any(line.startswith("owgpu_gpu_memory_used_bytes") for line in lines)  # unknown: not invented
    for line in lines:  # every sample line is name{labels} number
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


def test_layer_mounts_only_under_mps(tmp_path):
    from invoker.gpu.layer import GpuLayer, GpuPlacement, GpuSettings
    from invoker.gpu.mps import SharingStatus

    daemon = MpsDaemon("unused", tmp_path / "pipe", tmp_path / "log")
    layer = GpuLayer(two_gpus(), SharingStatus(True, "ok", ("0",)), GpuSettings(prewarm=("torch",), mps_check_interval_s=0),
                     daemon)
    placement = GpuPlacement("0", 512, 20)
    assert layer.mounts("0") == (str(tmp_path / "pipe"), str(tmp_path / "log"))
    assert layer.mounts("1") == ()
    assert layer.container_env(placement, stem_cell=True)["OW_GPU_PREWARM"] == "torch"
    assert "OW_GPU_PREWARM" not in layer.container_env(placement, stem_cell=False)
    assert "CUDA_MPS_PIPE_DIRECTORY" not in layer.container_env(GpuPlacement("1", 512, 20), stem_cell=False)
    assert Path(layer.mounts("0")[0]).name == "pipe"


def test_gpu_sleep_settings_from_the_command_line_and_the_environment(tmp_path):
    from invoker.cli import make_factory, make_gpu_layer
    from invoker.manifest import RuntimesManifest

    env = {"INVOKER_GPUS": "0:16GiB", "INVOKER_GPU_MPS_DIR": str(tmp_path), "INVOKER_GPU_SLEEP_AFTER": "2 minutes"}
    config = load_config(["--gpu-sleep-on-pressure", "false", "--gpu-sleep-host-budget", "2 GB",
                          "--gpu-sleep-context-memory", "512 MB"], env=env)
    layer = make_gpu_layer(config, RuntimesManifest.load(None), make_factory(config, env))
    try:
        settings = layer.settings
        assert (settings.sleep_on_pressure, settings.sleep_after_s) == (False, 120)
        assert (settings.sleep_host_budget_mb, settings.sleep_context_mb) == (2048, 512)
    finally:
        layer.stop()
