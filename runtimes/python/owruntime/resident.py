"""What this runtime holds resident: models loaded by the action, the memory they take, and
the device memory its frameworks hold.

The model-loading library registers each model it keeps in the warm container's cache;
the server reports the registry to the invoker after every ``/run`` (response header
``X-OW-Resident``), so the invoker's placement knows which container already holds which
model on which GPU instead of guessing, and how much GPU memory the container really holds
next to what it asked for. One registry per runtime process.

A model put to sleep (``POST /sleep``, :mod:`owruntime.sleep`) moves from ``models`` to
``asleep``: its weights are in host memory, and the entry says how much device memory the
sleep really gave back. An invoker that knows nothing of sleep reads ``models`` only, so it
never counts an asleep model as on the GPU. The next call of the model wakes it and moves it
back.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

HEADER = "X-OW-Resident"


@dataclass(frozen=True)
class ResidentModel:
    key: str  # what identifies the model across containers: a content digest or a file path
    device: str  # "cuda:0", "cpu"
    bytes: int  # device memory its weights and buffers take


@dataclass(frozen=True)
class AsleepModel:
    key: str
    device: str  # where it runs when awake
    bytes: int  # device memory it takes when awake: what waking it needs
    host_bytes: int  # host memory that holds it while asleep
    freed: int  # device memory the sleep gave back, measured (see measured)
    measured: bool = True  # False: ``freed`` is the model's size, the device could not be asked


@dataclass(frozen=True)
class Residency:
    """One ``X-OW-Resident`` report."""

    models: tuple[ResidentModel, ...] = ()
    # Device memory the runtime's frameworks hold per device ("cuda:0"): torch's caching
    # allocator. Not the CUDA context itself, nor ONNX Runtime's arena, which it cannot see.
    held: dict[str, int] = field(default_factory=dict)
    asleep: tuple[AsleepModel, ...] = ()  # last: callers that build a Residency positionally


def framework_held_bytes() -> dict[str, int]:
    """What torch's allocator holds on each initialised CUDA device; nothing when the action
    never imported torch or never touched CUDA (this never imports or initialises either)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    try:
        cuda = torch.cuda
        if not cuda.is_initialized():
            return {}
        held = {f"cuda:{i}": int(cuda.memory_reserved(i)) for i in range(cuda.device_count())}
    except Exception:  # a broken CUDA state must not break /run; the report just says nothing
        return {}
    return {device: n for device, n in held.items() if n}


class Registry:
    def __init__(self, held: Callable[[], dict[str, int]] = framework_held_bytes) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], ResidentModel] = {}
        self._asleep: dict[tuple[str, str], AsleepModel] = {}
        self._held_now = held
        self._held: dict[str, int] = {}
        self._header = self._render()

    def register(self, key: str, device: str, nbytes: int) -> None:
        """The model is resident (loaded, or woken up)."""
        with self._lock:
            self._asleep.pop((key, device), None)
            self._models[(key, device)] = ResidentModel(key, device, int(nbytes))
            self._header = self._render()

    def mark_asleep(self, key: str, device: str, host_bytes: int, freed: int, measured: bool = True) -> None:
        with self._lock:
            awake = self._models.pop((key, device), None)
            nbytes = awake.bytes if awake is not None else 0
            self._asleep[(key, device)] = AsleepModel(key, device, nbytes, int(host_bytes), int(freed), measured)
            self._header = self._render()

    def unregister(self, key: str, device: str | None = None) -> None:
        with self._lock:
            for table in (self._models, self._asleep):
                for k in [k for k in table if k[0] == key and device in (None, k[1])]:
                    del table[k]
            self._header = self._render()

    def models(self) -> list[ResidentModel]:
        with self._lock:
            return list(self._models.values())

    def asleep(self) -> list[AsleepModel]:
        with self._lock:
            return list(self._asleep.values())

    def header_value(self) -> str:
        """Compact JSON: ``{"models": [{"key", "device", "bytes"}...], "asleep": [{"key", "device",
        "bytes", "host_bytes", "freed"}...], "held": {"cuda:0": n}}`` (``asleep`` only when a model
        sleeps, with ``"measured": false`` where ``freed`` is an estimate; ``held`` only when
        something is held). Sent with every /run: rendered when the models
        or the held memory change (the allocator grows in whole segments, so rarely once warm)."""
        held = self._held_now()
        if held != self._held:
            with self._lock:
                self._held = held
                self._header = self._render()
        return self._header

    def _render(self) -> str:
        report: dict = {"models": [asdict(m) for m in self._models.values()]}
        if self._asleep:
            report["asleep"] = [_asleep_json(m) for m in self._asleep.values()]
        if self._held:
            report["held"] = self._held
        return json.dumps(report, separators=(",", ":"))


def _asleep_json(m: AsleepModel) -> dict:
    report = asdict(m)
    if m.measured:
        del report["measured"]  # said only when false: the common case stays short
    return report


@dataclass(frozen=True)
class Registration:
    """How a cached model reports its own sleep and wake-up: it does so itself, under its own
    lock, so a call that wakes it cannot be overtaken by the report of the sleep before."""

    registry: Registry
    key: str
    device: str

    def awake(self, nbytes: int) -> None:
        self.registry.register(self.key, self.device, nbytes)

    def asleep(self, host_bytes: int, freed: int, measured: bool) -> None:
        self.registry.mark_asleep(self.key, self.device, host_bytes, freed, measured)


REGISTRY = Registry()  # the runtime process's one registry; actions reach it through the library


# The largest size a report may state (1 PiB): far above any device or host, far below what
# makes arithmetic on it overflow a float (``/metrics``, MB rounding).
MAX_REPORTED_BYTES = 2**50


def reported_bytes(value: object) -> int:
    """A size a runtime reported, as the invoker may use it: an int (not a bool, not a float),
    0 to ``MAX_REPORTED_BYTES``. Raises ValueError for anything else."""
    if type(value) is not int or not 0 <= value <= MAX_REPORTED_BYTES:
        raise ValueError(f"not a size in bytes: {str(value)[:40]}")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a runtime may report")


def loads_report(text: str | bytes) -> object:
    """``json.loads`` without NaN and Infinity (Python's parser accepts both)."""
    return json.loads(text, parse_constant=_no_constant)


def parse_header(value: str | None) -> Residency:
    """The invoker side: what a runtime reported; empty for a missing or malformed header, or
    one with a size that is not ``reported_bytes``."""
    if not value:
        return Residency()
    try:
        report = loads_report(value)
        models = tuple(ResidentModel(str(m["key"]), str(m["device"]), reported_bytes(m["bytes"]))
                       for m in report["models"])
        asleep = tuple(AsleepModel(str(m["key"]), str(m["device"]), reported_bytes(m["bytes"]),
                                   reported_bytes(m["host_bytes"]), reported_bytes(m["freed"]),
                                   bool(m.get("measured", True)))
                       for m in report.get("asleep") or ())
        held = {str(device): reported_bytes(n) for device, n in (report.get("held") or {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return Residency()
    return Residency(models, held, asleep)
