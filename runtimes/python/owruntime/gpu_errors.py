"""Plain words for an action that ran out of GPU memory.

Under MPS each GPU container may allocate only what its ``gpu`` annotation asked for
(``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``), so a model that fits the GPU can still fail with the
framework's bare "CUDA out of memory". The error the action returns keeps the framework's
text and adds what the limit was and how to raise it.
"""

from __future__ import annotations

import os

LIMIT_ENV = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"

# How torch, the CUDA runtime and driver, cuBLAS, cuDNN and onnxruntime's CUDA provider
# (CUDA_CALL: "CUDA failure 2", cudaErrorMemoryAllocation) word it.
_OOM_MARKERS = ("CUDA out of memory", "cudaErrorMemoryAllocation", "CUDA_ERROR_OUT_OF_MEMORY",
                "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "CUDA failure 2:")
# onnxruntime's arena does not name the device ("bfc_arena.cc:376 ... BFCArena::AllocateRawInternal
# ... Failed to allocate memory for requested buffer"); its CPU arena words it alike, but this
# only explains errors of GPU containers (see explain), where the arena out of room is the GPU's.
_ARENA = ("BFCArena", "bfc_arena")
_ARENA_OOM = "Failed to allocate memory"


def is_gpu_oom(ex: BaseException, text: str) -> bool:
    if type(ex).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (torch.cuda's alias)
        return True
    if any(marker in text for marker in _OOM_MARKERS):
        return True
    return _ARENA_OOM in text and any(arena in text for arena in _ARENA)


def explain(ex: BaseException, text: str) -> str:
    """``text`` (the exception's), with the MPS memory limit added when it is a GPU OOM under MPS
    (time-sliced, there is no per-action limit to name: the text stays the framework's)."""
    limit = os.environ.get(LIMIT_ENV)
    if not limit or not is_gpu_oom(ex, text):
        return text
    per_device = limit.split(",")[0].split("=", 1)[-1]
    return (f"{text}\n[GPU memory limit of this action: {per_device} (MPS, from its gpu annotation); "
            f"ask for more with -a gpu '{{\"memory\": \"...\"}}' or use less]")
