"""What this runtime holds resident: models loaded by the action, the memory they take, and
the device memory its frameworks hold.

The model-loading library registers each model it keeps in the warm container's cache;
the server reports the registry to the invoker after every ``/run`` (response header
``X-OW-Resident``), so the invoker's placement knows which container already holds which
model on which GPU instead of guessing, and how much GPU memory the container really holds
next to what it asked for. One registry per runtime process.
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
class Residency:
    """One ``X-OW-Resident`` report."""

    models: tuple[ResidentModel, ...] = ()
    # Device memory the runtime's frameworks hold per device ("cuda:0"): torch's caching
    # allocator. Not the CUDA context itself, nor ONNX Runtime's arena, which it cannot see.
    held: dict[str, int] = field(default_factory=dict)


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
        self._held_now = held
        self._held: dict[str, int] = {}
        self._header = self._render()

    def register(self, key: str, device: str, nbytes: int) -> None:
        with self._lock:
            self._models[(key, device)] = ResidentModel(key, device, int(nbytes))
            self._header = self._render()

    def unregister(self, key: str, device: str | None = None) -> None:
        with self._lock:
            for k in [k for k in self._models if k[0] == key and device in (None, k[1])]:
                del self._models[k]
            self._header = self._render()

    def models(self) -> list[ResidentModel]:
        with self._lock:
            return list(self._models.values())

    def header_value(self) -> str:
        """Compact JSON: ``{"models": [{"key", "device", "bytes"}...], "held": {"cuda:0": n}}``
        (``held`` only when something is held). Sent with every /run: rendered when the models
        or the held memory change (the allocator grows in whole segments, so rarely once warm)."""
        held = self._held_now()
        if held != self._held:
            with self._lock:
                self._held = held
                self._header = self._render()
        return self._header

    def _render(self) -> str:
        report: dict = {"models": [asdict(m) for m in self._models.values()]}
        if self._held:
            report["held"] = self._held
        return json.dumps(report, separators=(",", ":"))


REGISTRY = Registry()  # the runtime process's one registry; actions reach it through the library


def parse_header(value: str | None) -> Residency:
    """The invoker side: what a runtime reported; empty for a missing or malformed header."""
    if not value:
        return Residency()
    try:
        report = json.loads(value)
        models = tuple(ResidentModel(str(m["key"]), str(m["device"]), int(m["bytes"])) for m in report["models"])
        held = {str(device): int(n) for device, n in (report.get("held") or {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return Residency()
    return Residency(models, held)
