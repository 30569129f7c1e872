"""Image formats, checks and the preprocessing contract (docs/reference.md), as pure functions over bytes.

Formats (prepare ``--formats``): a key is a candidate by its extension and is accepted only
if its content decodes as one of the allowed formats; images over :data:`MAX_PIXELS` are
refused from their header, before any pixel is decoded (decompression bombs).

Preprocessing (:class:`Preprocessing`) is exactly: Pillow decode -> ``ImageOps.exif_transpose``
-> ``convert("RGB")`` -> resize to S (``stretch``: S x S; ``shorter-side-crop``: shorter side
``round(S * 256 / 224)``, then the S x S crop at ``((w - S) // 2, (h - S) // 2)``), LANCZOS ->
CHW float32 in 0..255 -> ``(x - mean) / std`` per channel.  The defaults (224, stretch, mean
0, std 1) are the model-zoo ResNet-18's: it normalises with its first layer, ``bn_data``.

Decode (``--decode``): ``exact`` decodes every pixel.  ``fast`` (the default) decodes a JPEG at
the smallest DCT scale (1/2, 1/4, 1/8: Pillow's ``draft``) whose shorter side still reaches
what the resize needs (S for ``stretch``, ``round(S * 256 / 224)`` for ``shorter-side-crop``),
and shrinks any other large image by an integer box reduction down to no less than
:data:`REDUCING_GAP` times the target before the same LANCZOS resize.  Images no larger than
the target decode identically either way.  The agreement of the two is measured by
``bench/decode.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from common.errors import BadImageError, UsageError  # noqa: F401 - raised here, defined with the other user errors

if TYPE_CHECKING:
    from common.manifest import Original

INPUT_SIZE = 224
# Larger images are refused before decoding: 100 MP is beyond any camera's photo (a 200 MP
# phone sensor bins to 50 MP) and ~300 MB as RGB; a bomb of a few KB claims gigapixels.
MAX_PIXELS = 100_000_000
# Pillow's own guard raises at twice its limit, from the header: set so that it raises above ours.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # 50-100 MP: allowed, quietly

# --formats name -> (extensions, the Pillow format names its content may have)
FORMATS = {
    "png": ((".png",), ("PNG",)),
    "jpeg": ((".jpg", ".jpeg"), ("JPEG", "MPO")),  # MPO: the JPEG of many phone cameras
    "webp": ((".webp",), ("WEBP",)),
    "gif": ((".gif",), ("GIF",)),
    "bmp": ((".bmp",), ("BMP", "DIB")),
    "tiff": ((".tif", ".tiff"), ("TIFF",)),
}
DEFAULT_FORMATS = ("png",)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RESIZE_MODES = ("stretch", "shorter-side-crop")
DECODES = ("fast", "exact")
DEFAULT_DECODE = "fast"
# fast decode, formats without DCT scaling: box-reduce by an integer factor while the image stays at least
# this many times the resize target, then LANCZOS (Pillow's resize(reducing_gap=...)).
REDUCING_GAP = 3.0
_DCT_SCALED = ("JPEG", "MPO")



def parse_formats(text: str) -> tuple[str, ...]:
    """``"png,jpeg"`` or ``"all"`` -> sorted format names.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return tuple(sorted(FORMATS))
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise UsageError(f"--formats {text!r}: unknown format {', '.join(unknown) or '(none)'}; "
                         f"use a comma list of {', '.join(sorted(FORMATS))}, or all")
    return tuple(sorted(set(names)))


def _pillow_formats(formats: Sequence[str]) -> list[str]:
    return [p for f in formats for p in FORMATS[f][1]]


def skip_reason_for_key(key: str, size: int, formats: Sequence[str] = DEFAULT_FORMATS) -> Optional[str]:
    """Why a listed object is not an image candidate, judged from its listing alone.

    Returns:
        ``None`` for a candidate, else a short reason for ``skipped.parquet``.
    """
    if key.endswith("/"):
        return "folder marker"
    low = key.lower()
    extensions = [ext for f in formats for ext in FORMATS[f][0]]
    if not any(low.endswith(ext) for ext in extensions):
        return f"not a {'/'.join(extensions)} key"
    if size == 0:
        return "empty object"
    return None


def open_image(data: bytes, key: str, formats: Optional[Sequence[str]] = None) -> Image.Image:
    """Open (not decode) an image and check its format and size from the header alone.

    Raises:
        BadImageError: not an image, a format outside ``formats`` (all known ones when None), or
            more than :data:`MAX_PIXELS` pixels (named as a decompression bomb).
    """
    allowed = _pillow_formats(formats or tuple(FORMATS))
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadImageError(f"{key!r}: decompression bomb: over {MAX_PIXELS} pixels, refused before decoding") from e
    except Exception as e:  # noqa: BLE001 - UnidentifiedImageError, OSError, SyntaxError...
        sniffed = sniff(data)
        if sniffed:  # the signature of a format, but the header does not parse: damaged
            raise BadImageError(f"{key!r}: undecodable {sniffed}: {_message(e)}") from e
        raise BadImageError(f"{key!r}: not an image (unrecognised content)") from e
    if img.format not in allowed:
        wanted = ",".join(formats or sorted(FORMATS))
        raise BadImageError(f"{key!r}: content is {img.format}, not an allowed format ({wanted})")
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise BadImageError(f"{key!r}: decompression bomb: {w}x{h} = {w * h} pixels, over the {MAX_PIXELS} limit "
                            "(refused before decoding)")
    return img


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def sniff(data: bytes) -> Optional[str]:
    """The format a file's first bytes announce (None if none of ours)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for sig, name in _SIGNATURES if data.startswith(sig)), None)


def _message(e: Exception) -> str:
    """Pillow's message without object addresses (skip reasons must be the same on every run)."""
    import re

    return re.sub(r"<[^>]* at 0x[0-9a-f]+>", "<bytes>", str(e)) or type(e).__name__


def decode_rgb(data: bytes, key: str, formats: Optional[Sequence[str]] = None, min_side: Optional[int] = None
               ) -> Image.Image:
    """Decode an image, upright (EXIF orientation applied) and as RGB.

    CMYK, 16-bit, palette, grayscale and alpha images are converted; an animated image gives
    its first frame.  With ``min_side``, a JPEG is decoded at the smallest DCT scale whose
    both sides are still at least ``min_side`` (the whole image otherwise).

    Raises:
        BadImageError: see :func:`open_image`; or Pillow cannot decode it (truncated, corrupt).
    """
    img = open_image(data, key, formats)
    fmt = img.format
    try:
        if min_side and fmt in _DCT_SCALED and min(img.size) > 2 * min_side:
            img.draft(img.mode, (min_side, min_side))
        img.load()  # Pillow decodes lazily; force it so truncation shows here
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I"):  # 16/32-bit gray: scale to 8 bits (convert() would clip at 255)
            arr = np.asarray(img).astype(np.int64)
            shift = 8 if arr.max(initial=0) <= 0xFFFF else 24
            img = Image.fromarray(np.clip(arr >> shift, 0, 255).astype(np.uint8), "L")
        return img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError...
        raise BadImageError(f"{key!r}: undecodable {fmt}: {_message(e)}") from e


def check_image(data: bytes, key: str, formats: Sequence[str] = DEFAULT_FORMATS) -> Optional[str]:
    """``None`` if ``data`` decodes as one of ``formats``, else the reason it is skipped."""
    return admit(data, key, formats).reason


# prepare --max-side: a downscaled JPEG is stored as JPEG at this quality (chroma kept at full resolution);
# every other format as PNG (lossless).
PACK_JPEG_QUALITY = 95
MIN_MAX_SIDE = 8  # the smallest --image-size infer takes


@dataclass(frozen=True)
class Admitted:
    """prepare's verdict on one object: skipped (``reason``), or the bytes its shard stores.

    ``original`` is None when ``data`` is the object's own bytes, unchanged.
    """

    reason: Optional[str]
    data: bytes = b""
    original: Optional[Original] = None


def admit(data: bytes, key: str, formats: Sequence[str] = DEFAULT_FORMATS, max_side: Optional[int] = None,
          decode: str = DEFAULT_DECODE) -> Admitted:
    """Decode an object as prepare does; with ``max_side``, an image whose shorter side exceeds it is
    stored upright (EXIF orientation applied), as RGB, with its shorter side ``max_side`` (LANCZOS):
    a JPEG as JPEG (quality :data:`PACK_JPEG_QUALITY`, 4:4:4), anything else as PNG.  Never upscales.

    ``decode="fast"`` (prepare's default): a JPEG is checked at its smallest DCT scale (1/8: every
    coefficient is still entropy-decoded, so truncated and corrupt files fail as in a full decode;
    tests/test_decode.py compares the verdicts on damaged photos), and downscaled for ``max_side``
    from the smallest DCT scale whose sides both still reach ``max_side``, as infer's ``--decode fast``
    does for the model's input.  ``"exact"`` decodes every pixel."""
    if not data:
        return Admitted("empty object")
    if decode not in DECODES:
        raise ValueError(f"decode {decode!r}: expected one of {', '.join(DECODES)}")
    # the DCT scale to check at (1/8 when the stored bytes are the object's own), or to downscale from
    min_side = None if decode == "exact" else (max_side or 1)
    try:
        img = decode_rgb(data, key, formats, min_side=min_side)
    except BadImageError as e:
        return Admitted(str(e).split(": ", 1)[1])
    header = Image.open(io.BytesIO(data))  # the original's size: img may be at a DCT scale
    if max_side is None or min(header.size) <= max_side:
        return Admitted(None, data)
    w, h = header.size if (header.size[0] >= header.size[1]) == (img.size[0] >= img.size[1]) else header.size[::-1]
    size = (max_side, round(h * max_side / w)) if w <= h else (round(w * max_side / h), max_side)
    small = img.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if header.format in FORMATS["jpeg"][1]:
        small.save(buf, format="JPEG", quality=PACK_JPEG_QUALITY, subsampling=0)
    else:
        small.save(buf, format="PNG")
    from common.manifest import Original  # the manifest's format (it imports pyarrow; images alone need not)

    return Admitted(None, buf.getvalue(), Original(header.size[0], header.size[1], len(data),
                                                   hashlib.sha256(data).hexdigest()))


def _triple(values: Sequence[float], what: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise UsageError(f"{what}: expected 1 or 3 values (R,G,B), got {len(values)}")
    return values  # type: ignore[return-value]


def parse_triple(text: str, what: str) -> tuple[float, float, float]:
    """``"123.7,116.3,103.5"`` -> a per-channel triple (one value is used for all three)."""
    try:
        return _triple([float(v) for v in text.split(",")], what)
    except ValueError as e:
        raise UsageError(f"{what} {text!r}: {e}" if "expected" not in str(e) else str(e)) from e


def parse_size(text, what: str = "--image-size") -> tuple[int, int]:
    """``"224"`` -> (224, 224); ``"48x192"`` -> (48, 192): height x width."""
    parts = str(text).lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"{what} {text!r}: expected S or HxW, e.g. 224 or 48x192")
    h, w = (int(parts[0]), int(parts[-1]))
    return h, w


def input_hw(size: Union[int, tuple[int, int]]) -> tuple[int, int]:
    """(height, width) of a model input size given as S or (H, W)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def size_text(size: tuple[int, int]) -> str:
    """``224`` for a square size, ``48x192`` otherwise (what --image-size takes)."""
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class Preprocessing:
    """infer's preprocessing (docs/reference.md): size S or (H, W), resize mode, channel order, per-channel mean and std."""

    size: Union[int, tuple[int, int]] = INPUT_SIZE
    resize: str = "stretch"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    decode: str = DEFAULT_DECODE
    channel_order: str = "rgb"

    def __post_init__(self) -> None:
        hw = input_hw(self.size)
        object.__setattr__(self, "size", hw[0] if hw[0] == hw[1] else hw)  # a square size stays one number
        if min(hw) < 8:
            raise UsageError(f"--image-size must be at least 8, got {size_text(hw)}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise UsageError(f"--channel-order {self.channel_order!r}: expected one of {', '.join(CHANNEL_ORDERS)}")
        if self.resize not in RESIZE_MODES:
            raise UsageError(f"--resize {self.resize!r}: expected one of {', '.join(RESIZE_MODES)}")
        if any(s <= 0 for s in self.std):
            raise UsageError(f"--std must be positive, got {','.join(f'{s:g}' for s in self.std)}")
        if self.decode not in DECODES:
            raise UsageError(f"--decode {self.decode!r}: expected one of {', '.join(DECODES)}")

    @property
    def is_default(self) -> bool:
        """The zoo ResNet-18's size, resize and normalisation (whatever the decode)."""
        return self == Preprocessing(decode=self.decode)

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        return input_hw(self.size)

    @property
    def _cover(self) -> tuple[int, int]:
        """(height, width) the image is resized to cover before shorter-side-crop's centre crop."""
        return tuple(round(v * 256 / 224) for v in self.hw)  # type: ignore[return-value]

    @property
    def min_side(self) -> int:
        """The shorter side the resize needs from the decoded image."""
        return max(self.hw) if self.resize == "stretch" else max(self._cover)

    def record(self) -> dict:
        """What run.json says (EXIF orientation is always applied)."""
        return {"image_size": self.size if isinstance(self.size, int) else size_text(self.hw), "resize": self.resize,
                "mean": list(self.mean), "std": list(self.std), "exif_orientation": "applied",
                "interpolation": "LANCZOS", "color": "RGB",
                "channel_order": self.channel_order, "decode": self.decode}

    def decode_image(self, data: bytes, key: str) -> Image.Image:
        """Decode ``data`` as this preprocessing's decode says (:func:`decode_rgb`)."""
        return decode_rgb(data, key, min_side=self.min_side if self.decode == "fast" else None)

    def describe(self) -> str:
        """A stable text of size, resize and normalisation (for digests and run ids; the decode is apart)."""
        text = (f"size={size_text(self.hw)};resize={self.resize};mean={','.join(f'{v:g}' for v in self.mean)};"
                f"std={','.join(f'{v:g}' for v in self.std)}")
        return text + (f";channels={self.channel_order}" if self.channel_order != "rgb" else "")  # rgb: as before

    def short_hash(self) -> str:
        """8 hex digits of :meth:`describe`."""
        return hashlib.sha256(self.describe().encode()).hexdigest()[:8]

    def resized(self, img: Image.Image) -> Image.Image:
        """The H x W image the model sees (before normalisation)."""
        h, w = self.hw
        gap = REDUCING_GAP if self.decode == "fast" else None
        if self.resize == "stretch":
            return img.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=gap)
        iw, ih = img.size
        ch, cw = self._cover
        scale = max(cw / iw, ch / ih)  # square: the shorter side becomes round(S * 256 / 224)
        nw, nh = max(cw, round(iw * scale)), max(ch, round(ih * scale))
        img = img.resize((nw, nh), Image.Resampling.LANCZOS, reducing_gap=gap)
        left, top = (nw - w) // 2, (nh - h) // 2
        return img.crop((left, top, left + w, top + h))

    def into(self, img: Image.Image, out: np.ndarray) -> None:
        """Write an RGB image into ``out`` (3 x H x W float32), channels in this order, normalised."""
        self.normalise_into(self.resized(img), out)

    def normalise_into(self, resized: Image.Image, out: np.ndarray) -> None:
        """The last step of :meth:`into`: an H x W RGB image as ``out``'s float32 CHW, channels ordered, normalised."""
        pixels = np.asarray(resized, dtype=np.uint8)
        out[...] = (pixels if self.channel_order == "rgb" else pixels[:, :, ::-1]).transpose(2, 0, 1)
        if self.mean != (0.0, 0.0, 0.0):
            out -= np.asarray(self.mean, dtype=np.float32)[:, None, None]
        if self.std != (1.0, 1.0, 1.0):
            out /= np.asarray(self.std, dtype=np.float32)[:, None, None]


DEFAULT_PREPROCESSING = Preprocessing()


def preprocess(data: bytes, key: str, prep: Preprocessing = DEFAULT_PREPROCESSING) -> np.ndarray:
    """One image's model input: a 3 x S x S float32 array."""
    out = np.empty((3,) + prep.hw, dtype=np.float32)
    prep.into(prep.decode_image(data, key), out)
    return out


def decode_into(payloads: Sequence[bytes], keys: Sequence[str], out: np.ndarray,
                prep: Preprocessing = DEFAULT_PREPROCESSING) -> dict[int, str]:
    """Decode and preprocess every payload into ``out[i]``; an undecodable image gets zeros and an error.

    Returns:
        ``{record: "error: ..."}`` for the images that could not be decoded.
    """
    errors: dict[int, str] = {}
    for i, data in enumerate(payloads):
        try:
            prep.into(prep.decode_image(data, keys[i]), out[i])
        except BadImageError as e:
            errors[i] = f"error: {e}"
            out[i] = 0.0
    return errors
