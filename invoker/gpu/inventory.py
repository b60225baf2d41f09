"""Which GPUs this node has.

Two sources, always named: ``nvml`` (detected through pynvml, package ``nvidia-ml-py``:
name, UUID, memory, utilisation, MIG mode) and ``declared`` (``--gpus "0:80GiB,1:80GiB"``,
for machines without NVML — CPU machines and CI — so that the placement and admission
policy runs and is tested everywhere). A declared inventory is never presented as
detected: its source is in every log line, on ``/gpus`` and in the metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Literal

from invoker.errors import InventoryError
from invoker.gpu.request import GpuRequestError, parse_size_mb

log = logging.getLogger(__name__)

Source = Literal["nvml", "declared", "none"]


@dataclass(frozen=True)
class GpuDevice:
    index: int
    memory_total_mb: int
    uuid: str | None = None  # None for a declared GPU
    name: str = "declared GPU"
    memory_used_mb: int | None = None  # NVML's view, all processes; None when declared
    utilization_pct: int | None = None
    mig_enabled: bool = False

    @property
    def key(self) -> str:
        """How the invoker names the device everywhere (ledger, placement, sharing) and what a
        container is given: the UUID where known (stable across reboots), else the index."""
        return self.uuid or str(self.index)

    def to_json(self) -> dict:
        return {
            "index": self.index, "uuid": self.uuid, "name": self.name,
            "memory_total_mb": self.memory_total_mb, "memory_used_mb": self.memory_used_mb,
            "utilization_pct": self.utilization_pct, "mig_enabled": self.mig_enabled,
        }


@dataclass(frozen=True)
class Inventory:
    devices: tuple[GpuDevice, ...]
    source: Source

    def describe(self) -> str:
        if not self.devices:
            return "no GPUs"
        what = ", ".join(f"{d.index}:{d.memory_total_mb}MB{' (MIG)' if d.mig_enabled else ''}" for d in self.devices)
        if self.source == "declared":
            return f"{len(self.devices)} GPU(s) declared, not detected: {what}"
        return f"{len(self.devices)} GPU(s) detected by NVML: {what}"

    def sample(self) -> Inventory:
        """The same GPUs with fresh memory use and utilisation (NVML only)."""
        if self.source != "nvml":
            return self
        return replace(self, devices=tuple(_sample(d) for d in self.devices))


def parse_declared(text: str) -> Inventory:
    """``"0:80GiB,1:80GiB"`` (index:memory, comma-separated); ``none`` or empty: no GPUs."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return Inventory((), "declared")
    devices = []
    for item in text.split(","):
        index_text, sep, memory_text = item.strip().partition(":")
        if not sep:
            raise InventoryError(f"declared GPU {item.strip()!r} must be index:memory, e.g. 0:80GiB")
        try:
            index = int(index_text)
            memory = parse_size_mb(memory_text, bare_unit="M")
        except (ValueError, GpuRequestError) as error:
            raise InventoryError(f"declared GPU {item.strip()!r}: {error}") from error
        if index < 0 or memory <= 0:
            raise InventoryError(f"declared GPU {item.strip()!r}: index must be >= 0 and memory > 0")
        devices.append(GpuDevice(index=index, memory_total_mb=memory))
    if len({d.index for d in devices}) != len(devices):
        raise InventoryError(f"declared GPUs repeat an index: {text!r}")
    return Inventory(tuple(sorted(devices, key=lambda d: d.index)), "declared")


def detect_nvml() -> Inventory | None:
    """The GPUs NVML sees; None where pynvml or the driver is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        log.info("NVML not available: %s", error)
        return None
    try:
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(GpuDevice(
                index=index,
                uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                name=_text(pynvml.nvmlDeviceGetName(handle)),
                memory_total_mb=memory.total // 1024**2,
                memory_used_mb=memory.used // 1024**2,
                utilization_pct=_utilization(pynvml, handle),
                mig_enabled=_mig_enabled(pynvml, handle),
            ))
        return Inventory(tuple(devices), "nvml")
    except pynvml.NVMLError as error:
        log.warning("NVML failed while listing GPUs: %s", error)
        return None
    finally:
        pynvml.nvmlShutdown()


def load_inventory(declared: str | None) -> Inventory:
    """NVML when it answers; else the declared inventory; else none. A declaration next to
    a working NVML is ignored with a warning: detected facts win over configured ones."""
    detected = detect_nvml()
    if detected is not None and detected.devices:
        if declared:
            log.warning("--gpus %r ignored: NVML detected the GPUs", declared)
        inventory = detected
    elif declared:
        inventory = parse_declared(declared)
    else:
        inventory = Inventory((), "none")
    log.info("GPU inventory: %s", inventory.describe())
    return inventory


def _sample(device: GpuDevice) -> GpuDevice:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return device
    try:
        handle = pynvml.nvmlDeviceGetHandleByUUID(device.uuid) if device.uuid else pynvml.nvmlDeviceGetHandleByIndex(device.index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return replace(device, memory_used_mb=memory.used // 1024**2, utilization_pct=_utilization(pynvml, handle))
    except pynvml.NVMLError:
        return device
    finally:
        pynvml.nvmlShutdown()


def _utilization(pynvml, handle) -> int | None:
    try:
        return int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except pynvml.NVMLError:  # e.g. not supported on a MIG-enabled GPU
        return None


def _mig_enabled(pynvml, handle) -> bool:
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError:  # not supported: a GPU without MIG
        return False
    return current == pynvml.NVML_DEVICE_MIG_ENABLE


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
