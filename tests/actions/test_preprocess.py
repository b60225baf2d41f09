"""The image examples' preprocessing (actions/image-pipeline/preprocess.py, also shipped in the
classifier's zip), called directly: hostile pictures are refused before they are decoded."""

from __future__ import annotations

import base64
import importlib.util
import io
import struct
import zlib

import pytest
from actions_support import ACTIONS

pytest.importorskip("PIL", reason="the ml extra is not installed")
np = pytest.importorskip("numpy", reason="the ml extra is not installed")


@pytest.fixture(scope="module")
def preprocess():
    spec = importlib.util.spec_from_file_location("preprocess_action", ACTIONS / "image-pipeline" / "preprocess.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds none: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(("side", "error"), [
    (8_000, "the picture has 8000x8000 pixels, over 40000000"),  # the action's own limit
    (100_000, "not a readable picture: Image size (10000000000 pixels) exceeds limit"),  # Pillow's
])
def test_a_huge_picture_is_refused_before_decoding(preprocess, side: int, error: str) -> None:
    result = preprocess.main({"image": b64(png_header(side, side))})
    assert "tensor" not in result and result["error"].startswith(error)


@pytest.mark.parametrize(("args", "error"), [
    ({"image": b64(b"GIF89a but not really")}, "not a readable picture"),
    ({"image": "not base64!"}, "'image' is not base64"),
    ({"image": 42}, "give 'image'"),
    ({"image": "", "size": 10_000}, "'size' must be"),
])
def test_bad_input_gets_an_error_that_says_what_to_send(preprocess, args: dict, error: str) -> None:
    assert error in preprocess.main(args)["error"]


def test_a_picture_becomes_a_normalised_tensor(preprocess) -> None:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (40, 30), (124, 116, 104)).save(out, format="PNG")  # the ImageNet mean, in 8 bits
    result = preprocess.main({"image": b64(out.getvalue()), "size": 32, "top": 3})
    tensor = np.frombuffer(base64.b64decode(result["tensor"]), dtype="<f4").reshape(result["shape"])
    assert result["shape"] == [1, 3, 32, 32] and result["top"] == 3
    assert np.abs(tensor).max() < 0.01  # the mean colour normalises to about zero
