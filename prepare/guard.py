"""prepare's guard against junk (``--max-skipped-fraction``): a pure verdict over counts, no Spark.

When more than the allowed fraction of the listed objects (folder markers aside) end up skipped,
the input is far more likely a wrong ``--formats`` or prefix than an archive: prepare then writes
``skipped.parquet`` but no manifest index, and exits 1 with :func:`verdict`'s one line.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Optional, Sequence

from common.images import FORMATS

# More than half of what is listed being skipped is a wrong --formats or prefix far more often than an
# archive (an image beside one sidecar file each is exactly half: still accepted); 1 accepts anything.
DEFAULT_MAX_SKIPPED_FRACTION = 0.5
FOLDER_MARKER = "folder marker"


def reason_kind(reason: str) -> str:
    """A skip reason without its per-file detail: ``undecodable JPEG: broken data stream`` -> ``undecodable JPEG``."""
    return reason.split(":", 1)[0]


def extension(key: str) -> str:
    """``.jpg`` of ``a/B.JPG`` (lower case), ``(none)`` for a key without one."""
    name = key.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else "(none)"


def summarise(rows: Iterable[tuple[str, str]]) -> tuple[Counter, Counter, int]:
    """``(reason kinds, extensions of the keys skipped for their extension, folder markers)`` of skipped
    ``(key, reason)`` rows (folder markers are counted apart, not as reasons)."""
    reasons, exts, markers = Counter(), Counter(), 0
    for key, reason in rows:
        if reason == FOLDER_MARKER:
            markers += 1
            continue
        reasons[reason_kind(reason)] += 1
        if reason.startswith("not a ") and reason.endswith(" key"):
            exts[extension(key)] += 1
    return reasons, exts, markers


def merge(a: tuple[Counter, Counter, int], b: tuple[Counter, Counter, int]) -> tuple[Counter, Counter, int]:
    """Two :func:`summarise` results as one (Spark's reduce)."""
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def _format_of(ext: str) -> Optional[str]:
    return next((name for name, (exts, _) in FORMATS.items() if ext in exts), None)


def verdict(listed: int, reasons: Counter, extensions: Counter, limit: float, formats: Sequence[str]) -> Optional[str]:
    """The error line when the skipped share of ``listed`` (objects, folder markers not counted) exceeds
    ``limit``, else None."""
    skipped = sum(reasons.values())
    if listed <= 0 or skipped / listed <= limit:
        return None
    top = ", ".join(f"{n:,} {kind!r}" for kind, n in reasons.most_common(3))
    line = (f"{skipped / listed:.0%} of the {listed:,} listed objects were skipped, more than --max-skipped-fraction "
            f"{limit:g} (commonest: {top})")
    wanted = [f for f in (_format_of(e) for e, _ in extensions.most_common()) if f and f not in formats]
    if wanted:
        line += (f"; the skipped keys are mostly {extensions.most_common(1)[0][0]}: pass --formats "
                 f"{','.join(sorted(set(formats) | set(wanted[:2])))} (or all)")
    return line + "; every skipped key and its reason is in skipped.parquet; no manifest was written"
