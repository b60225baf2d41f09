"""Image classifier action (kind ``python:3-gpu``): ResNet-50 in ONNX on onnxruntime.

Input:  ``tensor``  base64 of little-endian float32 values, shape ``shape`` (default
                    [1, 3, 224, 224]): images already resized and normalised (the
                    ``image-pipeline`` preprocess action makes them from a picture);
        ``top``     how many classes to return (default 5);
        ``logits``  true: return every logit too.
        ``model_path`` the ONNX file (a default parameter set at deploy time).
Output: ``top`` per image ([{"class": i, "score": p}], softmax scores), ``device``,
        ``provider``, and ``logits`` when asked.

The session is created once per container and kept in a module-level cache, so warm
invocations reuse the loaded model (and, on a GPU, its weights in GPU memory).
"""

import base64
import time

import numpy as np
import onnxruntime as ort

_SESSIONS = {}


def load_model(path):
    """The one place that loads the model: swap this for the project's model loader."""
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = [p for p in wanted if p in ort.get_available_providers()]
    return ort.InferenceSession(path, providers=providers)


def session_for(path):
    session = _SESSIONS.get(path)
    if session is None:
        started = time.monotonic()
        session = _SESSIONS[path] = load_model(path)
        print(f"loaded {path} in {time.monotonic() - started:.2f} s with {session.get_providers()[0]}")
    return session


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
    session = session_for(path)
    provider = session.get_providers()[0]
    if provider != "CUDAExecutionProvider":
        print("no GPU visible to this python:3-gpu action: running on the CPU")
    logits = session.run(None, {session.get_inputs()[0].name: data})[0]
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores = shifted / shifted.sum(axis=1, keepdims=True)
    top = int(args.get("top", 5))
    best = np.argsort(-scores, axis=1)[:, :top]
    result = {
        "top": [[{"class": int(c), "score": float(s[c])} for c in row] for row, s in zip(best, scores, strict=True)],
        "device": "cuda" if provider == "CUDAExecutionProvider" else "cpu",
        "provider": provider,
    }
    if args.get("logits"):
        result["logits"] = logits.tolist()
    return result
