"""Write docs/reference.md's flag tables from the jobs' parsers (common.settings.flag_table): every flag, its
default and its help, as ``--help`` prints them.

    .venv/bin/python scripts/flag_docs.py          # rewrite the blocks between the <!-- flags-...: --> markers
    .venv/bin/python scripts/flag_docs.py --check  # exit 1 when docs/reference.md is not what the parsers say
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DOC = os.path.join(ROOT, "docs", "reference.md")


def table(parser_of) -> str:
    """One job's flags as a Markdown table."""
    from common.settings import flag_table

    lines = ["| flag | default | what it does |", "|---|---|---|"]
    for flag, default, help_text in flag_table(parser_of()):
        if flag.startswith("--help"):
            continue
        flag = flag.replace("|", "\\|")
        cell = help_text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        shown = "required" if default == "required" else f"`{default}`" if default else ""
        lines.append(f"| `{flag}` | {shown} | {cell} |")
    return "\n".join(lines) + "\n"


def blocks() -> dict:
    """The four jobs' parsers, by block name."""
    from infer.compact import build_parser as compact
    from infer.delete import build_parser as delete
    from infer.settings import build_parser as infer
    from prepare.settings import build_parser as prepare

    return {f"flags-{name}": (lambda p=p: table(p)) for name, p in
            (("prepare", prepare), ("infer", infer), ("compact", compact), ("delete", delete))}


def main(argv: list[str]) -> int:
    from scripts.docblocks import main as rewrite

    return rewrite(DOC, blocks(), "scripts/flag_docs.py", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
