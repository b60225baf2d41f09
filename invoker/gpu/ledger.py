"""GPU memory admission: what each GPU has committed, and to which container.

Every GPU container is charged its request's memory (a stem cell: its CUDA context's
share, ``context_mb``; once claimed: the action's request) on exactly one GPU, from
before it starts until it is destroyed. A GPU never has more committed than its
capacity (total memory minus ``reserved_mb`` of headroom for the driver and the MPS
server). Committed memory is what was admitted, not what NVML sees used: the runtime's
real use is reported beside it (resident models), as the pool accounts host memory by
``limits.memory`` rather than by use.

A GPU shared through MPS also has a number of client slots: the MPS server takes a bounded
number of client CUDA contexts per device (48 on Volta and later up to CUDA 13.0, 60 in
later releases; one more fails ``cuCtxCreate`` with error 809), and every container on the
GPU is one client from start to exit, however little memory it asks for.

A container put to sleep (GPU sleep, issue #20) keeps its charge, and so its client slot: its
process and CUDA context live on. While its ``/sleep`` is under way the charge is marked
``shrinking`` to what it is expected to keep, so the difference counts as memory on its way
(``releasing_mb``), like a container being destroyed; the charge is resized only once the
runtime has answered, and grown back before a job wakes it.

Not thread-safe by itself: the pool calls it under its own lock.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from invoker.errors import AdmissionError
from invoker.gpu.inventory import GpuDevice, Inventory


@dataclass
class Charge:
    gpu: str  # the device key
    memory_mb: int
    releasing: bool = False  # its container is being destroyed: still committed until it is gone
    shrinking_to: int | None = None  # its container is going to sleep: what it should keep

    @property
    def on_its_way_mb(self) -> int:
        """What is committed now but will be free soon (a removal, a sleep under way)."""
        if self.releasing:
            return self.memory_mb
        if self.shrinking_to is not None:
            return max(0, self.memory_mb - self.shrinking_to)
        return 0


def has_room(free_mb: int, free_slots: int | None, needed_mb: int) -> bool:
    """Room for one more GPU container: its memory, and a client slot where slots count."""
    return free_mb >= needed_mb and (free_slots is None or free_slots > 0)


class GpuLedger:
    def __init__(self, inventory: Inventory, reserved_mb: int = 0, max_clients: Mapping[str, int] | None = None) -> None:
        self.devices: dict[str, GpuDevice] = {d.key: d for d in inventory.devices}
        self.reserved_mb = reserved_mb
        self.max_clients = dict(max_clients or {})  # per GPU; a GPU not named has no limit
        self._charges: dict[Hashable, Charge] = {}

    def capacity_mb(self, gpu: str) -> int:
        """What may be committed on a GPU; 0 for a MIG-enabled GPU (its instances are not placed on)."""
        device = self.devices[gpu]
        if device.mig_enabled:
            return 0
        return max(0, device.memory_total_mb - self.reserved_mb)

    def committed_mb(self, gpu: str) -> int:
        return sum(c.memory_mb for c in self._charges.values() if c.gpu == gpu)

    def releasing_mb(self, gpu: str) -> int:
        """Committed memory on its way to being free: removals and sleeps under way."""
        return sum(c.on_its_way_mb for c in self._charges.values() if c.gpu == gpu)

    def free_mb(self, gpu: str) -> int:
        return self.capacity_mb(gpu) - self.committed_mb(gpu)

    def clients(self, gpu: str) -> int:
        """Containers charged on a GPU, those being removed included (their process still lives)."""
        return sum(1 for c in self._charges.values() if c.gpu == gpu)

    def releasing_clients(self, gpu: str) -> int:
        return sum(1 for c in self._charges.values() if c.gpu == gpu and c.releasing)

    def free_clients(self, gpu: str) -> int | None:
        """Client slots left on a GPU; None where there is no limit (time-slicing)."""
        limit = self.max_clients.get(gpu)
        return None if limit is None else limit - self.clients(gpu)

    def admits(self, gpu: str, memory_mb: int) -> bool:
        """Whether one more container of ``memory_mb`` may start on the GPU now."""
        return has_room(self.free_mb(gpu), self.free_clients(gpu), memory_mb)

    def fits_anywhere(self, memory_mb: int) -> bool:
        """Whether some GPU could ever hold the request (else: fail, do not queue)."""
        return any(self.capacity_mb(g) >= memory_mb for g in self.devices)

    def candidates(self, memory_mb: int, loads: Mapping[str, int]) -> list[str]:
        """GPUs that can admit the request now: most free memory first, then least load."""
        fitting = [g for g in self.devices if self.admits(g, memory_mb)]
        order = list(self.devices)
        return sorted(fitting, key=lambda g: (-self.free_mb(g), loads.get(g, 0), order.index(g)))

    def commit(self, key: Hashable, gpu: str, memory_mb: int) -> None:
        if key in self._charges:
            raise AdmissionError(f"{key!r} is already charged on GPU {self._charges[key].gpu}")
        if self.free_mb(gpu) < memory_mb:
            raise AdmissionError(f"GPU {gpu} has {self.free_mb(gpu)} MB free, {memory_mb} MB asked")
        if self.free_clients(gpu) == 0:
            raise AdmissionError(f"GPU {gpu} has all its {self.max_clients[gpu]} MPS client slots taken")
        self._charges[key] = Charge(gpu, memory_mb)

    def resize(self, key: Hashable, memory_mb: int) -> None:
        """Change a container's charge on its GPU: shrink it to what a sleeping container still
        holds, grow it back before waking it. Ends a ``mark_shrinking``."""
        charge = self._charges[key]
        if self.free_mb(charge.gpu) + charge.memory_mb < memory_mb:
            raise AdmissionError(f"GPU {charge.gpu} cannot grow {key!r} to {memory_mb} MB")
        charge.memory_mb = memory_mb
        charge.shrinking_to = None

    def can_grow(self, key: Hashable, memory_mb: int) -> bool:
        charge = self._charges[key]
        return self.free_mb(charge.gpu) + charge.memory_mb >= memory_mb

    def mark_shrinking(self, key: Hashable, expected_mb: int | None) -> None:
        """A sleep is under way and should leave ``expected_mb``; None: it ended without a resize."""
        self._charges[key].shrinking_to = expected_mb

    def mark_releasing(self, key: Hashable) -> None:
        self._charges[key].releasing = True

    def release(self, key: Hashable) -> None:
        self._charges.pop(key, None)

    def charge(self, key: Hashable) -> Charge | None:
        return self._charges.get(key)
