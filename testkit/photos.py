"""A small "phone photo" archive for the tests and the photo demo: mixed formats, EXIF orientation,
and the hostile files a real archive holds.

:func:`photo_archive` returns ``{relative key: Photo}``; each says whether prepare must accept it
(``reason is None``) or skip it with a reason containing ``reason``, and, for rotated photos,
which upright photo it must be predicted the same as.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

from testkit.testdata import cifar_like_image

# EXIF orientation tag -> the transpose that *stores* an upright image so that exif_transpose undoes it
STORE_FOR_ORIENTATION = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class Photo:
    """One object of the archive."""

    data: bytes
    reason: Optional[str] = None  # None: must be accepted; else a substring of its skip reason
    same_as: Optional[str] = None  # a rotated photo: the key of its upright twin


def photo(index: int, seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A landscape RGB picture (non-square, so a wrong orientation shows)."""
    return cifar_like_image(index, seed, size=max(size)).resize(size, Image.BICUBIC)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    """``img`` saved as ``fmt`` (Pillow's name), as bytes."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def with_orientation(img: Image.Image, tag: int, fmt: str = "PNG") -> bytes:
    """``img`` stored rotated, with the EXIF orientation ``tag`` that turns it upright again."""
    exif = Image.Exif()
    exif[0x0112] = tag
    return encode(img.transpose(STORE_FOR_ORIENTATION[tag]), fmt, exif=exif.tobytes())


def bomb_png(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of ``side`` x ``side`` pixels (400 MP at 20,000) in ~50 KB: a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def animated_gif(seed: int = 0) -> bytes:
    """A 3-frame animated GIF (infer uses the first frame)."""
    frames = [photo(100 + i, seed).convert("P", palette=Image.ADAPTIVE) for i in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def photo_archive(seed: int = 0, upright: int = 24) -> dict[str, Photo]:
    """The archive: ``upright`` JPEG photos, their rotated twins, other formats, and hostile files."""
    out: dict[str, Photo] = {}
    for i in range(upright):
        out[f"photos/2024/{i:03d}.jpg"] = Photo(encode(photo(i, seed), "JPEG", quality=92))
    for tag, i in ((3, 1), (6, 2), (8, 3)):  # lossless twins: the prediction must be exactly the upright one's
        out[f"photos/rotated/upright-{i}.png"] = Photo(encode(photo(i, seed), "PNG"))
        out[f"photos/rotated/exif-{tag}.png"] = Photo(with_orientation(photo(i, seed), tag),
                                                      same_as=f"photos/rotated/upright-{i}.png")
    out["photos/rotated/exif-6.jpg"] = Photo(with_orientation(photo(4, seed), 6, "JPEG"))
    out["photos/other/a.webp"] = Photo(encode(photo(30, seed), "WEBP", quality=90))
    out["photos/other/b.bmp"] = Photo(encode(photo(31, seed), "BMP"))
    out["photos/other/c.gif"] = Photo(animated_gif(seed))
    out["photos/other/d.tif"] = Photo(encode(Image.fromarray(
        (np.asarray(photo(32, seed).convert("L"), dtype=np.uint16) * 257)), "TIFF"))  # 16-bit gray TIFF
    out["photos/other/e-16bit.png"] = Photo(encode(Image.fromarray(
        (np.asarray(photo(33, seed).convert("L"), dtype=np.uint16) * 257)), "PNG"))
    out["photos/other/f-cmyk.jpg"] = Photo(encode(photo(34, seed).convert("CMYK"), "JPEG"))
    out["photos/other/UPPER.JPEG"] = Photo(encode(photo(35, seed), "JPEG"))
    out["photos/other/png-named.jpg"] = Photo(encode(photo(36, seed), "PNG"))  # lies, but PNG is allowed (all)
    good = encode(photo(40, seed), "JPEG")
    out["photos/bad/truncated.jpg"] = Photo(good[: len(good) // 2], reason="undecodable JPEG")
    out["photos/bad/bomb.png"] = Photo(bomb_png(), reason="decompression bomb")
    out["photos/bad/text-named.jpg"] = Photo(b"this is not an image at all\n" * 10, reason="not an image")
    out["photos/bad/empty.jpg"] = Photo(b"", reason="empty object")
    out["photos/bad/notes.txt"] = Photo(b"notes", reason="key")  # "not a .png/.jpg/... key"
    out["photos/bad/clip.heic"] = Photo(b"\x00\x00\x00\x18ftypheic", reason="key")
    return out


# Camera and phone sizes for the photo benchmark (bench/photos.py) and the decode tests: width x height.
PHOTO_SIZES = {"0.3MP": (640, 480), "2MP": (1920, 1080), "12MP": (4032, 3024)}


def photo_like(index: int, size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A photo-like RGB picture: a smooth scene (a CIFAR-like picture enlarged) plus per-pixel sensor grain,
    so that it compresses like a camera JPEG (quality 90: ~0.9 bytes per pixel), not like a flat render."""
    w, h = size
    scene = cifar_like_image(index, seed, size=64).resize((w, h), Image.BICUBIC)
    rng = np.random.default_rng([seed, index, 1])
    tile = rng.normal(0.0, 6.0, (min(h, 509), min(w, 509), 1)).astype(np.float32)  # odd size: no visible period
    grain = np.tile(tile, (-(-h // tile.shape[0]), -(-w // tile.shape[1]), 1))[:h, :w]
    return Image.fromarray(np.clip(np.asarray(scene, np.float32) + grain, 0, 255).astype(np.uint8), "RGB")


def photo_jpeg(index: int, size: tuple[int, int], seed: int = 0, quality: int = 90) -> bytes:
    """JPEG bytes of :func:`photo_like` (what a phone writes: quality 90, 4:2:0)."""
    return encode(photo_like(index, size, seed), "JPEG", quality=quality)


def screenshot_png(index: int, size: tuple[int, int] = (1920, 1080), seed: int = 0) -> bytes:
    """A screenshot-like PNG: flat panels, hard edges, rows of text-like strokes and a photo in a ninth of it."""
    w, h = size
    rng = np.random.default_rng([seed, index, 2])
    arr = np.empty((h, w, 3), np.uint8)
    arr[...] = rng.integers(200, 256, 3)
    for _ in range(6):  # panels
        x0, y0 = int(rng.integers(0, w - 64)), int(rng.integers(0, h - 64))
        arr[y0 : y0 + int(rng.integers(64, h // 2)), x0 : x0 + int(rng.integers(64, w // 2))] = rng.integers(0, 256, 3)
    strokes = rng.random((h // 4, w // 3)) < 0.18  # "text": 3x2-pixel glyph strokes on every other text row
    strokes[1::2] = False
    arr[np.kron(strokes, np.ones((4, 3), bool))[:h, :w]] = 30
    arr[h // 2 : h // 2 + h // 3, w // 2 : w // 2 + w // 3] = photo_like(index, (w // 3, h // 3), seed)  # a picture
    return encode(Image.fromarray(arr, "RGB"), "PNG")


def digit_photo(png: bytes, size: tuple[int, int], index: int) -> bytes:
    """A "photo" of a small image (one of testkit.digits_model's 8x8 digits): enlarged to ``size`` (bicubic),
    with sensor grain, as a quality-90 JPEG."""
    rng = np.random.default_rng([index, 3])
    w, h = size
    big = np.asarray(Image.open(io.BytesIO(png)).convert("RGB").resize((w, h), Image.BICUBIC), np.float32)
    tile = rng.normal(0.0, 6.0, (min(h, 509), min(w, 509), 1)).astype(np.float32)
    big += np.tile(tile, (-(-h // tile.shape[0]), -(-w // tile.shape[1]), 1))[:h, :w]
    return encode(Image.fromarray(np.clip(big, 0, 255).astype(np.uint8), "RGB"), "JPEG", quality=90)
