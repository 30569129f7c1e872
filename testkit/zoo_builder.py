"""Build a ResNet-18 in the MXNet model-zoo file format, with deterministic weights.

The zoo's ``resnet-18-symbol.json`` / ``resnet-18-0000.params`` / ``synset.txt`` cannot be
downloaded on these machines, so tests and the demo use this builder's files through the
same loading code (:mod:`common.model`) that reads the real ones on a user's cluster.

The symbol is the zoo's: MXNet's ``example/image-classification/symbols/resnet.py`` with
``num_layers=18`` (pre-activation residual units, ``image_shape=3,224,224``): input
BatchNorm ``bn_data``, ``conv0``/``bn0``/``relu0``/max pooling, ``stage{1..4}_unit{1,2}_*``
(``_bn1 _relu1 _conv1 _bn2 _relu2 _conv2``, and ``_sc`` on each stage's first unit),
``bn1``/``relu1``/``pool1``, ``fc1`` and the ``softmax`` SoftmaxOutput, 1000 classes.

Weights are drawn from a seed; BatchNorm statistics are then calibrated on generated
images (one training-mode forward pass gives each BN layer its batch statistics), and
``fc1`` is centred on the mean feature, so that the top-1 class depends on the image.
Predictions are not meaningful: this is a stand-in with the right shapes and names.

Run ``python -m testkit.zoo_builder --help``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np

from common import storage
from common.images import INPUT_SIZE, preprocess
from common.model_files import ModelSpec, params_bytes
from testkit.testdata import cifar_like_png

PREFIX = "resnet-18"
SYMBOL_FILE = f"{PREFIX}-symbol.json"
PARAMS_FILE = f"{PREFIX}-0000.params"
SYNSET_FILE = "synset.txt"
NUM_CLASSES = 1000
# Enough images for stable per-channel statistics; one forward pass at 224x224.
CALIBRATION_IMAGES = 48

_ADJ = ("amber", "brisk", "coral", "dusky", "eager", "fuzzy", "gilded", "hollow", "ivory", "jolly",
        "keen", "lunar", "misty", "noble", "olive", "plain", "quiet", "rusty", "silver", "tawny",
        "umber", "vivid", "woolly", "young", "zesty")
_NOUN = ("ant", "bison", "crane", "dingo", "egret", "ferret", "gecko", "heron", "ibis", "jackal",
         "koala", "lemur", "marten", "newt", "otter", "puffin", "quail", "raven", "stoat", "tapir",
         "urchin", "vole", "walrus", "yak", "zebu", "kiosk", "lantern", "mitten", "quill", "teapot",
         "anvil", "barrel", "candle", "drum", "easel", "flute", "gourd", "harp", "inkwell", "jug")


def resnet18_symbol(num_classes: int = NUM_CLASSES):
    """The zoo's ResNet-18 symbol (``symbols/resnet.py``, ``num_layers=18``, 224x224 input)."""
    import mxnet as mx

    # Fresh auto-name counters (pooling0, _plus0, ...), so every build writes the same JSON.
    with mx.name.NameManager():
        return _resnet18(mx, num_classes)


def _resnet18(mx, num_classes: int):

    bn_mom, eps, ws = 0.9, 2e-5, 256

    def unit(data, num_filter, stride, dim_match, name):
        bn1 = mx.sym.BatchNorm(data=data, fix_gamma=False, momentum=bn_mom, eps=eps, name=name + "_bn1")
        act1 = mx.sym.Activation(data=bn1, act_type="relu", name=name + "_relu1")
        conv1 = mx.sym.Convolution(data=act1, num_filter=num_filter, kernel=(3, 3), stride=stride, pad=(1, 1),
                                   no_bias=True, workspace=ws, name=name + "_conv1")
        bn2 = mx.sym.BatchNorm(data=conv1, fix_gamma=False, momentum=bn_mom, eps=eps, name=name + "_bn2")
        act2 = mx.sym.Activation(data=bn2, act_type="relu", name=name + "_relu2")
        conv2 = mx.sym.Convolution(data=act2, num_filter=num_filter, kernel=(3, 3), stride=(1, 1), pad=(1, 1),
                                   no_bias=True, workspace=ws, name=name + "_conv2")
        if dim_match:
            shortcut = data
        else:
            shortcut = mx.sym.Convolution(data=act1, num_filter=num_filter, kernel=(1, 1), stride=stride,
                                          no_bias=True, workspace=ws, name=name + "_sc")
        return conv2 + shortcut

    filters = (64, 64, 128, 256, 512)
    data = mx.sym.Variable(name="data")
    data = mx.sym.BatchNorm(data=data, fix_gamma=True, eps=eps, momentum=bn_mom, name="bn_data")
    body = mx.sym.Convolution(data=data, num_filter=filters[0], kernel=(7, 7), stride=(2, 2), pad=(3, 3),
                              no_bias=True, name="conv0", workspace=ws)
    body = mx.sym.BatchNorm(data=body, fix_gamma=False, eps=eps, momentum=bn_mom, name="bn0")
    body = mx.sym.Activation(data=body, act_type="relu", name="relu0")
    body = mx.sym.Pooling(data=body, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max")
    for i in range(4):
        stride = (1, 1) if i == 0 else (2, 2)
        body = unit(body, filters[i + 1], stride, False, f"stage{i + 1}_unit1")
        body = unit(body, filters[i + 1], (1, 1), True, f"stage{i + 1}_unit2")
    bn1 = mx.sym.BatchNorm(data=body, fix_gamma=False, eps=eps, momentum=bn_mom, name="bn1")
    relu1 = mx.sym.Activation(data=bn1, act_type="relu", name="relu1")
    pool1 = mx.sym.Pooling(data=relu1, global_pool=True, kernel=(7, 7), pool_type="avg", name="pool1")
    flat = mx.sym.Flatten(data=pool1)
    fc1 = mx.sym.FullyConnected(data=flat, num_hidden=num_classes, name="fc1")
    return mx.sym.SoftmaxOutput(data=fc1, name="softmax")


def synset_lines(num_classes: int = NUM_CLASSES) -> list[str]:
    """``nXXXXXXXX name, alias`` lines in the zoo's synset.txt format (made-up wnids and names)."""
    lines = []
    for c in range(num_classes):
        adj, noun = _ADJ[c % len(_ADJ)], _NOUN[(c // len(_ADJ)) % len(_NOUN)]
        lines.append(f"n{90000000 + c:08d} {adj} {noun}, synthetic class {c}")
    return lines


def _initial_params(sym, seed: int) -> tuple[dict, dict]:
    """He-normal convolutions, unit-ish BN scales, small random shifts, all from ``seed``."""
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, INPUT_SIZE, INPUT_SIZE))
    rng = np.random.default_rng(seed)
    args, aux = {}, {}
    for name, shape in zip(sym.list_arguments(), arg_shapes):
        if name in ("data", "softmax_label"):
            continue
        if name.endswith("_weight"):
            fan_in = int(np.prod(shape[1:]))
            w = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif name.endswith("_gamma"):
            w = rng.uniform(0.8, 1.2, shape)
        elif name.endswith("_beta"):
            w = rng.normal(0.0, 0.2, shape)
        else:  # fc1_bias
            w = np.zeros(shape)
        args[name] = w.astype(np.float32)
    for name, shape in zip(sym.list_auxiliary_states(), aux_shapes):
        aux[name] = (np.zeros if name.endswith("_mean") else np.ones)(shape, dtype=np.float32)
    return args, aux


def _calibrate(sym, args: dict, aux: dict, images: np.ndarray) -> None:
    """Set every BN's moving statistics to its input's statistics on ``images``, and centre fc1."""
    import mxnet as mx

    internals = sym.get_internals()
    bn_layers = [n[: -len("_moving_mean")] for n in sym.list_auxiliary_states() if n.endswith("_moving_mean")]
    # The input of each BatchNorm, and the features that feed fc1.
    # (bn_data's input is the data variable itself: its statistics come from the images.)
    inputs = [internals[f"{bn}_output"].get_children()[0] for bn in bn_layers]
    computed = [x for x in inputs if x.get_children() is not None]
    feats = internals["fc1_output"].get_children()[0]
    group = mx.sym.Group(computed + [feats])
    # MKLDNN's subgraph fusion refuses a group of internal outputs; this pass is one-off.
    previous = os.environ.get("MXNET_SUBGRAPH_BACKEND")
    os.environ["MXNET_SUBGRAPH_BACKEND"] = "NONE"
    try:
        exe = group.simple_bind(mx.cpu(), grad_req="null", data=images.shape)
    finally:
        if previous is None:
            del os.environ["MXNET_SUBGRAPH_BACKEND"]
        else:
            os.environ["MXNET_SUBGRAPH_BACKEND"] = previous
    for name, arr in exe.arg_dict.items():
        arr[:] = images if name == "data" else args[name]
    for name, arr in exe.aux_dict.items():
        arr[:] = aux[name]
    # Training mode: each BN normalises with its batch statistics, so every later BN sees
    # exactly the activations it will see at inference once its moving stats are these.
    outs = iter(o.asnumpy() for o in exe.forward(is_train=True))
    for bn, sym_in in zip(bn_layers, inputs):
        x = next(outs) if sym_in.get_children() is not None else images
        axes = (0, 2, 3) if x.ndim == 4 else (0,)
        aux[f"{bn}_moving_mean"] = x.mean(axis=axes).astype(np.float32)
        aux[f"{bn}_moving_var"] = x.var(axis=axes).astype(np.float32)
    f = next(outs)
    centred = f - f.mean(axis=0)
    # Whiten the features so that no single direction (and no single class) dominates.
    scale = centred.std(axis=0) + 1e-6
    w = args["fc1_weight"] / scale[None, :]
    logits = centred @ w.T
    w *= 4.0 / (logits.std() + 1e-12)  # logits with std ~4: peaked but not one-hot
    args["fc1_weight"] = w.astype(np.float32)
    args["fc1_bias"] = (-(w @ f.mean(axis=0))).astype(np.float32)


def build_model(seed: int = 0, num_classes: int = NUM_CLASSES) -> dict[str, bytes]:
    """The three zoo files as bytes: ``{file name: content}``."""
    import mxnet as mx

    sym = resnet18_symbol(num_classes)
    args, aux = _initial_params(sym, seed)
    calib = np.stack([preprocess(cifar_like_png(i, seed=10_000 + seed), f"calib-{i}") for i in range(CALIBRATION_IMAGES)])
    _calibrate(sym, args, aux, calib)
    params = params_bytes({k: mx.nd.array(v) for k, v in args.items()}, {k: mx.nd.array(v) for k, v in aux.items()})
    return {
        SYMBOL_FILE: sym.tojson().encode(),
        PARAMS_FILE: params,
        SYNSET_FILE: ("\n".join(synset_lines(num_classes)) + "\n").encode(),
    }


def gluon_style_model(files: dict[str, bytes], mean: Sequence[float], std: Sequence[float],
                      name: str = "gluon-net") -> dict[str, bytes]:
    """The same network as a Gluon export would look: it expects ``(x - mean) / std`` input and returns
    logits (no softmax head).

    A first layer undoes the normalisation (``x * std + mean``, two parameter arrays), then the
    zoo network up to ``fc1``.  So with ``--mean/--std`` it must give exactly the zoo model's
    top-1 and (after infer's softmax) its probabilities.
    """
    import mxnet as mx

    sym = mx.sym.load_json(files[SYMBOL_FILE].decode())
    logits = sym.get_internals()["fc1_output"]
    data = mx.sym.Variable("data")
    undone = mx.sym.broadcast_add(mx.sym.broadcast_mul(data, mx.sym.Variable("undo_std", shape=(1, 3, 1, 1))),
                                  mx.sym.Variable("undo_mean", shape=(1, 3, 1, 1)), name="undo_normalise")
    net = logits(data=undone)
    loaded = mx.nd.load_frombuffer(files[PARAMS_FILE])
    arg = {k[4:]: v for k, v in loaded.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in loaded.items() if k.startswith("aux:")}
    arg["undo_std"] = mx.nd.array(np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1))
    arg["undo_mean"] = mx.nd.array(np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1))
    return {f"{name}-symbol.json": net.tojson().encode(), f"{name}-0000.params": params_bytes(arg, aux),
            SYNSET_FILE: files[SYNSET_FILE]}


def local_spec(model_dir: str) -> ModelSpec:
    """The :class:`common.model.ModelSpec` of a model :func:`write_model` wrote to the local folder ``model_dir``."""
    return ModelSpec(*(os.path.join(model_dir, f) for f in (SYMBOL_FILE, PARAMS_FILE, SYNSET_FILE)))


def write_model(output: str, seed: int = 0, endpoint_url: Optional[str] = None) -> dict[str, str]:
    """Build the model and write its three files under ``output`` (``s3://`` or a directory).

    Returns:
        ``{"sym": uri, "params": uri, "labels": uri}``, ready for infer's ``--*-url`` flags.
    """
    files = build_model(seed)
    uris = {}
    for name, data in files.items():
        uri = storage.join(output, name)
        storage.write_bytes(uri, data, endpoint_url)
        uris[name] = uri
    return {"sym": uris[SYMBOL_FILE], "params": uris[PARAMS_FILE], "labels": uris[SYNSET_FILE]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: build the test ResNet-18 and print the three URLs."""
    p = argparse.ArgumentParser(
        prog="python -m testkit.zoo_builder",
        description="Write a ResNet-18 in the MXNet model-zoo format (resnet-18-symbol.json, "
        "resnet-18-0000.params, synset.txt) with deterministic, calibrated weights. "
        "For tests and demos only: its predictions are not meaningful.",
    )
    p.add_argument("--output", required=True, help="directory or s3://BUCKET/PREFIX/ to write the three files to")
    p.add_argument("--seed", type=int, default=0, help="weights seed (default 0); the same seed gives the same files")
    p.add_argument("--s3-endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    args = p.parse_args(argv)
    uris = write_model(args.output, args.seed, args.s3_endpoint_url)
    for k in ("sym", "params", "labels"):
        print(f"--{k}-url {uris[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
