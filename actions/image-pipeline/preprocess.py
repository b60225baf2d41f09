"""Preprocessing action (kind ``python:3``, CPU): a picture in, the classifier's input out.

Input:  ``image``  base64 of a binary PPM (P6, 8-bit RGB: ``convert x.jpg x.ppm``).
        ``size``   output side in pixels (default 224).
        ``top``, ``logits``  passed through for the classifier (in a sequence).
Output: ``tensor`` base64 little-endian float32, ``shape`` [1, 3, size, size]: the
        picture resized (bilinear, as ``torch.nn.functional.interpolate`` with
        ``align_corners=False``) and normalised with the ImageNet mean and deviation,
        ready for the ``image-classifier`` action.

CPU work stays on a CPU action so the GPU action's time goes to inference only: the
split that pipelines of CPU pre-processing and GPU inference use.
"""

import base64

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def decode_ppm(data):
    """(height, width, 3) uint8 from a binary PPM."""
    fields, pos = [], 0
    while len(fields) < 4:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":  # a comment runs to the end of its line
            pos = data.index(b"\n", pos)
            continue
        end = pos
        while end < len(data) and not data[end:end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    magic, width, height, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if magic != b"P6" or maxval != 255:
        raise ValueError("only binary 8-bit PPM (P6, maxval 255) is read")
    pixels = np.frombuffer(data, dtype=np.uint8, count=width * height * 3, offset=pos + 1)
    return pixels.reshape(height, width, 3)


def _axis(out_size, in_size):
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, (src - low).astype(np.float32)


def resize_bilinear(image, size):
    """(size, size, C) float32 from (H, W, C), like interpolate(..., align_corners=False)."""
    pixels = image.astype(np.float32)
    y0, y1, wy = _axis(size, image.shape[0])
    x0, x1, wx = _axis(size, image.shape[1])
    top = pixels[y0][:, x0] * (1 - wx)[None, :, None] + pixels[y0][:, x1] * wx[None, :, None]
    bottom = pixels[y1][:, x0] * (1 - wx)[None, :, None] + pixels[y1][:, x1] * wx[None, :, None]
    return top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]


def main(args):
    if "image" not in args:
        return {"error": "give 'image': base64 of a binary PPM (P6)"}
    try:
        image = decode_ppm(base64.b64decode(args["image"]))
    except (ValueError, IndexError) as error:
        return {"error": f"not a readable PPM: {error}"}
    size = int(args.get("size", 224))
    resized = resize_bilinear(image, size) / 255.0
    tensor = ((resized - MEAN) / STD).transpose(2, 0, 1)[None].astype("<f4")
    print(f"preprocessed a {image.shape[1]}x{image.shape[0]} picture to {list(tensor.shape)}")
    result = {"tensor": base64.b64encode(tensor.tobytes()).decode("ascii"), "shape": list(tensor.shape)}
    result.update({k: args[k] for k in ("top", "logits") if k in args})
    return result
