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

import hashlib
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from common import storage
from common.images import DEFAULT_PREPROCESSING, INPUT_SIZE, Preprocessing
from common.manifest import Manifest, ShardEntry, read_shards
from common.model import DATA_NAME, BoundModel, ModelError, ModelFiles, ModelSpec, check_model, params_bytes

PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_CALIBRATION_IMAGES = 512
DEFAULT_MIN_AGREEMENT = 0.99
# Records taken from each sampled shard: enough shards to cover the manifest, few enough GETs.
SAMPLE_PER_SHARD = 16
# The CPU features each precision needs to be fast (oneDNN uses them when present).
FAST_WITH = {"bf16": ("avx512_bf16", "amx_bf16"), "int8": ("avx512_vnni", "avx_vnni", "amx_int8")}
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


class AgreementError(ValueError):
    """The converted model disagrees with fp32 on more images than ``--min-agreement`` allows."""


def cpu_info() -> dict:
    """The CPU model and the flags that decide reduced-precision speed (from /proc/cpuinfo)."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags]}


def speed_warning(precision: str, cpu: dict) -> Optional[str]:
    """A warning when this CPU lacks the instructions that make ``precision`` fast, else None."""
    need = FAST_WITH.get(precision)
    if not need or any(f in cpu["flags"] for f in need):
        return None
    return (f"--precision {precision}: this CPU ({cpu['model']}) has none of {', '.join(need)}; {precision} "
            "will likely be slower than fp32 here (executors with those flags run it fast)")


def sample_plan(shards: Sequence[tuple[int, int]], calibration: int, agreement: int,
                per_shard: int = SAMPLE_PER_SHARD) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Which images calibrate and which check agreement: disjoint ``(shard_id, record)`` lists.

    ``shards`` is ``[(shard_id, num_records), ...]`` in manifest order.  Shards are taken evenly
    spaced across the manifest, records evenly spaced inside each, and alternately assigned to
    the calibration and the agreement sample, so both see the whole manifest.  The same
    manifest and numbers always give the same plan.
    """
    want = calibration + agreement
    total = sum(n for _, n in shards)
    if want > total:
        raise ValueError(f"{want} sample images requested ({calibration} calibration + {agreement} agreement), "
                         f"the manifest holds {total}")
    if want == 0:
        return [], []
    count = min(len(shards), math.ceil(want / per_shard))
    while True:  # ends: with every shard picked, the sum is the total
        picked = [shards[(2 * j + 1) * len(shards) // (2 * count)] for j in range(count)]
        if sum(n for _, n in picked) >= want:
            break
        count = min(len(shards), count * 2)
    take = math.ceil(want / count)
    while sum(min(n, take) for _, n in picked) < want:
        take += 1
    chosen = [(sid, (2 * r + 1) * n // (2 * k)) for sid, n in picked for k in (min(n, take),) for r in range(k)]
    even, odd = chosen[0::2], chosen[1::2]
    calib, agree = even[:calibration], odd[:agreement]
    spare = even[calibration:] + odd[agreement:]
    short = calibration - len(calib)
    calib += spare[:short]
    agree += spare[short : short + agreement - len(agree)]
    return calib, agree


@dataclass(frozen=True)
class Sample:
    """Sampled images as their original bytes: decoded one batch at a time, so a sample of
    thousands of images costs the driver its compressed size, not 600 KB of floats per image."""

    payloads: tuple[bytes, ...]
    keys: tuple[str, ...]
    prep: Preprocessing = DEFAULT_PREPROCESSING

    def __len__(self) -> int:
        return len(self.payloads)

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """Model input in batches of up to ``size`` rows; undecodable images are left out."""
        from infer.task import decode_into

        for start in range(0, len(self), size):
            s = self.prep.size
            out = np.empty((min(size, len(self) - start), 3, s, s), dtype=np.float32)
            bad = decode_into(self.payloads[start : start + size], self.keys[start : start + size], out, self.prep)
            yield out[[i for i in range(len(out)) if i not in bad]] if bad else out


def load_sample(entries: Sequence[ShardEntry], items: Sequence[tuple[int, int]], endpoint_url: Optional[str],
                prep: Preprocessing = DEFAULT_PREPROCESSING, threads: int = 8) -> Sample:
    """Fetch the shards that hold ``items`` (``(shard_id, record)`` pairs, in parallel) and keep those records."""
    from infer.task import fetch_shard

    by_id = {e.shard_id: e for e in entries}
    wanted = list(dict.fromkeys(sid for sid, _ in items))
    with ThreadPoolExecutor(threads) as pool:
        fetched = dict(zip(wanted, pool.map(lambda sid: fetch_shard(by_id[sid], endpoint_url), wanted)))
    return Sample(tuple(fetched[sid][rec] for sid, rec in items), tuple(by_id[sid].keys[rec] for sid, rec in items),
                  prep)


def _padded(images: np.ndarray, batch: int) -> np.ndarray:
    """``images`` with rows repeated up to ``batch`` rows (statistics stay those of real images)."""
    return images if len(images) == batch else images[np.arange(batch) % len(images)]


def top1(sym, arg: dict, aux: dict, batches: Iterable[np.ndarray], batch: int = 64,
         image_size: int = INPUT_SIZE) -> np.ndarray:
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
            s = sample.prep.size
            self.provide_data = [mx.io.DataDesc(DATA_NAME, (batch, 3, s, s))]
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


def sample_shards(manifest: Manifest, want: int, endpoint_url: Optional[str],
                  per_shard: int = SAMPLE_PER_SHARD) -> list[ShardEntry]:
    """Rows of shards evenly spaced across the manifest holding at least ``want`` images (read from
    their parts' row groups only; the whole manifest only when it is that small)."""
    n = manifest.num_shards
    count = min(n, max(1, math.ceil(want / per_shard)))
    while True:
        ids = sorted({(2 * j + 1) * n // (2 * count) for j in range(count)})
        entries = read_shards(manifest, ids, endpoint_url)
        if sum(e.num_records for e in entries) >= want or count == n:
            return entries
        count = min(n, count * 2)


def prepare_model(files: ModelFiles, spec: ModelSpec, precision: str, manifest: Manifest,
                  calibration_images: int, min_agreement: float, model_dir: str, log=print,
                  prep: Preprocessing = DEFAULT_PREPROCESSING) -> Converted:
    """Convert, check agreement, and store the model under ``model_dir``.

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
        raise ValueError(f"--precision {precision}: the manifest holds only {total} image(s), too few to "
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
    csym, carg, caux = convert(sym, arg, aux, precision, cal, spec.batch_size)
    t_agree = time.time()
    reference = top1(sym, arg, aux, agree.batches(spec.batch_size), spec.batch_size, prep.size)
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
    name = spec.name
    uris = {"sym": storage.join(model_dir, f"{name}-symbol.json"), "params": storage.join(model_dir, f"{name}-0000.params"),
            "labels": storage.join(model_dir, "synset.txt")}
    storage.write_bytes(uris["sym"], sym_json, spec.endpoint_url, "application/json")
    storage.write_bytes(uris["params"], params, spec.endpoint_url)
    storage.write_bytes(uris["labels"], labels_text(files), spec.endpoint_url, "text/plain")
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
