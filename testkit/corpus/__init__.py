"""The ONNX corpus: what real exporters write, weights stripped (testkit/onnx_corpus.py); ``make onnx-corpus``.

The three exporters (export_torch.py, export_keras.py, export_paddle.py) each run in an environment of their own
and share :func:`save` and :func:`run`.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterable

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")


def save(name: str, proto, source: dict) -> str:
    """Strip ``proto``'s weights (recording ``source``) and write it as ``models/<name>.onnx``; returns the path."""
    import onnx

    from testkit.onnx_corpus import strip

    out = os.path.join(MODELS_DIR, f"{name}.onnx")
    onnx.save(strip(proto, source), out)
    return out


def run(export: Callable[[str], str], names: Iterable[str]) -> None:
    """Export the models named on the command line (default: ``names``), printing each file and its size."""
    for name in sys.argv[1:] or list(names):
        path = export(name)
        print(path, os.path.getsize(path), flush=True)
