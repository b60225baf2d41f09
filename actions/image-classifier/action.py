"""Image classifier action (kind ``python:3-gpu``): EfficientNet-Lite0, pretrained on
ImageNet, on Torch or on ONNX Runtime. Deployed as a zip (``build.py``): this file is its
``__main__.py``, beside ``preprocess.py``, ``imagenet_labels.json`` and the architecture's
package ``efficientnet_lite_pytorch``.

Input:  ``image``   a photo (PNG, JPEG, ...) as base64: decoded, resized to 224x224 and
                    normalised here (the same code as the image-pipeline preprocess action);
        or ``tensor`` base64 little-endian float32 [N, 3, 224, 224] already prepared
                    (what the preprocess action answers), with its ``shape``;
        ``top``     how many classes to return per image (default 5);
        ``logits``  true: return every logit too;
        ``model_path`` (a default parameter set at deploy time) an ``.onnx`` file runs on
                    ONNX Runtime, a ``.pth`` state dict on Torch (``build.py`` writes both).
Output: ``top`` per image: [{"class", "label", "score"}] (softmax probabilities), ``engine``
        (torch or onnx), ``device``, and ``logits`` when asked.

The model is loaded with the runtime's model loader (``owruntime.models.load``): on a GPU
layer by layer while the first layers already run; it stays resident in the warm container
(and is reported to the invoker, which sends this action's next calls here).
"""

import base64
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import preprocess
from owruntime.models import ModelError, load

HERE = Path(__file__).resolve().parent
ARCHITECTURE = "efficientnet-lite0"
SIDE = 224
_LOADED: set[tuple[str, str]] = set()  # what this container has loaded, for the log line only

Runner = Callable[[np.ndarray], np.ndarray]  # a float32 batch in, its logits out


@functools.cache
def labels() -> list[str]:
    return json.loads((HERE / "imagenet_labels.json").read_text())["labels"]


@functools.cache
def architecture() -> "torch.nn.Module":  # noqa: F821 - torch is imported on use
    """EfficientNet-Lite0 without weights, built once per container on the meta device (no
    memory, no initialisation): the loader fills it from the state dict."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    with torch.device("meta"):
        return EfficientNet.from_name(ARCHITECTURE)


def onnx_runner(path: str) -> tuple[str, Runner]:
    import onnxruntime as ort

    device = "cuda:0" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    model = load(path, device=device)  # warm calls get the same object from the model cache
    return device, lambda batch: model(batch)[0]


def torch_runner(path: str) -> tuple[str, Runner]:
    import torch

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = load(architecture(), weights=path, device=device)

    def run(batch: np.ndarray) -> np.ndarray:
        return model(torch.tensor(batch)).float().cpu().numpy()  # a copy: the batch may be read-only

    return device, run


def read_batch(args: dict) -> np.ndarray:
    """The [N, 3, 224, 224] float32 batch from ``image`` or ``tensor``; ValueError if neither fits."""
    if isinstance(args.get("image"), str):
        return preprocess.to_tensor(preprocess.decode(args["image"]), SIDE)
    if not isinstance(args.get("tensor"), str):
        raise ValueError("give 'image' (a photo as base64) or 'tensor' (see the image-pipeline action)")
    shape = args.get("shape", [1, 3, SIDE, SIDE])
    if (not isinstance(shape, list) or len(shape) != 4 or shape[1:] != [3, SIDE, SIDE]
            or not isinstance(shape[0], int) or not 1 <= shape[0] <= 64):
        raise ValueError(f"'shape' must be [N, 3, {SIDE}, {SIDE}] with N from 1 to 64, not {shape}")
    try:
        return np.frombuffer(base64.b64decode(args["tensor"], validate=True), dtype="<f4").reshape(shape)
    except ValueError as error:
        raise ValueError(f"'tensor' is not base64 float32 of shape {shape}: {error}") from None


def main(args: dict) -> dict:
    top = args.get("top", 5)
    if not isinstance(top, int) or not 1 <= top <= 1000:
        return {"error": "'top' must be an integer from 1 to 1000"}
    try:
        batch = read_batch(args)
    except ValueError as error:  # preprocess.BadImage is one
        return {"error": str(error)}
    path = args.get("model_path")
    if not isinstance(path, str) or not path:
        return {"error": "no model_path: deploy with actions/image-classifier/deploy.sh (or deploy.js)"}
    engine = "onnx" if path.endswith(".onnx") else "torch"
    started = time.monotonic()
    try:
        device, run = onnx_runner(path) if engine == "onnx" else torch_runner(path)
    except ModelError as error:
        return {"error": f"cannot load the model {path}: {error}"}
    if (path, device) not in _LOADED:
        _LOADED.add((path, device))
        print(f"loaded {engine} {path} in {time.monotonic() - started:.2f} s on {device}")
    if device == "cpu":
        print("no GPU visible to this python:3-gpu action: running on the CPU")
    logits = run(batch)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores = shifted / shifted.sum(axis=1, keepdims=True)
    best = np.argsort(-scores, axis=1)[:, :top]
    names = labels()
    result = {
        "top": [[{"class": int(c), "label": names[c], "score": float(s[c])} for c in row]
                for row, s in zip(best, scores, strict=True)],
        "engine": engine,
        "device": "cuda" if device.startswith("cuda") else "cpu",
    }
    if args.get("logits"):
        result["logits"] = logits.tolist()
    return result
