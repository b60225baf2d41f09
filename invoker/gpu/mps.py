"""NVIDIA MPS: the control daemon's life and the environment of its clients.

The invoker owns the daemon, so users do not have to (the pitfalls are in
NVIDIA's Multi-Process Service documentation): it starts ``nvidia-cuda-mps-control -d`` with its
own pipe and log directories (not ``/tmp/nvidia-mps``, which the NVIDIA container runtime
mounts into every GPU container), checks it answers, and stops it (``quit``) at shutdown.
GPU containers get the two directories mounted, the host IPC namespace, and their limits:
``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` (SM share) and ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``
(device memory; ordinal 0 because each container sees exactly one GPU). Both are read
when the client creates its CUDA context, so they cannot change for a running container.

Where MPS cannot run — configured off, no NVML-detected GPU, MIG on every GPU, no
``nvidia-cuda-mps-control`` binary, or the daemon does not come up — GPU containers share
their GPU by time-slicing, and ``SharingStatus`` says why (log, ``/gpus``, metrics).

MPS serves one Linux user at a time, and starts its server as the user of the first client:
every GPU container must run as one UID, and that UID must be able to write the pipe and log
directories. With the Docker backend GPU containers run as ``--gpu-mps-uid`` (default 10001,
the runtime images' ``action`` user) whatever their image says, and the invoker gives both
directories to that UID; with the process backend they run as the invoker's own user.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from invoker.errors import MpsError
from invoker.gpu.inventory import Inventory

log = logging.getLogger(__name__)

CONTROL_BINARY = "nvidia-cuda-mps-control"
Mode = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class SharingStatus:
    """How GPU containers share a GPU on this node, and why."""

    mps: bool
    reason: str
    gpus: tuple[str, ...] = ()  # keys of the GPUs shared through MPS (others: time-slicing)

    @property
    def mode(self) -> str:
        return "mps" if self.mps else "time-slicing"

    @property
    def tag(self) -> str:
        """The resource tag pings carry for it (``gpu-mps`` or ``gpu-time-slicing``)."""
        return f"gpu-{self.mode}"

    def mps_on(self, key: str) -> bool:
        return self.mps and key in self.gpus


class MpsDaemon:
    """One MPS control daemon, identified by its pipe directory."""

    def __init__(self, control: str, pipe_dir: Path, log_dir: Path, visible_devices: tuple[str, ...] = (),
                 timeout_s: float = 10.0, client_uid: int | None = None) -> None:
        self.control = control
        self.pipe_dir = Path(pipe_dir)
        self.log_dir = Path(log_dir)
        self.visible_devices = visible_devices
        self.timeout_s = timeout_s
        self.client_uid = client_uid  # None: clients run as this process's user
        self.started_here = False

    def env(self) -> dict[str, str]:
        """What the daemon and every client need to find each other."""
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir), "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir)}

    def _env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.env()}
        if self.visible_devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.visible_devices)
        return env

    def _command(self, text: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([self.control], input=text + "\n", env=self._env(), capture_output=True,
                                  text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise MpsError(f"{self.control}: {error}") from error

    def _grant(self, directory: Path) -> None:
        """Make ``directory`` the clients' user's: the server MPS starts for them runs as
        that user and writes its pipes and ``server.log`` there."""
        uid = self.client_uid
        if uid is None or uid == os.geteuid():
            return
        owner = directory.stat().st_uid
        if owner == uid:
            return
        if os.geteuid() != 0:
            raise MpsError(f"{directory} belongs to uid {owner}, but GPU containers run as uid {uid} and the MPS "
                           f"server started for them must write there; the invoker (uid {os.geteuid()}) cannot "
                           f"change that: chown it to {uid} (the Ansible nvidia_mps role does)")
        try:
            os.chown(directory, uid, -1)
        except OSError as error:
            raise MpsError(f"cannot give {directory} to uid {uid}: {error}") from error
        log.info("MPS: %s now belongs to uid %d, the user GPU containers run as", directory, uid)

    def running(self) -> bool:
        """Whether a control daemon answers on this pipe directory."""
        try:
            return self._command("get_server_list").returncode == 0
        except MpsError:
            return False

    def start(self) -> None:
        """Start the daemon (or adopt one already answering on the same pipe directory)."""
        for directory in (self.pipe_dir, self.log_dir):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise MpsError(f"cannot create {directory}: {error}") from error
            self._grant(directory)
        if self.running():
            log.info("MPS control daemon already running on %s: using it", self.pipe_dir)
            return
        try:
            done = subprocess.run([self.control, "-d"], env=self._env(), capture_output=True, text=True,
                                  timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise MpsError(f"{self.control} -d: {error}") from error
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
            raise MpsError(f"{self.control} -d failed: {detail}")
        deadline = time.monotonic() + self.timeout_s
        while not self.running():
            if time.monotonic() > deadline:
                raise MpsError(f"{self.control} -d started but the daemon does not answer on {self.pipe_dir}")
            time.sleep(0.1)
        self.started_here = True
        log.info("MPS control daemon started (pipe %s, log %s)", self.pipe_dir, self.log_dir)

    def set_memory_ceilings(self, ceilings_mb: dict[int, int]) -> None:
        """Server-side device memory limits, per device index as the daemon sees it: a client's
        own ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` can only lower them (NVIDIA MPS docs). They are
        one value for every client of a server (all GPU containers: one UID), so they are a
        ceiling, not the per-container limit, and apply to servers started after this."""
        for device, limit_mb in sorted(ceilings_mb.items()):
            done = self._command(f"set_default_device_pinned_mem_limit {device} {limit_mb}M")
            if done.returncode != 0:
                raise MpsError(f"{self.control} set_default_device_pinned_mem_limit failed: "
                               f"{(done.stderr or done.stdout).strip()}")

    def stop(self) -> None:
        """``quit`` a daemon this invoker started; one it adopted is left running."""
        if not self.started_here:
            return
        done = self._command("quit")
        if done.returncode != 0:
            raise MpsError(f"{self.control} quit failed: {(done.stderr or done.stdout).strip()}")
        deadline = time.monotonic() + self.timeout_s
        while self.running():
            if time.monotonic() > deadline:
                raise MpsError(f"the MPS control daemon on {self.pipe_dir} did not quit")
            time.sleep(0.1)
        self.started_here = False
        log.info("MPS control daemon stopped")


def client_env(daemon: MpsDaemon, memory_mb: int, sm_percent: int) -> dict[str, str]:
    """Environment of one GPU container under MPS."""
    return {
        **daemon.env(),
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(sm_percent),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={memory_mb}MB",
    }


def start_sharing(inventory: Inventory, mode: Mode, control: str, pipe_dir: Path, log_dir: Path,
                  client_uid: int | None = None) -> tuple[SharingStatus, MpsDaemon | None]:
    """Start MPS where it can run; otherwise say why GPUs are time-sliced.

    ``auto`` needs NVML-detected GPUs; ``on`` also tries with a declared inventory (a
    node whose NVML is hidden from the invoker) and is an error if MPS does not come up.
    """
    def fallback(reason: str) -> tuple[SharingStatus, None]:
        if mode == "on":
            raise MpsError(f"MPS was required (--gpu-mps on) but {reason}")
        log.warning("GPU sharing: time-slicing, because %s", reason)
        return SharingStatus(False, reason), None

    if mode == "off":
        log.info("GPU sharing: time-slicing (MPS off by configuration)")
        return SharingStatus(False, "MPS off by configuration (--gpu-mps off)"), None
    if not inventory.devices:
        return fallback("there are no GPUs")
    if inventory.source != "nvml" and mode != "on":
        return fallback("no GPU was detected (the inventory is declared, not detected)")
    usable = tuple(d for d in inventory.devices if not d.mig_enabled)
    if not usable:
        return fallback("MIG is enabled on every GPU")
    binary = shutil.which(control)
    if binary is None:
        return fallback(f"{control} is not installed")
    daemon = MpsDaemon(binary, pipe_dir, log_dir, tuple(d.key for d in usable if d.uuid),
                       client_uid=client_uid)
    try:
        daemon.start()
    except MpsError as error:
        return fallback(str(error))
    skipped = [d.index for d in inventory.devices if d.mig_enabled]
    reason = "MPS control daemon running" + (f"; GPUs {skipped} time-sliced (MIG enabled)" if skipped else "")
    log.info("GPU sharing: MPS on GPUs %s", [d.index for d in usable])
    return SharingStatus(True, reason, tuple(d.key for d in usable)), daemon
