"""The process backend's start-up clean-up removes only orphans: runtimes left by a dead
invoker of the same name, never those of a live invoker that shares the name (two standalone
modes on one machine, or test runs side by side)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from invoker.containerpool.process import ProcessContainerFactory

OWNER = "cleanuptest"

# Another invoker process: starts one runtime, prints its pid, then lives until killed.
OTHER_INVOKER = textwrap.dedent(f"""
    import sys, time
    from invoker.containerpool.container import ContainerSpec
    from invoker.containerpool.process import ProcessContainerFactory
    factory = ProcessContainerFactory(extra_env={{"__OW_INVOKER": "{OWNER}"}})
    container = factory.create(ContainerSpec(name="other", kind="python:3", image="-", memory_mb=128, cpu_shares=0))
    print(container.pid, flush=True)
    time.sleep(600)
""")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_dead(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_cleanup_spares_a_live_invokers_runtimes_and_removes_a_dead_ones():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "runtimes" / "python")])}
    other = subprocess.Popen([sys.executable, "-c", OTHER_INVOKER], stdout=subprocess.PIPE, text=True, env=env)
    runtime_pid = None
    try:
        runtime_pid = int(other.stdout.readline())
        assert alive(runtime_pid)
        mine = ProcessContainerFactory(extra_env={"__OW_INVOKER": OWNER})
        mine.cleanup()  # the other invoker is alive: its runtime is not an orphan
        time.sleep(0.2)
        assert alive(runtime_pid), "a live invoker's runtime was killed by another's clean-up"
        other.kill()
        other.wait()
        assert alive(runtime_pid)  # orphaned now: its own session survives its invoker
        mine.cleanup()
        assert wait_dead(runtime_pid), "an orphaned runtime survived the clean-up"
    finally:
        other.kill()
        if runtime_pid is not None and alive(runtime_pid):
            os.killpg(runtime_pid, signal.SIGKILL)

