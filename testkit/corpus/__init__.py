"""The ONNX corpus: what real exporters write, weights stripped (testkit/onnx_corpus.py); ``make onnx-corpus``."""

import os

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
