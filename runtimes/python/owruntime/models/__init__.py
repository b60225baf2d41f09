"""Model loading for actions: ONNX files and Torch modules, pipelined onto the device.

One function: :func:`load` (``from owruntime.models import load``)::

    model = load("/path/resnet.onnx", device="cuda:0")        # ONNX, pipelined by stage
    model = load(MyNet(), weights="w.pt", device="cuda:0")    # Torch, pipelined by module
    y = model(x)

Pipelined loading overlaps the host-to-device copy of the weights with the first inference:
Torch modules wait per module for their own weights (side CUDA stream, one event per module,
forward pre-hooks); ONNX graphs are cut into stages (the split is cached on disk by the model's
digest) whose sessions are built, initializers and all, while earlier stages run. A measured
cost model may put the first stages of the first call on the CPU (:mod:`.partition`).
Loaded models stay resident in the process's :class:`ModelCache` and are reported to the
invoker through :data:`owruntime.resident.REGISTRY`.

Dependencies: torch (Torch models, bandwidth measurement), onnx (reading and cutting graphs),
onnxruntime(-gpu) (running them), numpy. All optional for the runtime: imported on use.
"""

from .cache import ModelCache
from .devices import Device, parse_device
from .errors import (
    DeviceUnavailableError,
    ModelError,
    ModelNotFoundError,
    ModelSplitError,
    UnknownModelFormatError,
)
from .loader import default_cache_dir, load, process_cache
from .partition import CostModel, Plan, StageCost, choose_cut
from .profiles import store_profile

__all__ = [
    "CostModel", "Device", "DeviceUnavailableError", "ModelCache", "ModelError",
    "ModelNotFoundError", "ModelSplitError", "Plan", "StageCost", "UnknownModelFormatError",
    "choose_cut", "default_cache_dir", "load", "parse_device", "process_cache", "store_profile",
]
