"""The model library's exceptions: one type per way a load can fail, all under ``ModelError``.

An action can let them propagate (the runtime turns an uncaught exception into the activation's
``{"error": ...}`` with the traceback in the log) or catch ``ModelError`` and answer with
``{"error": str(e)}``; the messages name the file and the device, so they read well there.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base of every error the model library raises on purpose."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """The model file (or the weights file beside a module) does not exist."""


class UnknownModelFormatError(ModelError, ValueError):
    """The file is neither ONNX nor a Torch weights file the library can read."""


class DeviceUnavailableError(ModelError, RuntimeError):
    """The requested device does not exist here (no CUDA build, no GPU, index out of range)."""


class ModelSplitError(ModelError):
    """An ONNX graph could not be cut into stages (only raised where a split was demanded)."""


class ModelBusyError(ModelError):
    """A model cannot sleep while a call of it is in progress (it stays awake)."""
