"""A model's files: where they are (:class:`ModelSpec`, picklable, what a Spark task receives), their bytes
after download with the params digest (:class:`ModelFiles`), the labels, and params files written back.

Reading the files needs no MXNet (:mod:`common.model_graph` checks them, :mod:`common.model` binds them).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Optional, Union

from common import storage
from common.errors import ModelError
from common.images import INPUT_SIZE

DATA_NAME = "data"


@dataclass(frozen=True)
class ModelSpec:
    """Where the model's three files are, and how to bind it. Picklable: only strings and ints."""

    sym_url: str
    param_url: str
    label_url: str
    batch_size: int = 64
    endpoint_url: storage.Endpoint = None
    # When set, the params file must have this digest: every executor of a run uses the
    # exact model the driver checked, even if the object is replaced mid-run.
    params_sha256: Optional[str] = None
    device: str = "cpu"
    # A model converted by infer (--precision bf16/int8): its precision, and the digest of the
    # fp32 params it was made from, which the ``model`` column names.
    precision: str = "fp32"
    source_params_sha256: Optional[str] = None
    # The input is (batch, 3, image_size, image_size), or (batch, 3, H, W) for a (H, W) pair.
    image_size: Union[int, tuple[int, int]] = INPUT_SIZE
    # --output-layer: an internal output (e.g. flatten0_output) returned beside the class scores.
    output_layer: Optional[str] = None
    # False for an embeddings-only run (--top-k 0): no labels, no softmax, only the output layer.
    classify: bool = True

    @property
    def name(self) -> str:
        """``resnet-18`` for ``…/resnet-18-symbol.json``."""
        base = self.sym_url.rstrip("/").rsplit("/", 1)[-1]
        return base[: -len("-symbol.json")] if base.endswith("-symbol.json") else base.rsplit(".", 1)[0]


@dataclass(frozen=True)
class ModelFiles:
    """The model's bytes after download, with the params digest."""

    symbol_json: str
    params: bytes
    labels: tuple[str, ...]
    params_sha256: str

    @property
    def short_digest(self) -> str:
        """The first 12 hex digits of the params sha256."""
        return self.params_sha256[:12]

    def model_id(self, spec: "ModelSpec") -> str:
        """``resnet-18@sha256:<12 hex>`` (``+int8``/``+bf16`` when converted): the ``model`` column, and
        what a run is tied to.  A converted model is named by the fp32 params it was made from."""
        digest = (spec.source_params_sha256 or self.params_sha256)[:12]
        return f"{spec.name}@sha256:{digest}" + ("" if spec.precision == "fp32" else f"+{spec.precision}")


def read_labels(text: str, source: str) -> tuple[str, ...]:
    """Parse synset.txt: ``nXXXXXXXX name, alias`` per line -> ``name, alias``.

    A line without a wnid is taken whole, so a plain one-label-per-line file works too.
    """
    labels = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        head, _, rest = line.partition(" ")
        is_wnid = len(head) == 9 and head[0] == "n" and head[1:].isdigit()
        labels.append(rest.strip() if is_wnid and rest.strip() else line)
    if not labels:
        raise ModelError(f"{source}: label file is empty")
    return tuple(labels)


def fetch_model(spec: ModelSpec) -> ModelFiles:
    """Download the three files and check the params digest if the spec pins one."""

    def get(uri: str, what: str) -> bytes:
        try:
            return storage.read_bytes(uri, spec.endpoint_url)
        except storage.StorageError as e:
            raise ModelError(f"cannot read model {what}: {e}") from e

    sym = get(spec.sym_url, "symbol")
    params = get(spec.param_url, "params")
    labels = get(spec.label_url, "labels") if spec.label_url else b"(no labels)"
    digest = hashlib.sha256(params).hexdigest()
    if spec.params_sha256 and digest != spec.params_sha256:
        raise ModelError(
            f"{spec.param_url}: params changed during the run (sha256 {digest[:12]}, expected {spec.params_sha256[:12]})"
        )
    try:
        text = sym.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelError(f"{spec.sym_url}: symbol file is not UTF-8 JSON") from e
    return ModelFiles(text, params, read_labels(labels.decode("utf-8", "replace"), spec.label_url), digest)


def params_bytes(arg: dict, aux: dict) -> bytes:
    """A zoo-format ``.params`` file (``arg:``/``aux:`` names) holding these NDArrays, as bytes."""
    import tempfile

    import mxnet as mx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.params")
        mx.nd.save(path, {**{f"arg:{k}": v for k, v in arg.items()}, **{f"aux:{k}": v for k, v in aux.items()}})
        with open(path, "rb") as f:
            return f.read()
