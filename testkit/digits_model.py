"""A small classifier trained on the UCI handwritten digits (as scikit-learn ships them), in the zoo file format.

The zoo builder's ResNet-18 has made-up weights and almost flat logits, so "does int8 keep
the answers?" means little on it.  This model's predictions mean something: it is trained,
deterministically and in about 15 s on 2 cores, on the 8x8 digits that scikit-learn ships
(``sklearn.datasets.load_digits``'s file, copied to testkit/data/digits.csv.gz: 1,797 images, 10 classes; why
a copy: testkit/data/README.md), each stored as a gray 8x8 PNG
and taken through infer's own preprocessing (LANCZOS to 224x224, CHW, 0..255).

Network, on infer's 3x224x224 input in 0..255: 4x4 average pooling -> 3x3 convolution
(16) + ReLU -> 7x7 max pooling -> dense 64 + ReLU -> dense 10 -> ``SoftmaxOutput``, the
input scale folded into the first convolution.  The first 1,200 images of a fixed
permutation train it; the other 597 are held out (about 94-96 % top-1 on them).

    python -m testkit.digits_model --output DIR_OR_S3_PREFIX
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import sys
from typing import Optional, Sequence

import numpy as np

from common import storage
from common.images import preprocess
from common.model_files import params_bytes

PREFIX = "digits"
SYMBOL_FILE = f"{PREFIX}-symbol.json"
PARAMS_FILE = f"{PREFIX}-0000.params"
SYNSET_FILE = "synset.txt"
DIGITS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "digits.csv.gz")
TRAIN_IMAGES = 1200
EPOCHS = 14


def digits() -> tuple[list[bytes], np.ndarray]:
    """The 1,797 digits as 8x8 RGB PNG bytes (gray 0..255), and their labels."""
    from PIL import Image

    with gzip.open(DIGITS_FILE, "rt") as f:
        data = np.loadtxt(f, delimiter=",")  # as load_digits reads it: 64 pixels in 0..16, then the label
    images, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1]
    pngs = []
    for img in (images * (255.0 / 16.0)).round().astype(np.uint8):
        buf = io.BytesIO()
        Image.fromarray(np.stack([img] * 3, axis=-1)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return pngs, target.astype(np.int64)


def split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held_out)`` indices: a fixed permutation, sorted."""
    order = np.random.default_rng(0).permutation(n)
    return np.sort(order[:TRAIN_IMAGES]), np.sort(order[TRAIN_IMAGES:])


def image_key(index: int, label: int) -> str:
    """Object key of one digit: the label is part of it, so tests can score predictions."""
    return f"digit-{index:04d}-label-{label}.png"


def _network():
    from mxnet.gluon import nn

    net = nn.HybridSequential()
    net.add(nn.AvgPool2D(4, 4), nn.Conv2D(16, 3, 1, 1, activation="relu"), nn.MaxPool2D(7, 7), nn.Flatten(),
            nn.Dense(64, activation="relu"), nn.Dense(10))
    return net


def train(epochs: int = EPOCHS) -> dict[str, bytes]:
    """Train on the training split; returns the three zoo files ``{name: bytes}``."""
    import mxnet as mx
    from mxnet import autograd, gluon, nd

    pngs, labels = digits()
    train_idx, _ = split(len(pngs))
    x = np.stack([preprocess(pngs[i], image_key(int(i), int(labels[i]))) for i in train_idx]) / 255.0
    y = labels[train_idx]
    mx.random.seed(0)
    rng = np.random.default_rng(0)
    net = _network()
    net.initialize(mx.init.Xavier(magnitude=2.24))
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.002})
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(order), 64):
            b = order[start : start + 64]
            with autograd.record():
                out = loss(net(nd.array(x[b])), nd.array(y[b]))
            out.backward()
            trainer.step(len(b))
    net(nd.array(x[:1]))  # the graph exists once it has run
    sym = net(mx.sym.var("data"))
    params = {p.name: p.data() for p in net.collect_params().values()}
    # infer feeds 0..255: fold the 1/255 input scale into the first convolution (average pooling is linear)
    first = next(name for name in sym.list_arguments() if name.endswith("weight"))
    params[first] = params[first] / 255.0
    head = mx.sym.SoftmaxOutput(sym, name="softmax")
    return {SYMBOL_FILE: head.tojson().encode(), PARAMS_FILE: params_bytes(params, {}),
            SYNSET_FILE: "".join(f"n{i:08d} digit {i}\n" for i in range(10)).encode()}


def write_model(output: str, endpoint_url: Optional[str] = None, files: Optional[dict[str, bytes]] = None) -> dict[str, str]:
    """Train (unless ``files`` are given) and write the three files under ``output``; returns the --*-url URIs."""
    files = files or train()
    uris = {name: storage.join(output, name) for name in files}
    for name, data in files.items():
        storage.write_bytes(uris[name], data, endpoint_url)
    return {"sym": uris[SYMBOL_FILE], "params": uris[PARAMS_FILE], "labels": uris[SYNSET_FILE]}


def upload_digits(prefix: str, which: str = "held_out", endpoint_url: Optional[str] = None) -> dict[str, int]:
    """Put the digit PNGs of one split (``train``, ``held_out`` or ``all``) under ``prefix``; returns ``{key: label}``."""
    pngs, labels = digits()
    train_idx, held = split(len(pngs))
    idx = {"train": train_idx, "held_out": held, "all": np.arange(len(pngs))}[which]
    out = {}
    for i in idx:
        uri = storage.join(prefix, image_key(int(i), int(labels[i])))
        storage.write_bytes(uri, pngs[i], endpoint_url)
        out[storage.parse_s3(uri).key if storage.is_s3(uri) else uri] = int(labels[i])
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: train and write the model, print the three URLs."""
    p = argparse.ArgumentParser(prog="python -m testkit.digits_model", description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, help="directory or s3://BUCKET/PREFIX/ for the three files")
    p.add_argument("--s3-endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    a = p.parse_args(argv)
    uris = write_model(a.output, a.s3_endpoint_url)
    for flag, k in (("sym", "sym"), ("param", "params"), ("label", "labels")):
        print(f"--{flag}-url {uris[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
