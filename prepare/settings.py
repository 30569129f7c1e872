"""prepare's command line and its settings: the parser (every flag and default), and :class:`PrepareConfig`, the
one typed object the job is run from, checked once (prepare/main.py).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from common import storage
from common.cli import UsageError, add_common_arguments
from common.images import DECODES, DEFAULT_DECODE, FORMATS, MAX_PIXELS, MIN_MAX_SIDE, parse_formats
from common.manifest import SHARDS_PER_PART
from common.settings import from_flags, store_from
from prepare import guard
from prepare.tasks import PrepareSettings

PROG = "prepare"
# 64 images per shard: exactly one model batch in infer.
DEFAULT_BATCH = 64


def build_parser() -> argparse.ArgumentParser:
    """The command line (docs/reference.md)."""
    p = argparse.ArgumentParser(prog=PROG, description="Pack the images under a prefix into MXNet RecordIO shards "
                                "and write manifest.parquet + skipped.parquet.")
    p.add_argument("--input", required=True, help="s3://BUCKET/PREFIX/ (or a local directory) holding the images; "
                   "listed by Spark tasks, one per sub-prefix")
    p.add_argument("--input-list", default=None, help="take the keys from here instead of listing --input: an S3 "
                   "Inventory manifest.json (CSV or Parquet), or a .parquet/.csv(.gz) file (or folder of them) with a "
                   "'key' column (bucket-relative keys under --input; optional 'size' and 'etag' columns)")
    p.add_argument("--output", required=True,
                   help="s3://BUCKET/shards/NAME/ (or a local directory): shards/, manifest/, manifest.parquet, "
                   "skipped.parquet")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                   help=f"images per shard (default {DEFAULT_BATCH}; the last shard holds the remainder)")
    p.add_argument("--formats", default="png", help="image formats to take: a comma list of " + ", ".join(sorted(
        FORMATS)) + " (default png), or all. A key is a candidate by its extension (.png; .jpg/.jpeg; .webp; "
        ".gif; .bmp; .tif/.tiff) and is accepted only if its content decodes as an allowed format; the original "
        f"bytes go into the shard; images over {MAX_PIXELS // 1_000_000} megapixels are skipped unread")
    p.add_argument("--max-side", type=int, default=None, help="store images whose shorter side exceeds N downscaled "
                   "to shorter side N (upright, LANCZOS; JPEG as JPEG quality 95, other formats as PNG), their original "
                   "size and sha256 in the manifest; never upscales (default: off, original bytes). 256 covers infer's "
                   "default 224 resize: every later infer then decodes small images")
    p.add_argument("--decode", choices=DECODES, default=DEFAULT_DECODE, help="fast (default): check a JPEG at its "
                   "smallest DCT scale (1/8; truncated and corrupt files still fail) and downscale it for --max-side "
                   "from the smallest scale that covers N; exact: decode every pixel (docs/reference.md)")
    p.add_argument("--exclude-manifest", action="append", default=[], metavar="URI",
                   help="leave out the keys already packed in this manifest (its manifest.parquet; repeatable): a "
                   "daily run packs only what is new. Nothing new gives an empty manifest and exit 0")
    p.add_argument("--max-skipped-fraction", type=float, default=guard.DEFAULT_MAX_SKIPPED_FRACTION,
                   help="when more than this share of the listed objects (folder markers aside) is skipped, write "
                   "skipped.parquet but no manifest and exit 1 naming the commonest reasons (default "
                   f"{guard.DEFAULT_MAX_SKIPPED_FRACTION:g}: more is a wrong --formats or prefix more often than an "
                   "archive; 1 accepts anything)")
    p.add_argument("--shards-per-part", type=int, default=None,
                   help=f"shards per manifest part, i.e. per packing task (default: {SHARDS_PER_PART}, fewer when "
                   "there are too few shards to give every core two parts; the manifest id does not depend on it)")
    add_common_arguments(p)
    return p


@dataclass(frozen=True)
class PrepareConfig:
    """Every flag of prepare, checked (:meth:`from_args`), and what follows from them: the formats taken and the
    Store."""

    input: str
    input_list: Optional[str]
    output: str
    batch: int
    formats: str
    max_side: Optional[int]
    decode: str
    exclude_manifest: list[str]
    max_skipped_fraction: float
    shards_per_part: Optional[int]
    sse: Optional[str]
    sse_kms_key_id: Optional[str]
    s3_endpoint_url: Optional[str]
    verbose: bool
    # derived from the flags
    accepted: tuple[str, ...]  # --formats, parsed
    store: storage.Store  # endpoint, --sse, retries: every object prepare writes, every task's I/O

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PrepareConfig":
        """The settings of parsed flags.

        Raises:
            UsageError: a bad --batch, --shards-per-part, --max-side, --max-skipped-fraction or --formats (named).
        """
        if args.batch < 1:
            raise UsageError(f"--batch must be at least 1, got {args.batch}")
        if not 0 <= args.max_skipped_fraction <= 1:
            raise UsageError(f"--max-skipped-fraction must be between 0 and 1, got {args.max_skipped_fraction:g}")
        if args.max_side is not None and args.max_side < MIN_MAX_SIDE:
            raise UsageError(f"--max-side must be at least {MIN_MAX_SIDE} pixels, got {args.max_side}")
        if args.shards_per_part is not None and args.shards_per_part < 1:
            raise UsageError(f"--shards-per-part must be at least 1, got {args.shards_per_part}")
        return from_flags(cls, args, accepted=parse_formats(args.formats), store=store_from(args))

    def task_settings(self) -> PrepareSettings:
        """What every packing task needs."""
        return PrepareSettings(storage.as_folder(self.input), storage.as_folder(self.output), self.batch,
                               self.store, self.accepted, self.max_side, self.decode)
