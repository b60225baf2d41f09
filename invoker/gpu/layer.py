"""The GPU layer as the pool sees it: inventory, each device's sharing mode
(``invoker.gpu.sharing``), settings, and what a GPU container is given (device, environment,
mounts, user). Devices are named by their key (``GpuDevice.key``: the UUID, else the index)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from invoker.gpu.inventory import Inventory
from invoker.gpu.mps import (
    CONTROL_BINARY,
    Mode,
    MpsDaemon,
    MpsError,
    SharingStatus,
    start_sharing,
)
from invoker.gpu.sharing import DeviceSharing, MpsSharing, TimeSlicing
from invoker.manifest import StemCell

log = logging.getLogger(__name__)

PREWARM_ENV = "OW_GPU_PREWARM"  # read by the runtime: modules to import and warm before it is ready
MPS_DOWN_TAG = "gpu-mps-down"  # pinged instead of gpu-mps while the daemon is down: admit no GPU work here


@dataclass(frozen=True)
class GpuSettings:
    reserved_mb: int = 512  # per GPU, never admitted (driver, the MPS server's ~0.4 GB)
    stem_cells: tuple[StemCell, ...] = ()  # each on every GPU
    prewarm: tuple[str, ...] = ("torch", "onnxruntime")
    ready_timeout_s: float = 300.0  # a stem cell that has not finished warming by then is dropped
    # The UID GPU containers run as under MPS (one MPS server serves one user); None: the
    # backend cannot choose (processes run as the invoker's user).
    mps_client_uid: int | None = None
    # Containers per MPS-shared GPU: the MPS server's client-context limit (48 on Volta and
    # later up to CUDA 13.0, 60 later: NVIDIA's MPS documentation, "Limitations").
    mps_max_clients: int = 48
    # How often the MPS control daemon is asked whether it still answers (0: never). A client
    # that finds no daemon silently runs without MPS, its memory limit unenforced.
    mps_check_interval_s: float = 10.0
    # GPU sleep (issue #20; invoker/gpu/README.md). Under GPU memory pressure, idle warm GPU
    # containers holding models are put to sleep (POST /sleep) before any is destroyed.
    sleep_on_pressure: bool = True
    # Idle this long, a GPU container sleeps even without pressure (0: only under pressure); it
    # is removed at the pool's idle_timeout_s as before, so this is meant to be shorter.
    sleep_after_s: float = 0.0
    # Host memory the models of all sleeping containers may hold; over it, the least recently
    # used asleep containers are removed.
    sleep_host_budget_mb: int = 8192
    # One CUDA context's memory when a sleep's report does not measure it (invoker.gpu.sleep): a
    # PyTorch process with lazy module loading measured 287 MB (pytorch/pytorch PR #86509; 667 MB
    # eager), rounded up. Not measured per MPS client on this project's GPUs: configurable.
    sleep_context_mb: int = 300
    sleep_timeout_s: float = 10.0  # a /sleep not answered by then: the container stays awake


@dataclass(frozen=True)
class GpuPlacement:
    """Where a GPU container runs and the limits its CUDA context was created with."""

    gpu: str  # the device's key, which is also what the container is given
    memory_mb: int
    sm_percent: int


class GpuLayer:
    def __init__(self, inventory: Inventory, sharing: SharingStatus, settings: GpuSettings,
                 daemon: MpsDaemon | None = None) -> None:
        self.inventory = inventory
        self.sharing = sharing
        self.settings = settings
        self.daemon = daemon
        self.daemon_up = daemon is not None
        self.daemon_problem: str | None = None  # why the daemon is not answering, while it is not
        self.daemon_restarts = 0
        self._owns_daemon = daemon is not None and daemon.started_here  # else: adopted, its owner restarts it
        # Called with daemon_up whenever it changes (the pool answers the GPU work it holds).
        self.listeners: list[Callable[[bool], None]] = []
        self._stopped = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.inventory_devices = {d.key: d for d in inventory.devices}
        # Each device's sharing mode, by key: MPS where this layer's daemon serves it.
        self.devices: dict[str, DeviceSharing] = {
            d.key: (MpsSharing(daemon, settings.mps_max_clients, settings.mps_client_uid, lambda: self.daemon_up)
                    if daemon is not None and sharing.mps_on(d.key) else TimeSlicing())
            for d in inventory.devices}
        if daemon is not None and settings.mps_check_interval_s > 0:
            self._watchdog = threading.Thread(target=self._watch_daemon, name="mps-watchdog", daemon=True)
            self._watchdog.start()

    @classmethod
    def start(cls, inventory: Inventory, settings: GpuSettings, mps_mode: Mode = "auto",
              control: str = CONTROL_BINARY, mps_dir: Path = Path("/run/openwhisk-gpu-mps")) -> GpuLayer:
        sharing, daemon = start_sharing(inventory, mps_mode, control, mps_dir / "pipe", mps_dir / "log",
                                        settings.mps_client_uid)
        if daemon is not None:
            # With CUDA_VISIBLE_DEVICES the daemon sees its GPUs renumbered from 0, in that order.
            shared = [d for d in inventory.devices if sharing.mps_on(d.key)]
            numbered = enumerate(shared) if daemon.visible_devices else ((d.index, d) for d in shared)
            ceilings = {n: max(1, d.memory_total_mb - settings.reserved_mb) for n, d in numbered}
            try:
                daemon.set_memory_ceilings(ceilings)
            except MpsError as error:  # an older daemon: the per-client limits still apply
                log.warning("MPS: no server-side memory ceiling: %s", error)
        return cls(inventory, sharing, settings, daemon)

    def stop(self) -> None:
        self._stopped.set()
        if self._watchdog is not None:
            self._watchdog.join()
        if self.daemon is not None:
            try:
                self.daemon.stop()
            except MpsError as error:
                log.warning("%s", error)

    def check_daemon(self) -> bool:
        """Whether the MPS control daemon answers; one this invoker started is started again.

        A daemon adopted from elsewhere (the Ansible systemd unit) is left to its owner, which
        restarts it; until then the problem is logged and reported."""
        daemon = self.daemon
        if daemon is None:
            return False
        if daemon.running():
            if not self.daemon_up:
                log.warning("MPS control daemon on %s answers again: admitting GPU work", daemon.pipe_dir)
            self._set_up(True, None)
            return True
        if self._owns_daemon:
            daemon.started_here = False  # until start() says so (it adopts one someone else started meanwhile)
            try:
                daemon.start()
            except MpsError as error:
                problem = f"MPS control daemon died and did not start again: {error}"
            else:
                self.daemon_restarts += 1
                log.error("MPS control daemon on %s had died: started it again", daemon.pipe_dir)
                self._set_up(True, None)
                return True
        else:
            problem = f"MPS control daemon on {daemon.pipe_dir} (not started by this invoker) does not answer"
        if self.daemon_up or problem != self.daemon_problem:
            # A client that finds no daemon runs without MPS, without limits: admit none.
            log.error("%s: no GPU work is admitted to MPS GPUs until it answers again", problem)
        self._set_up(False, problem)
        return False

    def _set_up(self, up: bool, problem: str | None) -> None:
        changed = up != self.daemon_up
        self.daemon_up, self.daemon_problem = up, problem
        if changed:
            for listener in list(self.listeners):
                listener(up)

    def paused(self, gpu: str) -> bool:
        """Whether a GPU takes no new GPU work now (shared through MPS, whose daemon is down)."""
        return not self.devices[gpu].admitting()

    def admitting(self) -> bool:
        """Whether some GPU takes new GPU work now."""
        return any(sharing.admitting() for sharing in self.devices.values())

    def tag(self) -> str:
        """The resource tag pings carry now."""
        return self.sharing.tag if self.daemon is None or self.daemon_up else MPS_DOWN_TAG

    def _watch_daemon(self) -> None:
        while not self._stopped.wait(self.settings.mps_check_interval_s):
            try:
                self.check_daemon()
            except Exception:  # the watchdog must outlive any surprise
                log.exception("MPS watchdog")

    def sharing_json(self) -> dict:
        """The sharing mode as ``/gpus`` shows it."""
        out: dict = {"mode": self.sharing.mode, "reason": self.sharing.reason}
        if self.daemon is not None:
            out["daemon"] = {"up": self.daemon_up, "problem": self.daemon_problem, "restarts": self.daemon_restarts,
                             "pipe_dir": str(self.daemon.pipe_dir), "started_here": self.daemon.started_here}
        return out

    def memory_total_mb(self, gpu: str) -> int:
        return self.inventory_devices[gpu].memory_total_mb

    def container_env(self, placement: GpuPlacement, stem_cell: bool) -> dict[str, str]:
        env = self.devices[placement.gpu].container_env(placement.memory_mb, placement.sm_percent)
        if stem_cell and self.settings.prewarm:
            env[PREWARM_ENV] = ",".join(self.settings.prewarm)
        return env

    def client_limits(self) -> dict[str, int]:
        """Most containers per GPU, where the sharing mode has a limit (MPS)."""
        return {key: limit for key, sharing in self.devices.items() if (limit := sharing.client_limit()) is not None}

    def container_user(self, gpu: str) -> str | None:
        """``uid:gid`` a GPU container must run as (None: as its image or backend says)."""
        return self.devices[gpu].user()

    def mounts(self, gpu: str) -> tuple[str, ...]:
        """Host directories a GPU container needs at the same path (MPS pipe and log)."""
        return self.devices[gpu].mounts()
