"""Image checks and the preprocessing contract (DESIGN.md), as pure functions over bytes.

Preprocessing is exactly: Pillow decode -> ``convert("RGB")`` -> ``resize((224, 224),
Image.LANCZOS)`` -> CHW float32 in 0..255, no mean or std: the model-zoo ResNet-18
normalises with its first layer, ``bn_data``.
"""

from __future__ import annotations

import io
from typing import Optional

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INPUT_SIZE = 224


class BadImageError(ValueError):
    """An image that cannot be decoded; the message names its key and source."""


def skip_reason_for_key(key: str, size: int) -> Optional[str]:
    """Why a listed object is not an image candidate, judged from its listing alone.

    Returns:
        ``None`` for a candidate, else a short reason for ``skipped.parquet``.
    """
    if key.endswith("/"):
        return "folder marker"
    if not key.lower().endswith(".png"):
        return "not a .png key"
    if size == 0:
        return "empty object"
    return None


def decode_rgb(data: bytes, key: str) -> Image.Image:
    """Decode PNG bytes fully and convert to RGB.

    Raises:
        BadImageError: not PNG bytes, or Pillow cannot decode them (truncated, corrupt).
    """
    if not data.startswith(PNG_SIGNATURE):
        raise BadImageError(f"{key!r}: not a PNG (bad signature)")
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG"])
        img.load()  # Pillow decodes lazily; force it so truncation shows here
        return img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError...
        raise BadImageError(f"{key!r}: undecodable PNG: {e}") from e


def check_png(data: bytes, key: str) -> Optional[str]:
    """``None`` if ``data`` is a decodable PNG, else the reason it is skipped."""
    if not data:
        return "empty object"
    try:
        decode_rgb(data, key)
    except BadImageError as e:
        return str(e).split(": ", 1)[1]
    return None


def preprocess_into(img: Image.Image, out: np.ndarray) -> None:
    """Resize an RGB image to 224x224 with LANCZOS and write it CHW float32 into ``out`` (3x224x224)."""
    resized = img.resize((INPUT_SIZE, INPUT_SIZE), Image.LANCZOS)
    out[...] = np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)


def preprocess(data: bytes, key: str) -> np.ndarray:
    """One image's model input: a 3x224x224 float32 array in 0..255."""
    out = np.empty((3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    preprocess_into(decode_rgb(data, key), out)
    return out
