"""Reduced precision: convert the model once on the driver, check it against fp32, store it for the executors.

    --precision bf16   MXNet AMP (``mxnet.contrib.amp.convert_model``, bfloat16, weights cast too)
    --precision int8   MXNet's oneDNN flow (``quantize_model_mkldnn``), naive min/max calibration

Both are checked the same way: images drawn deterministically from across the manifest
are split into a calibration sample (int8 only uses it) and a disjoint agreement sample;
the converted model's top-1 must equal the fp32 model's on at least ``--min-agreement`` of
the agreement sample, or the run is refused (exit 2, the figure named).  The converted
model is written under ``<output>/_runs/<run_id>/model/`` in the zoo file format and that
exact file (pinned by its sha256) is what every executor loads; a later invocation of the
same run reuses it instead of converting again.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Union

import numpy as np

from common import storage
from common.errors import AgreementError, ModelError, UsageError
from common.images import DEFAULT_PREPROCESSING, INPUT_SIZE, Preprocessing, input_hw
from common.manifest import Manifest
from common.model import BoundModel
from common.model_files import DATA_NAME, ModelFiles, ModelSpec, params_bytes
from common.model_graph import check_model
from infer.cpu import cpu_info, speed_warning
from infer.sample import Sample, load_sample, sample_plan, sample_shards
from infer.settings import PRECISIONS


def _padded(images: np.ndarray, batch: int) -> np.ndarray:
    """``images`` with rows repeated up to ``batch`` rows (statistics stay those of real images)."""
    return images if len(images) == batch else images[np.arange(batch) % len(images)]


def top1(sym, arg: dict, aux: dict, batches: Iterable[np.ndarray], batch: int = 64,
         image_size: Union[int, tuple[int, int]] = INPUT_SIZE) -> np.ndarray:
    """Top-1 class per image of ``batches`` (each of at most ``batch`` rows)."""
    model = BoundModel(sym, arg, aux, batch, image_size=image_size)
    out = [model.forward(images).argmax(axis=1) for images in batches if len(images)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _calibration_iter(sample: Sample, batch: int):
    """An ``mx.io.DataIter`` over ``sample`` for MXNet's calibration, decoding batch by batch."""
    import mxnet as mx

    class CalibrationIter(mx.io.DataIter):
        def __init__(self) -> None:
            super().__init__(batch)
            self.provide_data = [mx.io.DataDesc(DATA_NAME, (batch, 3) + sample.prep.hw)]
            self.provide_label: list = []
            self.reset()

        def reset(self) -> None:
            self._batches = (b for b in sample.batches(batch) if len(b))

        def next(self):
            return mx.io.DataBatch([mx.nd.array(_padded(next(self._batches), batch))], pad=0)

    return CalibrationIter()


def convert(sym, arg: dict, aux: dict, precision: str, calibration: Optional[Sample] = None, batch: int = 64):
    """``(symbol, arg_params, aux_params)`` of the model at ``precision`` (fp32: unchanged)."""
    import mxnet as mx

    if precision == "fp32":
        return sym, arg, aux
    # MXNet's converters cast parameters in the dicts they are given: keep the caller's fp32 ones intact
    arg, aux = {k: v.copy() for k, v in arg.items()}, {k: v.copy() for k, v in aux.items()}
    if precision == "bf16":
        import mxnet.contrib.amp  # noqa: F401 - registers mx.contrib.amp

        return mx.contrib.amp.convert_model(sym, arg, aux, target_dtype="bfloat16", cast_optional_params=True)
    if precision == "int8":
        from mxnet.contrib.quantization import quantize_model_mkldnn

        if calibration is None or len(calibration) == 0:
            raise ModelError("--precision int8 needs calibration images; the sample is empty")
        data = _calibration_iter(calibration, batch)
        return quantize_model_mkldnn(sym, arg, aux, ctx=mx.cpu(), data_names=(DATA_NAME,), label_names=None,
                                     calib_mode="naive", calib_data=data, num_calib_examples=len(calibration),
                                     quantized_dtype="auto")
    raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")


def model_bytes(sym, arg: dict, aux: dict) -> tuple[bytes, bytes]:
    """``(symbol JSON, params)`` in the zoo file format."""
    # tojson drops AMP's amp_cast nodes by default, which leaves bf16 weights feeding fp32 inputs
    return sym.tojson(remove_amp_cast=False).encode(), params_bytes(arg, aux)


@dataclass(frozen=True)
class Converted:
    """What the driver did: the stored model's spec for the executors, and the record for run.json."""

    spec: ModelSpec
    record: dict


def labels_text(files: ModelFiles) -> bytes:
    """The labels as a plain one-per-line file (read back identically by :func:`common.model.read_labels`)."""
    return ("\n".join(files.labels) + "\n").encode()


@contextlib.contextmanager
def _cannot_run(precision: str, sym_url: str, size) -> Iterator[None]:
    """MXNet's failure to convert or bind the model at ``precision`` as one line naming it (its errors run to
    pages): e.g. oneDNN's int8 pooling keeps ResNet's fixed 7x7 window, which a 64x64 input's 2x2 map cannot hold."""
    try:
        yield
    except Exception as e:  # noqa: BLE001
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        detail = next((ln for ln in reversed(lines) if "Check failed" in ln), lines[-1])
        raise ModelError(f"--precision {precision}: {sym_url} cannot run converted at {'x'.join(map(str, input_hw(size)))} input ({detail}); "
                         "use fp32 or the model's own input size") from e


def prepare_model(files: ModelFiles, spec: ModelSpec, precision: str, manifest: Manifest,
                  calibration_images: int, min_agreement: float, model_dir: str, log=print,
                  prep: Preprocessing = DEFAULT_PREPROCESSING, writing=lambda: None,
                  encryption: Optional[storage.Encryption] = None) -> Converted:
    """Convert, check agreement, and store the model under ``model_dir`` (calling ``writing`` first).

    Raises:
        AgreementError: top-1 agreement with fp32 below ``min_agreement`` (nothing is stored).
    """
    cpu = cpu_info()
    warning = speed_warning(precision, cpu)
    if warning:
        log(f"warning: {warning}")
    total = manifest.num_images
    # int8 needs two disjoint samples: a small manifest is split in halves between them
    n_cal = min(calibration_images, total // 2) if precision == "int8" else 0
    n_agree = min(calibration_images, total - n_cal)
    if n_agree < 1 or (precision == "int8" and n_cal < 1):
        raise UsageError(f"--precision {precision}: the manifest holds only {total} image(s), too few to "
                         "calibrate and measure agreement with fp32")
    if n_cal < (calibration_images if precision == "int8" else 0) or n_agree < calibration_images:
        log(f"note: the manifest holds {total} images: {n_cal} calibrate, {n_agree} measure agreement")
    started = time.time()
    entries = sample_shards(manifest, n_cal + n_agree, spec.endpoint_url)
    cal_items, agree_items = sample_plan([(e.shard_id, e.num_records) for e in entries], n_cal, n_agree)
    cal = load_sample(entries, cal_items, spec.endpoint_url, prep) if cal_items else None
    agree = load_sample(entries, agree_items, spec.endpoint_url, prep)
    sym, arg, aux = check_model(files, spec)
    t_convert = time.time()
    with _cannot_run(precision, spec.sym_url, prep.size):
        csym, carg, caux = convert(sym, arg, aux, precision, cal, spec.batch_size)
    t_agree = time.time()
    reference = top1(sym, arg, aux, agree.batches(spec.batch_size), spec.batch_size, prep.size)
    with _cannot_run(precision, spec.sym_url, prep.size):
        converted = top1(csym, carg, caux, agree.batches(spec.batch_size), spec.batch_size, prep.size)
    agreement = float((reference == converted).mean())
    seconds = {"sample_s": round(t_convert - started, 3), "convert_s": round(t_agree - t_convert, 3),
               "agreement_s": round(time.time() - t_agree, 3)}
    summary = (f"--precision {precision}: top-1 agreement with fp32 {agreement:.4f} on {len(reference)} images "
               f"(minimum {min_agreement:g})")
    if agreement < min_agreement:
        raise AgreementError(f"{summary}: refused; keep fp32, raise --calibration-images, or lower --min-agreement")
    log(summary)
    sym_json, params = model_bytes(csym, carg, caux)
    writing()
    name = spec.name
    uris = {"sym": storage.join(model_dir, f"{name}-symbol.json"), "params": storage.join(model_dir, f"{name}-0000.params"),
            "labels": storage.join(model_dir, "synset.txt")}
    storage.write_bytes(uris["sym"], sym_json, spec.endpoint_url, "application/json", encryption=encryption)
    storage.write_bytes(uris["params"], params, spec.endpoint_url, encryption=encryption)
    storage.write_bytes(uris["labels"], labels_text(files), spec.endpoint_url, "text/plain", encryption=encryption)
    sha = hashlib.sha256(params).hexdigest()
    stored = ModelSpec(uris["sym"], uris["params"], uris["labels"], spec.batch_size, spec.endpoint_url,
                       params_sha256=sha, device=spec.device, precision=precision,
                       source_params_sha256=files.params_sha256, image_size=spec.image_size)
    record = {"precision": precision, "model_dir": model_dir, "params_sha256": sha,
              "source_params_sha256": files.params_sha256, "agreement": round(agreement, 6),
              "agreement_images": len(reference), "calibration_images": 0 if cal is None else len(cal),
              "min_agreement": min_agreement, "samples": {"calibration": [list(x) for x in cal_items],
                                                          "agreement": [list(x) for x in agree_items]},
              **seconds, "prepare_s": round(time.time() - started, 3), "cpu": cpu}
    return Converted(stored, record)


def stored_spec(record: dict, spec: ModelSpec) -> ModelSpec:
    """The executors' spec for a model an earlier invocation of the run converted and stored."""
    model_dir, name = record["model_dir"], spec.name
    return ModelSpec(storage.join(model_dir, f"{name}-symbol.json"), storage.join(model_dir, f"{name}-0000.params"),
                     storage.join(model_dir, "synset.txt"), spec.batch_size, spec.endpoint_url,
                     params_sha256=record["params_sha256"], device=spec.device, precision=record["precision"],
                     source_params_sha256=record["source_params_sha256"], image_size=spec.image_size)
