"""Print setup.cfg's pinned requirements, install_requires and the named extras, one per line
(the Makefile installs a second environment's dependencies with them while the first is built).

    python3 scripts/requirements.py test bench import spark35

Needs only a Python 3 (configparser): no virtual environment.
"""

import configparser
import os
import sys


def requirements(extras: list[str], path: str = os.path.join(os.path.dirname(__file__), "..", "setup.cfg")) -> list[str]:
    """install_requires, then each extra's requirements, in setup.cfg's order; comments and blank lines left out."""
    cfg = configparser.ConfigParser()
    cfg.read(path)
    sections = [cfg["options"]["install_requires"]]
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
    print("\n".join(requirements(sys.argv[1:])))
