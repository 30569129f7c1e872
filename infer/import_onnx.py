"""Import an ONNX image model as an MXNet symbol + params that infer loads: ``python -m infer.import_onnx --help``.

    python -m infer.import_onnx MODEL.onnx --output URI/ [--name NAME] [--image-size S|HxW]

``MODEL.onnx`` is a local path, ``s3://`` or ``http(s)://`` URL (tensors stored beside it as external
data, as torch's dynamo exporter writes them, are read from the same folder).  Writes
``<output><name>-symbol.json`` and ``<output><name>-0000.params`` (``name`` defaults to the file's
stem) and prints the infer flags to use with them.  Needs the ``onnx`` package (the ``import``
extra) where it runs; the nodes that run infer do not.

What converts: the operators :func:`infer.onnx_ops.supported` lists (``--help`` prints them), at
opsets 7 to 21, after every constant subgraph is folded (:mod:`infer.onnx_graph`).  The one image
input (NCHW, or NHWC as tf2onnx writes Keras models: the transpose goes into the graph, infer still
feeds NCHW) is renamed ``data``; a dynamic or fixed batch is fine.  Then, where ``onnxruntime`` is
installed, the ONNX file and the converted model run on the same batch (:mod:`infer.onnx_check`) and
the import refuses (exit 2, nothing written) when their probabilities differ by more than 1e-4 or
their top-1 classes differ.  Anything that cannot be converted is a one-line error naming the node
and its op, and nothing is written.  Each MXNet layer is named after its ONNX node, so
``--output-layer <node>_output`` picks an internal output.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import storage  # noqa: E402
from common.cli import UsageError, Writes, add_common_arguments, endpoint_from, exit_process, run_cli  # noqa: E402
from common.images import parse_size  # noqa: E402
from common.model_files import DATA_NAME, params_bytes  # noqa: E402
from infer.onnx_ops import OnnxImportError, supported  # noqa: E402,F401 - OnnxImportError: raised from here

PROG = "import_onnx"
# What torchvision and the ONNX Model Zoo's ImageNet models expect, on 0..255 RGB pixels.
IMAGENET_MEAN = "123.675,116.28,103.53"
IMAGENET_STD = "58.395,57.12,57.375"


def build_parser() -> argparse.ArgumentParser:
    """The command line (the supported operators in its epilog, from the converter table)."""
    from infer.onnx_graph import MAX_OPSET, MIN_OPSET

    ops = textwrap.fill(", ".join(supported()), width=100)
    p = argparse.ArgumentParser(
        prog="python -m infer.import_onnx", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert an ONNX image classifier or feature extractor to the MXNet symbol + params that infer "
        "loads, check it against ONNX Runtime, and print the infer flags to use with them.",
        epilog=f"Operators converted (opsets {MIN_OPSET}-{MAX_OPSET}; constant subgraphs of any standard operator "
        f"are folded first):\n{ops}")
    p.add_argument("model", help="the .onnx file: a local path, s3:// or http(s):// URL")
    p.add_argument("--output", required=True, help="where the two files go, e.g. s3://BUCKET/models/ (or a folder)")
    p.add_argument("--name", default=None, help="file name stem (default: the model file's stem)")
    p.add_argument("--image-size", default=None, help="S or HxW: the input size to convert at, for a model whose "
                   "size is dynamic (default: the model's own, else 224); infer must then use the same")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with ONNX Runtime")
    add_common_arguments(p, sse=False)
    return p


def run(args: argparse.Namespace, writes: Writes) -> int:
    """Convert, check and write; print the infer flags."""
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise UsageError("python -m infer.import_onnx needs the onnx package: pip install onnx==1.23.2 "
                         "(shardinfer's 'import' extra)") from e
    from infer import onnx_check, onnx_graph

    endpoint = endpoint_from(args)
    name = args.name or os.path.basename(args.model.rstrip("/")).rsplit(".", 1)[0]
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise UsageError(f"--name {name!r}: use letters, digits and . _ + - only")
    size = parse_size(args.image_size, "--image-size") if args.image_size else None
    folder = args.model.rsplit("/", 1)[0] + "/" if "/" in args.model else ""

    def external(location: str) -> bytes:
        return storage.read_bytes(storage.join(folder, location) if folder else location, endpoint)

    model = onnx_graph.load(storage.read_bytes(args.model, endpoint), args.model, external)
    converted = onnx_graph.convert(model, args.model, size)  # all in memory: an error writes nothing
    if args.no_check:
        check = "the check against ONNX Runtime was skipped (--no-check)"
    elif not onnx_check.onnxruntime_available():
        check = "the check against ONNX Runtime was skipped: onnxruntime is not installed (pip install onnxruntime)"
    else:
        batch = onnx_check.check_batch(converted.probe_size)
        agreement = onnx_check.compare(converted, model.SerializeToString(), batch)
        figure = (f"{agreement.images} images x {agreement.classes} outputs: largest probability difference "
                  f"{agreement.max_difference:.2g}, top-1 differs on {agreement.top1_disagreements}")
        if not agreement.ok:
            raise OnnxImportError(f"{args.model}: the converted model does not compute what ONNX Runtime does "
                                  f"({figure}; allowed {onnx_check.TOLERANCE:g} and none); nothing written")
        check = f"checked against ONNX Runtime on {figure}"
    params = params_bytes(converted.arg, converted.aux)
    sym_uri = storage.join(args.output, f"{name}-symbol.json")
    param_uri = storage.join(args.output, f"{name}-0000.params")
    writes.begin(f"{param_uri} and {sym_uri}", "run the same import_onnx command again")
    storage.write_bytes(param_uri, params, endpoint, encryption=None)  # no --sse: the bucket's default applies
    storage.write_bytes(sym_uri, converted.symbol_json.encode(), endpoint, "application/json", encryption=None)
    ops = ", ".join(f"{op} {n}" for op, n in sorted(converted.nodes.items()))
    print(f"{PROG}: {args.model}: opset {converted.opset}, {sum(converted.nodes.values())} nodes ({ops}), "
          f"{converted.folded} folded at import; {len(converted.arg) + len(converted.aux)} parameters")
    if converted.fused:
        print(f"{PROG}: fused for speed: " + ", ".join(f"{op} {n}" for op, n in sorted(converted.fused.items())))
    height, width = converted.probe_size
    read = (f"the model takes {converted.layout} {height}x{width} images" if converted.image_size else
            f"the model's input size is dynamic: converted at {height}x{width}")
    print(f"{PROG}: {read}; input {converted.input_name!r} renamed {DATA_NAME!r}"
          + ("; the NHWC -> NCHW transpose is in the graph (infer feeds NCHW)" if converted.layout == "NHWC" else ""))
    print(f"{PROG}: {check}")
    print(f"{PROG}: wrote {sym_uri} and {param_uri}")
    head = ("its output is a Softmax: probabilities" if converted.head == "Softmax"
            else "its output is logits: infer applies the softmax")
    print(f"{PROG}: {head}")
    shown = str(height) if height == width else f"{height}x{width}"
    print(f"{PROG}: infer flags:\n  --sym-url {sym_uri} --param-url {param_uri} --label-url LABELS.txt "
          f"--image-size {shown}")
    print(f"{PROG}: the model does not say how it was normalised or which channel order it takes; torchvision, timm "
          f"and ONNX Model Zoo ImageNet models want --mean {IMAGENET_MEAN} --std {IMAGENET_STD} --resize "
          "shorter-side-crop (RGB); Caffe-, OpenCV- and Paddle-trained models often want --channel-order bgr "
          "(see docs/models.md)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point for ``python -m infer.import_onnx`` and tests."""
    return run_cli(PROG, run, build_parser(), argv)


if __name__ == "__main__":
    exit_process(main())
