"""Fixtures for the model-loading tests; the models themselves are in model_zoo.py."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import torch  # noqa: E402
from model_zoo import (  # noqa: E402
    SENTENCES,
    SentenceEncoder,
    Spec,
    encoder,
    make_spec,
    minilm_dir,
    minilm_fresh,
    small_resnet,
)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Spec]:
    d = tmp_path_factory.mktemp("zoo")

    def images(b: int) -> tuple:
        return (torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(b)),)

    def sequences(b: int) -> tuple:
        return (torch.randn(b, 12, 64, generator=torch.Generator().manual_seed(b)),)

    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    bert = BertModel.from_pretrained(str(minilm_dir()), attn_implementation="eager")

    def sentences(b: int) -> tuple:
        t = tok(SENTENCES[:b], padding="max_length", max_length=16, truncation=True,
                return_tensors="pt")
        return (t["input_ids"], t["attention_mask"])

    return {
        "resnet": make_spec("resnet", small_resnet, small_resnet(), images, ["x"], d),
        "encoder": make_spec("encoder", encoder, encoder(), sequences, ["x"], d),
        "minilm": make_spec("minilm", minilm_fresh, SentenceEncoder(bert).eval(), sentences,
                        ["input_ids", "attention_mask"], d),
    }


@pytest.fixture(scope="session")
def split_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One split cache directory for the session: each model is cut once."""
    return tmp_path_factory.mktemp("splits")


