"""What the runtime refuses so that one tenant cannot use another's container or lift its own limits.

* **Caller check.** The invoker gives each container a random secret in ``OW_RUNTIME_SECRET``
  at creation; /init, /run and /sleep then need it in the ``X-OW-Runtime-Secret`` header
  (compared in constant time), so a neighbour container that reaches this one's port cannot run,
  init or put it to sleep.
  Without the variable nothing is required (old invokers, tests, hand-run containers).
  The variable is removed from ``os.environ`` at start, so the action does not see it.
* **Protected environment.** The names the invoker sets at creation (GPU device, MPS limits
  and pipe, the runtime's own settings) cannot be set through the action's init parameters.
* **Archive caps.** An archive may expand to at most ``OW_ZIP_MAX_BYTES`` bytes and
  ``OW_ZIP_MAX_FILES`` entries (a zip bomb fails /init with a clear error instead of filling
  the container's disk).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass

SECRET_ENV = "OW_RUNTIME_SECRET"
SECRET_HEADER = "X-OW-Runtime-Secret"
MSG_FORBIDDEN = f"this action runtime answers only its invoker: missing or wrong {SECRET_HEADER} header"

# Set at container creation by the invoker; an action may not change them through /init.
PROTECTED_PREFIXES = ("CUDA_MPS_", "NVIDIA_", "OW_RUNTIME_", "OW_GPU_", "OW_ZIP_")
PROTECTED_NAMES = frozenset({"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "GPU_DEVICE_ORDINAL"})

MAX_BYTES_ENV = "OW_ZIP_MAX_BYTES"
MAX_FILES_ENV = "OW_ZIP_MAX_FILES"
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_FILES = 30_000


def take_secret(environ: MutableMapping[str, str] = os.environ) -> bytes | None:
    """The caller secret, removed from the environment; None: callers are not checked."""
    value = environ.pop(SECRET_ENV, "")
    return value.encode("utf-8") if value else None


def authorised(expected: bytes | None, presented: str | None) -> bool:
    if expected is None:
        return True
    if presented is None:
        return False
    return hmac.compare_digest(expected, presented.encode("latin-1", "replace"))


def protected(name: str) -> bool:
    return name in PROTECTED_NAMES or name.startswith(PROTECTED_PREFIXES)


def split_env(env: Mapping[str, object]) -> tuple[dict[str, object], list[str]]:
    """The init environment without the protected names, and the names it dropped."""
    allowed = {k: v for k, v in env.items() if not protected(k)}
    return allowed, sorted(k for k in env if protected(k))


class ArchiveTooLarge(Exception):
    """An archive expands beyond the caps."""


@dataclass(frozen=True)
class ArchiveCaps:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_files: int = DEFAULT_MAX_FILES

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ArchiveCaps:
        def number(name: str, default: int) -> int:
            try:
                value = int(environ.get(name, "") or default)
            except ValueError:
                return default
            return value if value > 0 else default
        return cls(number(MAX_BYTES_ENV, DEFAULT_MAX_BYTES), number(MAX_FILES_ENV, DEFAULT_MAX_FILES))

    def check(self, sizes: Iterable[int]) -> None:
        """``sizes``: the declared size of every entry (an entry cannot expand beyond its
        declared size: ``zipfile`` stops there and fails the CRC check)."""
        files = total = 0
        for size in sizes:
            files += 1
            total += max(size, 0)
            if files > self.max_files:
                raise ArchiveTooLarge(f"the archive has more than {self.max_files} entries "
                                      f"(the runtime's limit, {MAX_FILES_ENV})")
            if total > self.max_bytes:
                raise ArchiveTooLarge(f"the archive expands to more than {self.max_bytes} bytes "
                                      f"(the runtime's limit, {MAX_BYTES_ENV})")
