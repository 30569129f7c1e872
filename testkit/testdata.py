"""Deterministic CIFAR-like images for the demo, the tests and the test model's calibration.

Real datasets cannot be downloaded here; these 32x32 RGB PNGs have what matters to the
pipeline: real PNG bytes of realistic size (2-3 KB), and content that differs from image
to image (a coloured background gradient, a few shapes, noise), so predictions vary.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar_like_image(index: int, seed: int = 0, size: int = 32) -> Image.Image:
    """The ``index``-th synthetic RGB image of ``size`` x ``size`` pixels for ``seed``."""
    rng = np.random.default_rng([seed, index])
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    angle = rng.uniform(0, np.pi)
    grid = np.cos(angle) * t + np.sin(angle) * t.transpose(1, 0, 2)
    grid = (grid - grid.min()) / max(float(np.ptp(grid)), 1e-6)
    base = (c0 * (1 - grid) + c1 * grid).astype(np.uint8)
    img = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 5))):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def cifar_like_png(index: int, seed: int = 0, size: int = 32) -> bytes:
    """PNG bytes of :func:`cifar_like_image`."""
    buf = io.BytesIO()
    cifar_like_image(index, seed, size).save(buf, format="PNG")
    return buf.getvalue()


def image_name(index: int) -> str:
    """``00042_cat.png``: a CIFAR-style file name (the class in the name is decoration)."""
    return f"{index:05d}_{CLASSES[index % len(CLASSES)]}.png"
