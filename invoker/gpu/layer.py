"""The GPU layer as the pool sees it: inventory, sharing (MPS or time-slicing), settings,
and what a GPU container is given (device, environment, mounts)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from invoker.gpu.inventory import Inventory
from invoker.gpu.mps import (
    CONTROL_BINARY,
    Mode,
    MpsDaemon,
    MpsError,
    SharingStatus,
    client_env,
    start_sharing,
)

log = logging.getLogger(__name__)

PREWARM_ENV = "OW_GPU_PREWARM"  # read by the runtime: modules to import and warm before it is ready


@dataclass(frozen=True)
class GpuStemCell:
    """``count`` prewarmed containers of ``kind`` with ``memory_mb`` on every GPU."""

    kind: str
    memory_mb: int
    count: int


@dataclass(frozen=True)
class GpuSettings:
    reserved_mb: int = 0  # per GPU, never admitted (driver, MPS server ~0.4 GB)
    stem_cells: tuple[GpuStemCell, ...] = ()
    prewarm: tuple[str, ...] = ("torch", "onnxruntime")
    ready_timeout_s: float = 300.0  # a stem cell that has not finished warming by then is dropped


@dataclass(frozen=True)
class GpuPlacement:
    """Where a GPU container runs and the limits its CUDA context was created with."""

    gpu: int
    device_id: str
    memory_mb: int
    sm_percent: int


class GpuLayer:
    def __init__(self, inventory: Inventory, sharing: SharingStatus, settings: GpuSettings,
                 daemon: MpsDaemon | None = None) -> None:
        self.inventory = inventory
        self.sharing = sharing
        self.settings = settings
        self.daemon = daemon

    @classmethod
    def start(cls, inventory: Inventory, settings: GpuSettings, mps_mode: Mode = "auto",
              control: str = CONTROL_BINARY, mps_dir: Path = Path("/run/openwhisk-gpu-mps")) -> GpuLayer:
        sharing, daemon = start_sharing(inventory, mps_mode, control, mps_dir / "pipe", mps_dir / "log")
        return cls(inventory, sharing, settings, daemon)

    def stop(self) -> None:
        if self.daemon is not None:
            try:
                self.daemon.stop()
            except MpsError as error:
                log.warning("%s", error)

    def device(self, gpu: int) -> str:
        return next(d.device_id for d in self.inventory.devices if d.index == gpu)

    def memory_total_mb(self, gpu: int) -> int:
        return next(d.memory_total_mb for d in self.inventory.devices if d.index == gpu)

    def container_env(self, placement: GpuPlacement, stem_cell: bool) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.daemon is not None and self.sharing.mps_on(placement.gpu):
            env.update(client_env(self.daemon, placement.memory_mb, placement.sm_percent))
        if stem_cell and self.settings.prewarm:
            env[PREWARM_ENV] = ",".join(self.settings.prewarm)
        return env

    def mounts(self, gpu: int) -> tuple[str, ...]:
        """Host directories a GPU container needs at the same path (MPS pipe and log)."""
        if self.daemon is None or not self.sharing.mps_on(gpu):
            return ()
        return (str(self.daemon.pipe_dir), str(self.daemon.log_dir))
