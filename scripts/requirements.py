"""Print setup.cfg's pinned requirements, install_requires and the named extras, one per line; with
``--only``, the named extras alone (the Makefile installs .venv-spark35's pyspark with it).

    python3 scripts/requirements.py test bench import spark35
    python3 scripts/requirements.py --only spark35

Needs only a Python 3 (configparser): no virtual environment.
"""

import configparser
import os
import sys


def requirements(extras: list[str], path: str = os.path.join(os.path.dirname(__file__), "..", "setup.cfg"),
                 only: bool = False) -> list[str]:
    """install_requires (unless ``only``), then each extra's requirements, in setup.cfg's order; comments and blank
    lines left out."""
    cfg = configparser.ConfigParser()
    cfg.read(path)
    sections = [] if only else [cfg["options"]["install_requires"]]
    for extra in extras:
        if extra not in cfg["options.extras_require"]:
            sys.exit(f"requirements.py: setup.cfg has no extra {extra!r}")
        sections.append(cfg["options.extras_require"][extra])
    out = []
    for text in sections:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line and line not in out:
                out.append(line)
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    only = "--only" in args
    print("\n".join(requirements([a for a in args if a != "--only"], only=only)))
