"""Torch models: weights staged in pinned host memory, loaded to a device plain or pipelined.

What is loaded is an ``nn.Module`` the action builds with its own code (unchanged), optionally
filled from a state-dict file (``torch.save(model.state_dict(), path)``, read with
``weights_only=True``). TorchScript is not taken: its compiled forward calls submodules
without Python hooks, so nothing could wait per module.

Pipelined loading: every module that owns tensors is a *unit*; device memory for all units is
allocated (one allocation for the model), all copies are issued at once in unit order on a side stream (one event per unit),
and the first forward runs immediately: each unit's forward pre-hook makes the compute stream
wait for its own weights' event only. During the first call a ``TorchFunctionMode`` also waits
for any weight an op touches before its owner ran (modules such as ``nn.MultiheadAttention``
read their children's weights directly) and, when partitioned, moves CPU activations to the
device at the CPU/device boundary. After the first call hooks and mode are gone.

Sleep (:meth:`TorchModel.sleep`): the device copy goes, the weights stay in the pinned host
buffer they were loaded from, and the next call loads them again the same pipelined way.

Limits of the first call: a module that reads weights outside any torch op (``.data_ptr()``,
custom CUDA code) is not waited for, and in a partitioned first call an in-place op whose
result is discarded (``cpu_tensor.add_(device_tensor)``) acts on a moved copy. Later calls
run the module untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from .copier import Copier, StreamCopier, ThreadCopier
from .devices import Device, check_torch_device
from .errors import ModelBusyError, ModelError, ModelNotFoundError, UnknownModelFormatError
from .partition import CostModel, StageCost
from .sleep import SleepReport, allocator_reserved, clock, release_framework_cache

if TYPE_CHECKING:
    from ..resident import Registration

log = logging.getLogger("owruntime.models")


@dataclass
class _Slot:
    module: nn.Module
    name: str
    is_param: bool


@dataclass
class _Tensor:
    host: torch.Tensor  # the staged host copy (pinned when the target is a GPU)
    slots: list[_Slot]  # every (module, attribute) holding it: tied weights share one tensor
    unit: int


@dataclass
class Unit:
    name: str
    module: nn.Module
    tensors: list[int]  # indices into HostModule.tensors it owns directly (first owner)
    nbytes: int


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise ModelNotFoundError(f"weights file {str(p)!r} not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise UnknownModelFormatError(
            f"{str(p)!r} is not a Torch state dict saved with torch.save: {e}"
        ) from e


ALIGN = 256  # bytes: each weight's view starts where any dtype (and a DMA transfer) may start


def pinned_buffer(nbytes: int) -> torch.Tensor:
    """One page-locked host buffer (``cudaHostAlloc``: needs a CUDA driver)."""
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


def _layout(tensors: Sequence[torch.Tensor]) -> tuple[list[int], int]:
    """Byte offsets of ``tensors`` packed one after the other, each aligned; -> (offsets, total)."""
    offsets, total = [], 0
    for t in tensors:
        offsets.append(total)
        total += -(-t.nbytes // ALIGN) * ALIGN
    return offsets, total


def empty_packed(like: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Uninitialised tensors shaped like ``like`` on ``device``, the dense ones in ONE allocation:
    a load (or a wake-up, after a sleep emptied the cache) pays one ``cudaMalloc``, not one per
    block the allocator would carve. Each is its own tensor on the shared storage (``set_``,
    not a view), so each keeps its own version counter. Freed when the last of them goes."""
    dense = [i for i, t in enumerate(like)
             if t.layout == torch.strided and not t.is_quantized and t.is_contiguous()]
    offsets, total = _layout([like[i] for i in dense])
    storage = torch.empty(total, dtype=torch.uint8, device=device).untyped_storage()
    out: list[torch.Tensor | None] = [None] * len(like)
    for i, offset in zip(dense, offsets, strict=True):
        t = like[i]
        out[i] = torch.empty(0, dtype=t.dtype, device=device).set_(storage, offset // t.element_size(), t.shape)
    for i in sorted(set(range(len(like))) - set(dense)):  # sparse, quantized, strided: rare
        out[i] = torch.empty_like(like[i], device=device)
    return out


def pack(tensors: Sequence[torch.Tensor], allocate: Callable[[int], torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Copy ``tensors`` (dense) into one byte buffer from ``allocate``; -> (buffer, views of it
    with the tensors' shapes, dtypes and values). One allocation per model: torch's pinned host
    allocator rounds every block up to a power of two (pytorch#95823), so pinning weight by
    weight can take twice the model's size from the container's memory, in hundreds of calls."""
    offsets, total = _layout(tensors)
    buffer = allocate(total)
    views = []
    for t, offset in zip(tensors, offsets, strict=True):
        view = buffer[offset : offset + t.nbytes].view(t.dtype).view(t.shape)
        view.copy_(t)
        views.append(view)
    return buffer, views


class HostModule:
    """A module whose weights are staged in host memory (pinned for a GPU), ready to load.

    Pinned weights live in one buffer (``pin_seconds`` says what staging them took: on a cold
    start it is part of the load). ``allocate`` gives that buffer; the default pins it.
    """

    def __init__(self, module: nn.Module, *, pin: bool,
                 allocate: Callable[[int], torch.Tensor] = pinned_buffer) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
        module.eval().requires_grad_(False)
        self.module = module
        self.tensors: list[_Tensor] = []
        self.units: list[Unit] = []
        self.loaded: TorchModel | None = None
        seen: dict[int, int] = {}
        for name, m in module.named_modules():
            owned: list[int] = []
            items = [(n, t, True) for n, t in m._parameters.items() if t is not None]
            items += [(n, t, False) for n, t in m._buffers.items() if t is not None]
            for attr, t, is_param in items:
                if t.device.type != "cpu":
                    raise ModelError(f"stage weights from host memory: {name}.{attr} is on {t.device}")
                slot = _Slot(m, attr, is_param)
                if id(t) in seen:
                    self.tensors[seen[id(t)]].slots.append(slot)
                    continue
                seen[id(t)] = len(self.tensors)
                owned.append(len(self.tensors))
                self.tensors.append(_Tensor(t.detach(), [slot], len(self.units)))
            if owned:
                nbytes = sum(self.tensors[i].host.nbytes for i in owned)
                self.units.append(Unit(name or "<root>", m, owned, nbytes))
        self.pin_seconds = 0.0
        self.pinned: torch.Tensor | None = None  # the one buffer the pinned weights are views of
        if pin:
            start = time.perf_counter()
            self._pin(allocate)
            self.pin_seconds = time.perf_counter() - start
        self._install([t.host for t in self.tensors])

    def _pin(self, allocate: Callable[[int], torch.Tensor]) -> None:
        dense = [i for i, t in enumerate(self.tensors)
                 if t.host.layout == torch.strided and not t.host.is_quantized]
        self.pinned, views = pack([self.tensors[i].host for i in dense], allocate)
        for i, view in zip(dense, views, strict=True):
            self.tensors[i].host = view
        for i in sorted(set(range(len(self.tensors))) - set(dense)):
            self.tensors[i].host = self.tensors[i].host.pin_memory()  # sparse or quantized: rare

    @property
    def nbytes(self) -> int:
        return sum(t.host.nbytes for t in self.tensors)

    def _install(self, values: Sequence[torch.Tensor], only: Sequence[int] | None = None) -> None:
        for i in range(len(self.tensors)) if only is None else only:
            slots = self.tensors[i].slots
            # one Parameter per tensor, so tied weights stay one object
            v = nn.Parameter(values[i], requires_grad=False) if slots[0].is_param else values[i]
            for slot in slots:
                (slot.module._parameters if slot.is_param else slot.module._buffers)[slot.name] = v

    def unit_times(self, call: Callable[[], Any], sync: Callable[[], None]) -> tuple[list[int], list[float]]:
        """Run ``call`` once timing each unit; -> (execution order, seconds per unit)."""
        marks: list[tuple[int, float]] = []

        def hook(i: int) -> Callable[..., None]:
            def pre(_m: nn.Module, _a: Any) -> None:
                sync()
                marks.append((i, time.perf_counter()))

            return pre

        handles = [u.module.register_forward_pre_hook(hook(i)) for i, u in enumerate(self.units)]
        try:
            with torch.inference_mode():
                call()
                sync()
            end = time.perf_counter()
        finally:
            for h in handles:
                h.remove()
        times = [0.0] * len(self.units)
        order: list[int] = []
        for k, (i, t) in enumerate(marks):
            nxt = marks[k + 1][1] if k + 1 < len(marks) else end
            times[i] += nxt - t
            if i not in order:
                order.append(i)
        order += [i for i in range(len(self.units)) if i not in order]
        return order, times


class _FirstCall(TorchFunctionMode):
    """Per-op guard for the first call: waits for weights not yet waited for; joins devices."""

    def __init__(self, model: TorchModel, mixed: bool) -> None:
        super().__init__()
        self.model = model
        self.mixed = mixed

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        pending = self.model._pending
        target = self.model.device.name
        if pending or self.mixed:
            on_device = False
            for a in _flat(args, kwargs):
                if pending and id(a) in pending:
                    self.model._wait_unit(pending[id(a)])
                if self.mixed and a.device.type != "cpu":
                    on_device = True
            if on_device:
                move = lambda t: t.to(target) if isinstance(t, torch.Tensor) and t.device.type == "cpu" else t  # noqa: E731
                args, kwargs = tree_map(move, args), tree_map(move, kwargs)
        return func(*args, **kwargs)


def _flat(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, list | tuple):
            out.extend(x for x in a if isinstance(x, torch.Tensor))
    return out


class TorchModel:
    """A module loaded on a device; call it like the module. ``close()`` frees the device copy.

    ``sleep()`` drops the device copy too but keeps the model: the weights stay in the host
    buffer they were loaded from (buffers the module changed are copied back first), and the
    next call loads them again, pipelined, before computing as they arrive.
    """

    def __init__(
        self,
        host: HostModule,
        device: Device,
        *,
        mode: str = "pipelined",
        cut: int = 0,
        order: Sequence[int] | None = None,
        copier: Copier | None = None,
    ) -> None:
        check_torch_device(device)
        if host.loaded is not None:
            raise ModelError("this module is already loaded; close() the loaded model first")
        if mode not in ("plain", "pipelined"):
            raise ValueError(f"mode must be 'plain' or 'pipelined', not {mode!r}")
        self.order = list(order) if order is not None else list(range(len(host.units)))
        if sorted(self.order) != list(range(len(host.units))):
            raise ValueError("order must be a permutation of the unit indices")
        self.cut = cut if mode == "pipelined" else 0
        if not 0 <= self.cut <= len(host.units):
            raise ValueError(f"cut must be within 0..{len(host.units)}")
        host.loaded = self
        self.host = host
        self.device = device
        self.cpu_units = set(self.order[: self.cut])
        self._lock = threading.Lock()  # the first call after a load
        self._state = threading.Lock()  # asleep or awake, and the calls in progress
        self._active = 0
        self._asleep = False
        self.last_sleep: SleepReport | None = None
        self.registration: Registration | None = None  # set by the model cache
        self._start(mode, copier)

    def _start(self, mode: str, copier: Copier | None = None) -> None:
        """Load the host weights onto the device: all at once (plain), or issue every copy and
        let the first call wait per unit (pipelined)."""
        host, device = self.host, self.device
        self.mode = mode
        self._hooks: list[Any] = []
        self._handles: list[Any] = [None] * len(host.units)
        self._waited: set[int] = set()
        self._pending: dict[int, int] = {}  # id(device tensor object) -> unit, first call only
        self._first = mode == "pipelined"
        self._load_error: BaseException | None = None
        self._copier: Copier | None = None
        dev = torch.device(device.name)
        if mode == "plain":
            self._values = [
                t.host if not device.is_cuda else t.host.to(dev) for t in host.tensors
            ]
            self._loaded_versions = [v._version for v in self._values]
            host._install(self._values)
            return
        self._copier = copier or (StreamCopier(dev) if device.is_cuda else ThreadCopier())
        self._values = empty_packed([t.host for t in host.tensors], dev)
        # each value's version once its one copy_ has run: a later change is the module's own
        self._loaded_versions = [v._version + 1 for v in self._values]
        for u in self.order[self.cut :] + self.order[: self.cut]:  # device stages first
            unit = host.units[u]
            self._handles[u] = self._copier.submit(
                [(self._values[i], host.tensors[i].host) for i in unit.tensors]
            )
        device_tensors = [i for i, t in enumerate(host.tensors) if t.unit not in self.cpu_units]
        host._install(self._values, only=device_tensors)
        for i in device_tensors:
            for slot in host.tensors[i].slots:
                attrs = slot.module._parameters if slot.is_param else slot.module._buffers
                self._pending[id(attrs[slot.name])] = host.tensors[i].unit
        for unit in host.units:
            needs = sorted({host.tensors[i].unit for i in unit.tensors} - self.cpu_units)
            if needs:
                self._hooks.append(unit.module.register_forward_pre_hook(self._pre_hook(needs)))

    def _pre_hook(self, units: list[int]) -> Callable[..., None]:
        def pre(_m: nn.Module, _args: Any) -> None:
            for u in units:
                self._wait_unit(u)

        return pre

    def _wait_unit(self, u: int) -> None:
        if u in self._waited:
            return
        self._copier.wait(self._handles[u])
        self._waited.add(u)
        for i in self.host.units[u].tensors:
            for slot in self.host.tensors[i].slots:
                attrs = slot.module._parameters if slot.is_param else slot.module._buffers
                self._pending.pop(id(attrs[slot.name]), None)

    @property
    def nbytes(self) -> int:
        """Device memory the weights take now (0 while asleep)."""
        return sum(v.nbytes for v in self._values)

    @property
    def asleep(self) -> bool:
        return self._asleep

    def _to(self, tree: Any, device: str) -> Any:
        return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, tree)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._state:
            if self._asleep:
                self._wake()
            self._active += 1
        try:
            if self._load_error is not None:
                raise ModelError("copying the weights to the device failed; load the model again") \
                    from self._load_error
            if self._first:
                with self._lock:
                    if self._first:
                        return self._first_call(args, kwargs)
            args, kwargs = self._to((args, kwargs), self.device.name)
            with torch.inference_mode():
                return self.host.module(*args, **kwargs)
        finally:
            with self._state:
                self._active -= 1

    def wake(self, copier: Copier | None = None) -> None:
        """Start loading a sleeping model now (copies issued, back at once); the next call
        computes as the weights arrive. A call wakes the model by itself: this only starts
        earlier. ``copier``: a benchmark's timed copier."""
        with self._state:
            if self._asleep:
                self._wake(copier)

    def _wake(self, copier: Copier | None = None) -> None:
        # Pipelined on a GPU whatever the first load was: the first layers compute while the
        # later ones arrive. On the CPU a plain model's weights are the host weights themselves.
        mode = "pipelined" if self.device.is_cuda or self.mode == "pipelined" else "plain"
        try:
            self._start(mode, copier)
        except BaseException:  # out of device memory, say: stay asleep, whole
            self._drop_device_copy()
            raise
        self._asleep = False
        if self.registration is not None:
            self.registration.awake(self.nbytes)

    def sleep(self) -> SleepReport:
        """Free the device copy, keep the weights in host memory; the next call wakes the model.

        Buffers (and weights) the module changed in place since the load are copied back to
        the host first (each tensor's version counter says which), so a wake-up restores
        them. Raises :class:`ModelBusyError` while a call is in progress; asleep already:
        the report of that sleep."""
        with self._state:
            if self._asleep and self.last_sleep is not None:
                return self.last_sleep
            if self._active:
                raise ModelBusyError(f"{self._active} call(s) of the model in progress")
            start = clock()
            reserved = allocator_reserved(self.device)
            if self.mode == "pipelined" and self._load_error is None:
                self.wait_loaded()  # never free a block a copy still writes
            changed = [i for i, v in enumerate(self._values)
                       if v._version != self._loaded_versions[i] and v is not self.host.tensors[i].host]
            for i in changed:
                self.host.tensors[i].host.copy_(self._values[i])
            # what goes: the storages of the device copy (one for the packed tensors), padding too
            dropped = sum({v.untyped_storage().data_ptr(): v.untyped_storage().nbytes()
                           for i, v in enumerate(self._values) if v is not self.host.tensors[i].host}.values())
            self._drop_device_copy()
            self._asleep = True
            release_framework_cache(self.device)
            after = allocator_reserved(self.device)
            if self.device.is_cuda:
                measured = reserved is not None and after is not None
                freed = max(0, reserved - after) if measured else dropped
            else:  # host-to-host "device" copies: what was dropped is what was freed
                measured, freed = True, dropped
            report = SleepReport(freed, self.host.nbytes, measured, clock() - start)
            self.last_sleep = report
            if self.registration is not None:
                self.registration.asleep(report.host_bytes, report.freed, report.measured)
            log.debug("asleep: %d bytes freed (%d changed tensors written back), %.3f s",
                      freed, len(changed), report.seconds)
            return report

    def _drop_device_copy(self) -> None:
        """The module back on the host weights, no device copy, no hooks."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._pending.clear()
        self._first = False
        self.host._install([t.host for t in self.host.tensors])
        self._values = []
        self._handles = [None] * len(self.host.units)
        if isinstance(getattr(self, "_copier", None), ThreadCopier):
            self._copier.close()
        self._copier = None

    def _first_call(self, args: tuple, kwargs: dict) -> Any:
        mixed = bool(self.cpu_units) and self.device.is_cuda
        args, kwargs = self._to((args, kwargs), "cpu" if self.cpu_units else self.device.name)
        try:
            with torch.inference_mode(), _FirstCall(self, mixed):
                out = self.host.module(*args, **kwargs)
        finally:
            self._end_first_call()
        return self._to(out, self.device.name)

    def _end_first_call(self) -> None:
        """Every unit waited for and every weight installed on the device before any later
        call, also after a first call that raised (a bad input) before reaching most units:
        later calls have no hooks, so they would read weights still being copied."""
        try:
            for u in self.order:  # units the call did not reach, and the CPU-run ones
                self._wait_unit(u)
            if self.cpu_units:
                self.host._install(self._values)
        except BaseException as error:  # a copy failed: no later call may use these weights
            self._load_error = error
            raise
        finally:
            for h in self._hooks:
                h.remove()
            self._hooks.clear()
            self._pending.clear()
            self._first = False

    def wait_loaded(self) -> None:
        """Block until every weight is on the device (the first call does this itself)."""
        if self.mode == "pipelined" and self._copier is not None:
            for u in self.order:
                self._copier.wait_host(self._handles[u])

    def measure(self, *args: Any, batch_size: int, bandwidth: float) -> CostModel:
        """Per-unit CPU and device compute times for these inputs, units in execution order.

        Runs the model once on the CPU (host weights) and once on the device; call it on a
        loaded model after its first call. Bytes per unit come from the staged weights.
        """
        if self._first or self._asleep:
            self(*args)
        sync = (lambda: torch.cuda.synchronize(self.device.name)) if self.device.is_cuda else (lambda: None)
        dargs = self._to(args, self.device.name)
        self.host.unit_times(lambda: self.host.module(*dargs), sync)  # warm-up
        order, dev_s = self.host.unit_times(lambda: self.host.module(*dargs), sync)
        self.host._install([t.host for t in self.host.tensors])
        try:
            cargs = self._to(args, "cpu")
            _, cpu_s = self.host.unit_times(lambda: self.host.module(*cargs), lambda: None)
        finally:
            self.host._install(self._values)
        stages = tuple(
            StageCost(self.host.units[u].nbytes, cpu_s[u], dev_s[u]) for u in order
        )
        return CostModel(stages, bandwidth, batch_size, tuple(order))

    def close(self, *, release: bool = True) -> None:
        """Put the host weights back and drop the device copy. ``release=False`` keeps the
        freed blocks in torch's cache (a benchmark timing copies, not ``cudaMalloc``)."""
        try:
            # Device waits order compute, not the freeing: no block is freed under a copy.
            if self.mode == "pipelined" and self._load_error is None:
                self.wait_loaded()
        finally:
            self._drop_device_copy()
            self.host.loaded = None
            if self.device.is_cuda and release:
                torch.cuda.empty_cache()
