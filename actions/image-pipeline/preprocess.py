"""Preprocessing action (kind ``python:3``, CPU): a photo in, the classifier's input out.

Input:  ``image``  base64 of a picture in any format Pillow reads (PNG, JPEG, PPM, ...).
        ``size``   output side in pixels (default 224, what EfficientNet-Lite0 takes).
        ``top``, ``logits``  passed through for the classifier (in a sequence).
Output: ``tensor`` base64 little-endian float32, ``shape`` [1, 3, size, size]: the
        picture as RGB, resized to size x size (Pillow's bilinear filter, which averages
        over the source pixels when shrinking) and normalised with the ImageNet mean and
        deviation, ready for the ``image-classifier`` action.

CPU work stays on a CPU action so the GPU action's time goes to inference only: the
split that pipelines of CPU pre-processing and GPU inference use. The image classifier
ships this same file and calls :func:`to_tensor` when it is sent a photo itself.
"""

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MAX_PIXELS = 40_000_000  # a picture larger than this is refused before it is decoded


class BadImage(ValueError):
    """The input is not a picture this action can read."""


def decode(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError) as error:
        raise BadImage(f"'image' is not base64: {error}") from None


def to_tensor(picture: bytes, size: int = 224) -> np.ndarray:
    """(1, 3, size, size) float32: decoded, RGB, resized, normalised."""
    try:
        with Image.open(io.BytesIO(picture)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise BadImage(f"the picture has {image.width}x{image.height} pixels, over {MAX_PIXELS}")
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as error:
        raise BadImage(f"not a readable picture: {error}") from None
    pixels = np.asarray(rgb, dtype=np.float32) / 255.0
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)[None].astype("<f4")


def main(args: dict) -> dict:
    if not isinstance(args.get("image"), str):
        return {"error": "give 'image': a picture (PNG, JPEG, ...) as base64"}
    size = args.get("size", 224)
    if not isinstance(size, int) or not 16 <= size <= 1024:
        return {"error": "'size' must be an integer from 16 to 1024"}
    try:
        tensor = to_tensor(decode(args["image"]), size)
    except BadImage as error:
        return {"error": str(error)}
    print(f"preprocessed a picture to {list(tensor.shape)}")
    result = {"tensor": base64.b64encode(tensor.tobytes()).decode("ascii"), "shape": list(tensor.shape)}
    result.update({key: args[key] for key in ("top", "logits") if key in args})
    return result
