"""What this runtime holds resident: models loaded by the action, and the memory they take.

The model-loading library registers each model it keeps in the warm container's cache;
the server reports the registry to the invoker after every ``/run`` (response header
``X-OW-Resident``), so the invoker's placement knows which container already holds which
model on which GPU instead of guessing. One registry per runtime process.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass

HEADER = "X-OW-Resident"


@dataclass(frozen=True)
class ResidentModel:
    key: str  # what identifies the model across containers: a content digest or a file path
    device: str  # "cuda:0", "cpu"
    bytes: int  # device memory its weights and buffers take


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], ResidentModel] = {}
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
        """Compact JSON: ``{"models": [{"key", "device", "bytes"}...]}``. Sent with every /run:
        rendered when the registry changes, not per request."""
        return self._header

    def _render(self) -> str:
        return json.dumps({"models": [asdict(m) for m in self._models.values()]}, separators=(",", ":"))


REGISTRY = Registry()  # the runtime process's one registry; actions reach it through the library


def parse_header(value: str | None) -> list[ResidentModel]:
    """The invoker side: the models a runtime reported; [] for a missing or malformed header."""
    if not value:
        return []
    try:
        models = json.loads(value)["models"]
        return [ResidentModel(str(m["key"]), str(m["device"]), int(m["bytes"])) for m in models]
    except (ValueError, KeyError, TypeError):
        return []
