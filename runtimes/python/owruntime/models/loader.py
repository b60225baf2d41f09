"""``load()``: the one way an action loads a model (see the package docstring)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from .cache import ModelCache
from .devices import Device, check_torch_device, onnx_providers, parse_device
from .digest import file_digest
from .errors import ModelNotFoundError, UnknownModelFormatError
from .partition import CostModel, Plan, choose_cut
from .profiles import profile_path, read_profile

log = logging.getLogger("owruntime.models")

MODES = ("auto", "pipelined", "plain")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def default_cache_dir() -> Path:
    if d := os.environ.get("OW_MODEL_CACHE_DIR"):
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "owruntime" / "models"


_PROCESS_CACHE = ModelCache()  # the warm container's cache; tests and tools pass their own


def process_cache() -> ModelCache:
    return _PROCESS_CACHE


def _plan(partition: CostModel | Plan | int | None, n: int) -> tuple[int, tuple[int, ...]]:
    """-> (cut, order) from what the caller gave, logging why."""
    if partition is None:
        return 0, ()
    if isinstance(partition, int):
        log.debug("partition: cut=%d/%d given by the caller", partition, n)
        return partition, ()
    cost = partition if isinstance(partition, CostModel) else None
    plan = choose_cut(cost) if cost is not None else partition
    if cost is not None and len(cost.stages) != n:
        raise ValueError(f"cost model has {len(cost.stages)} stages, the model {n}")
    log.debug(plan.reason or f"partition: cut={plan.cut}/{n}")
    return plan.cut, (cost.order if cost is not None else ())


def load(
    model: str | os.PathLike[str] | Any,
    *,
    device: str = "cpu",
    mode: str = "auto",
    weights: str | os.PathLike[str] | None = None,
    key: str | None = None,
    partition: CostModel | Plan | int | None = None,
    batch_size: int = 1,
    stages: int = 4,
    max_crossing: int = 4,
    threads: int | None = None,
    cache: ModelCache | None = _PROCESS_CACHE,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Load an ONNX file or a Torch module for ``device``; returns a callable model.

    * ``model``: a path to an ``.onnx`` file, or a ``torch.nn.Module`` (built by the action's
      code on the CPU) with optional ``weights``: a state-dict file saved with ``torch.save``.
    * ``mode``: ``"pipelined"`` (copy layer by layer, compute as weights arrive), ``"plain"``
      (copy everything, then run) or ``"auto"`` (pipelined on a GPU, plain on the CPU).
    * ``partition``: run the first stages of the first call on the CPU: a measured
      :class:`CostModel` (from ``model.measure(...)``), a :class:`Plan`, or a cut index. When
      none is given, a profile kept by :func:`store_profile` for this model (ONNX file digest;
      Torch: ``key`` or weights file), device kind and ``batch_size`` is used if there is one.
    * ``stages``/``max_crossing`` (ONNX): how many stages to cut the graph into, and how many
      activations may cross a cut. Every stage is a session with a fixed creation cost, so a
      few large stages beat many small ones.
    * ``cache``: the warm container's model cache (the same key and device give the same
      loaded object, whatever the mode); ``None`` loads a private, unregistered copy.

    Raises :class:`ModelNotFoundError`, :class:`UnknownModelFormatError`,
    :class:`DeviceUnavailableError` (all :class:`ModelError`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    dev = parse_device(device)
    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if mode == "auto":
        mode = "pipelined" if dev.is_cuda else "plain"
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if not path.exists():
            raise ModelNotFoundError(f"model file {str(path)!r} not found")
        if path.suffix.lower() != ".onnx":
            hint = (" (a Torch state dict: pass the module that uses it, "
                    "load(MyNet(), weights=path))" if path.suffix.lower() in TORCH_SUFFIXES else "")
            raise UnknownModelFormatError(
                f"{str(path)!r}: unknown model format{hint}; load() takes an .onnx file "
                "or a torch.nn.Module"
            )
        onnx_providers(dev)  # device check before any work
        needs_key = cache is not None or mode == "pipelined"  # the split cache is by digest
        k = key or (file_digest(path, cdir) if needs_key else "")

        def make() -> Any:
            return _load_onnx(path, dev, mode, partition, batch_size, stages, max_crossing,
                              threads, cdir)
    else:
        import torch

        if not isinstance(model, torch.nn.Module):
            raise UnknownModelFormatError(
                f"cannot load a {type(model).__name__}: load() takes an .onnx path "
                "or a torch.nn.Module"
            )
        if isinstance(model, torch.jit.ScriptModule):  # its forward runs without our hooks
            raise UnknownModelFormatError(
                "TorchScript modules are not taken: load() needs the Python module "
                "(and its state dict) to wait for each module's weights"
            )
        check_torch_device(dev)
        from .torch_loader import read_state_dict

        if weights is not None and not Path(weights).is_file():
            raise ModelNotFoundError(f"weights file {str(weights)!r} not found")
        k = key or (_module_key(model, weights, cdir)
                    if cache is not None or weights is not None else "")

        def make() -> Any:
            state = read_state_dict(weights) if weights is not None else None
            return _load_torch(model, state, dev, mode, partition, k, batch_size, cdir)
    if cache is None:
        return make()
    return cache.get_or_load(k, dev.name, make)


def _module_key(module: Any, weights: Any, cdir: Path) -> str:
    """The class and the weights' digest; without a weights file, a hash of the tensors
    (pass ``key=`` to skip hashing when loading a module on every activation)."""
    cls = f"{type(module).__module__}.{type(module).__qualname__}"
    if weights is not None:
        return f"{cls}@{file_digest(Path(weights), cdir)}"
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(__import__("torch").uint8).numpy())
    return f"{cls}@sha256:{h.hexdigest()}"


def _load_torch(module: Any, state: Any, dev: Device, mode: str, partition: Any, key: str,
                batch_size: int, cdir: Path) -> Any:
    from .errors import ModelError
    from .torch_loader import HostModule, TorchModel

    if state is not None:
        try:
            module.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise ModelError(f"weights do not fit {type(module).__name__}: {e}") from e
    host = HostModule(module, pin=dev.is_cuda)
    if host.pinned is not None:
        log.debug("weights pinned: %d bytes in one buffer, %.3f s", host.pinned.nbytes, host.pin_seconds)
    if partition is None and key and mode == "pipelined":
        partition = read_profile(profile_path(cdir, key, dev, batch_size))
    cut, order = _plan(partition, len(host.units)) if mode == "pipelined" else (0, ())
    model = TorchModel(host, dev, mode=mode, cut=cut, order=order or None)
    model.profile_home = (cdir, key) if key else None
    return model


def _load_onnx(path: Path, dev: Device, mode: str, partition: Any, batch_size: int,
               stages: int, max_crossing: int, threads: int | None, cdir: Path) -> Any:
    from .onnx_loader import OnnxModel
    from .onnx_split import load_or_split

    if mode == "plain":
        return OnnxModel(path, dev, mode="plain", threads=threads)
    full = file_digest(path, cdir)  # memoized; a caller's key is no digest
    digest = full.split(":", 1)[-1][:32]
    split, reused = load_or_split(path, digest, cdir, stages=stages, max_crossing=max_crossing)
    log.debug("onnx split of %s: %d stages (%s)", path.name, len(split.stages),
              "cached" if reused else "computed")
    if partition is None:  # a profile measured earlier for this device and batch size
        partition = read_profile(profile_path(cdir, full, dev, batch_size))
    cut, _ = _plan(partition, len(split.stages))
    model = OnnxModel(path, dev, mode="pipelined", split=split, cut=cut, threads=threads)
    model.split_reused = reused
    model.profile_home = (cdir, full)
    return model
