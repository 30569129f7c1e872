"""The docs' links hold: every relative link in README.md and the Markdown under docs/, manifests/ and deploy/
names a file that exists, and every ``#section`` it names is a heading of that file (GitHub's anchors).

    python scripts/check_links.py        # prints each broken link, exits 1 if there is one (make lint)
"""

from __future__ import annotations

import glob
import os
import re
import sys
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ("README.md", "docs/*.md", "manifests/*.md", "deploy/**/*.md", "testkit/**/*.md")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def prose(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` outside fenced code blocks."""
    fenced = False
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if _FENCE.match(line.strip()):
                fenced = not fenced
            elif not fenced:
                yield n, line


def anchors(path: str) -> set[str]:
    """Every heading's anchor in a Markdown file (a repeated heading gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose(path):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            a = anchor(m.group(1))
            out.add(a if a not in seen else f"{a}-{seen[a]}")
            seen[a] = seen.get(a, 0) + 1
    return out


def broken(path: str) -> list[str]:
    """``file:line: link: why`` for each link of ``path`` that does not hold."""
    out = []
    for n, line in prose(path):
        for target in _LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, s3: ...
                continue
            file, _, section = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            where = f"{os.path.relpath(path, ROOT)}:{n}: {target}"
            if not os.path.exists(dest):
                out.append(f"{where}: no such file")
            elif section and dest.endswith(".md") and section not in anchors(dest):
                out.append(f"{where}: no section #{section} in {os.path.relpath(dest, ROOT)}")
    return out


def pages() -> list[str]:
    """The Markdown files checked."""
    return sorted({p for pattern in PAGES for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)
                   if "/.venv" not in p and "/target/" not in p})


def main() -> int:
    problems = [b for page in pages() for b in broken(page)]
    for p in problems:
        print(p)
    print(f"check_links: {len(pages())} pages, {len(problems)} broken links")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
