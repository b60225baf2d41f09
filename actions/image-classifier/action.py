"""Image classifier action (kind ``python:3-gpu``): ResNet-50 in ONNX on onnxruntime.

Input:  ``tensor``  base64 of little-endian float32 values, shape ``shape`` (default
                    [1, 3, 224, 224]): images already resized and normalised (the
                    ``image-pipeline`` preprocess action makes them from a picture);
        ``top``     how many classes to return (default 5);
        ``logits``  true: return every logit too.
        ``model_path`` the ONNX file (a default parameter set at deploy time).
Output: ``top`` per image ([{"class": i, "score": p}], softmax scores), ``device``,
        ``provider``, and ``logits`` when asked.

The model is loaded with the runtime's model loader (``owruntime.models.load``): on a GPU its
stages are built and their weights copied while the first ones already run; it stays resident
in the warm container (and is reported to the invoker, which sends this action's next calls
here); warm invocations reuse it.
"""

import base64
import time

import numpy as np
import onnxruntime as ort
from owruntime.models import load


def device() -> str:
    return "cuda:0" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"


_LOADED: set[str] = set()  # paths this container has loaded, for the log line only


def model_for(path):
    started = time.monotonic()
    model = load(path, device=device())  # warm calls get the same object from the model cache
    if path not in _LOADED:
        _LOADED.add(path)
        print(f"loaded {path} in {time.monotonic() - started:.2f} s on {device()}")
    return model


def main(args):
    path = args.get("model_path")
    if not path:
        return {"error": "no model_path: deploy the action with -p model_path /path/to/resnet50.onnx"}
    if "tensor" not in args:
        return {"error": "give 'tensor': base64 float32 [N,3,224,224] (see the image-pipeline action)"}
    shape = [int(n) for n in args.get("shape", [1, 3, 224, 224])]
    try:
        data = np.frombuffer(base64.b64decode(args["tensor"]), dtype="<f4").reshape(shape)
    except ValueError as error:
        return {"error": f"tensor does not match shape {shape}: {error}"}
    model = model_for(path)
    on_gpu = device().startswith("cuda")
    if not on_gpu:
        print("no GPU visible to this python:3-gpu action: running on the CPU")
    logits = model(data)[0]
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores = shifted / shifted.sum(axis=1, keepdims=True)
    top = int(args.get("top", 5))
    best = np.argsort(-scores, axis=1)[:, :top]
    result = {
        "top": [[{"class": int(c), "score": float(s[c])} for c in row] for row, s in zip(best, scores, strict=True)],
        "device": "cuda" if on_gpu else "cpu",
        "provider": "CUDAExecutionProvider" if on_gpu else "CPUExecutionProvider",
    }
    if args.get("logits"):
        result["logits"] = logits.tolist()
    return result
