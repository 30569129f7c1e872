"""Put a base virtual environment's packages behind this one's: ``python scripts/layer_venv.py BASE_VENV``.

Run with the upper environment's interpreter.  It writes ``shardinfer-base.pth`` into that environment's
site-packages: at start-up Python adds BASE_VENV's site-packages after its own (``site.addsitedir``, so the
base's own ``.pth`` files, the project's editable install among them, count too).  A package installed in the
upper environment wins over the base's copy: the Makefile's ``.venv-spark35`` is ``.venv`` with pyspark 3.5.9
and its py4j in front, instead of a second install of every pinned package (the same pins either way).

Needs only the standard library.
"""

import os
import sys
import sysconfig


def main(argv: list[str]) -> int:
    """Write the .pth file; 2 with one line when BASE_VENV has no site-packages for this Python."""
    if len(argv) != 1:
        print("usage: python scripts/layer_venv.py BASE_VENV", file=sys.stderr)
        return 2
    base = os.path.abspath(argv[0])
    site = sysconfig.get_path("purelib", vars={"base": base, "platbase": base})
    if not os.path.isdir(site):
        print(f"layer_venv.py: {argv[0]}: no {site} (a virtual environment of this Python version?)", file=sys.stderr)
        return 2
    own = sysconfig.get_path("purelib")
    with open(os.path.join(own, "shardinfer-base.pth"), "w") as f:
        f.write(f"import site; site.addsitedir({site!r})\n")
    print(f"{sys.prefix}: {site} behind {own}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
