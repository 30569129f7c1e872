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
