"""Taking MPS down from inside (deleting its control pipe) stops the daemon; the invoker must
then stop admitting GPU work to MPS GPUs, answer what waits there, say so in its pings, and
resume when the daemon is back. On CPU: a declared GPU, the FAKE control daemon of
tests/gpu/fake_mps_control.py (not MPS), stopped for real; runtimes are real processes."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_pool_support import PythonOnly, Recorder, gpu_action, job, wait_until  # noqa: E402

from invoker.containerpool.pool import ContainerPool, PoolConfig  # noqa: E402
from invoker.containerpool.process import ProcessContainerFactory  # noqa: E402
from invoker.entities import SUCCESS, WHISK_ERROR  # noqa: E402
from invoker.gpu.inventory import parse_declared  # noqa: E402
from invoker.gpu.layer import GpuLayer, GpuSettings  # noqa: E402

FAKE = Path(__file__).resolve().parents[1] / "gpu" / "fake_mps_control.py"  # not MPS: imitates its control program


@pytest.fixture
def fake_control(tmp_path):
    binary = tmp_path / "fakebin" / "nvidia-cuda-mps-control"
    binary.parent.mkdir()
    binary.write_text(f"#!{sys.executable}\n" + FAKE.read_text())
    binary.chmod(0o755)
    yield binary
    for pidfile in tmp_path.rglob("fake-control.pid"):
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            pass


def stop_fake_daemon(mps: Path) -> None:
    """What a client that deletes the control pipe achieves: the daemon is gone, and (here,
    FAKE_FAIL) it does not come back at once."""
    (mps / "log" / "FAKE_FAIL").write_text("stay down")
    os.kill(int((mps / "pipe" / "fake-control.pid").read_text()), signal.SIGTERM)
    wait_until(lambda: not (mps / "pipe" / "fake-control.pid").exists() or not _alive(mps), 10, "fake daemon gone")


def _alive(mps: Path) -> bool:
    try:
        os.kill(int((mps / "pipe" / "fake-control.pid").read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def test_gpu_work_stops_while_the_mps_daemon_is_down_and_resumes(tmp_path, fake_control):
    mps = tmp_path / "mps"
    layer = GpuLayer.start(parse_declared("0:2GiB"), GpuSettings(reserved_mb=0, mps_check_interval_s=0), "on",
                           str(fake_control), mps)
    pool = ContainerPool(ProcessContainerFactory(extra_env={"__OW_INVOKER": "mpsdown"}), PythonOnly(),
                         PoolConfig(user_memory_mb=8192), gpu=layer)
    pool.start()
    sink = Recorder()
    try:
        # One GPU job holds the whole GPU; a second waits for it.
        pool.run(job(gpu_action("holder", memory=2048), sink, args={"sleep": 3}))
        waiting = job(gpu_action("waiter", memory=2048), sink)
        pool.run(waiting)
        wait_until(lambda: pool.buffered == 1, 30, "the second job to wait")

        stop_fake_daemon(mps)
        assert layer.check_daemon() is False  # what the watchdog does every interval
        # What waited is answered with a whisk error, at once, not after the holder.
        answer = sink.wait_for(waiting, 2).response  # not after the holder's 3 s
        assert answer.status_code == WHISK_ERROR and "MPS" in str(answer.result), answer
        # New GPU work is refused the same way.
        late = job(gpu_action("late", memory=256), sink)
        pool.run(late)
        assert sink.wait_for(late, 10).response.status_code == WHISK_ERROR
        assert layer.tag() == "gpu-mps-down"  # what pings carry instead of gpu-mps (Invoker.instance_now)

        (mps / "log" / "FAKE_FAIL").unlink()
        assert layer.check_daemon() is True  # the watchdog starts it again
        assert layer.tag() == "gpu-mps"
        again = job(gpu_action("again", memory=256), sink)
        pool.run(again)
        assert sink.wait_for(again, 60).response.status_code == SUCCESS
    finally:
        pool.shutdown()
        layer.stop()


def test_the_daemon_gets_a_server_side_memory_ceiling(tmp_path, fake_control):
    """A client can lower its MPS memory limit, not raise it past the daemon's default (NVIDIA
    MPS docs); the invoker sets that default to what a GPU admits. The FAKE daemon records it;
    tests/isolation/test_mps_gpu.py checks a real one."""
    mps = tmp_path / "mps"
    layer = GpuLayer.start(parse_declared("0:8GiB,1:4GiB"), GpuSettings(reserved_mb=512, mps_check_interval_s=0),
                           "on", str(fake_control), mps)
    try:
        calls = (mps / "log" / "calls.log").read_text()
        assert "set_default_device_pinned_mem_limit 0 7680M" in calls
        assert "set_default_device_pinned_mem_limit 1 3584M" in calls
    finally:
        layer.stop()
