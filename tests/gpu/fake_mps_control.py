"""A FAKE ``nvidia-cuda-mps-control``, for testing the invoker's MPS manager on machines
without a GPU. It is not MPS: it only imitates the control program's interface.

* ``-d`` starts a background "daemon" (a sleeping process) that records its pid in
  ``$CUDA_MPS_PIPE_DIRECTORY/fake-control.pid`` and a line in ``$CUDA_MPS_LOG_DIRECTORY/control.log``;
  with a file ``FAKE_FAIL`` in the log directory it fails the way a daemon without a GPU does.
* Without arguments it reads one command on stdin, like the real program: ``get_server_list``
  succeeds while the daemon lives, ``quit`` stops it; with no daemon, both fail (status 1);
  ``set_default_*`` commands are accepted (recorded only).
Every call is appended to ``$CUDA_MPS_LOG_DIRECTORY/calls.log``.
The real daemon is exercised by the ``gpu``-marked tests.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

pipe = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
logs = Path(os.environ.get("CUDA_MPS_LOG_DIRECTORY", "/var/log/nvidia-mps"))
pidfile = pipe / "fake-control.pid"


def alive() -> int | None:
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def main() -> int:
    args = sys.argv[1:]
    if args == ["--serve"]:
        pidfile.write_text(str(os.getpid()))
        with open(logs / "control.log", "a") as f:
            f.write(f"fake control daemon started, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}\n")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(1)
    command = " ".join(args) if args else sys.stdin.readline().strip()
    with open(logs / "calls.log", "a") as f:
        f.write(f"{command} pipe={pipe} log={logs}\n")
    if args == ["-d"]:
        if (logs / "FAKE_FAIL").exists():
            print("An instance of this daemon is already running? no: no CUDA-capable device", file=sys.stderr)
            return 1
        subprocess.Popen([sys.executable, __file__, "--serve"], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return 0
    pid = alive()
    if pid is None:
        print("Cannot find MPS control daemon process", file=sys.stderr)
        return 1
    if command == "get_server_list" or command.startswith("set_default_"):
        return 0
    if command == "quit":
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if alive() is None:
                break
            time.sleep(0.02)
        pidfile.unlink(missing_ok=True)
        return 0
    print(f"unknown command {command}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
