"""`--decode fast` against `--decode exact`: top-1 agreement on a trained model, pixel differences, decode time.

    .venv/bin/python bench/decode.py [--digits 1797] [--out docs/decode-figures.json]

1. **Agreement.** scikit-learn's 1,797 handwritten digits (testkit/digits_model.py trains the
   classifier on them, at infer's preprocessing), each enlarged to a camera size (0.3, 2 and
   12 MP in turn), given sensor grain and saved as a quality-90 JPEG: a "photo" of a digit.
   Each photo is preprocessed both ways and classified; the table gives the share of photos
   whose top-1 class is the same, the accuracy of each path, and the largest probability
   difference.
2. **Pixels.** On photo-like JPEGs (testkit/photos.py) of each size and a 2 MP screenshot PNG:
   the mean and largest absolute difference of the 224x224 model input (0..255 levels).
3. **Time.** Decode and preprocessing per image on one thread, per size and path; and prepare's
   own work per image (``common.images.admit``: the check alone, and the check + ``--max-side
   256`` downscale) with ``prepare --decode exact`` and ``fast`` (the default).

The "packed" agreement is from what ``prepare --max-side 256`` stores with its default fast
decode, "packed_exact" from what it stored with ``--decode exact`` (the only way before).

Decides the default of ``--decode`` (fast only at >= 99.5 % agreement). Prints a table and
writes JSON. Photos are made in spawned worker processes (never a fork after MXNet is imported).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.images import Preprocessing  # noqa: E402
from testkit.photos import PHOTO_SIZES, digit_photo, photo_jpeg, screenshot_png  # noqa: E402

EXACT, FAST = Preprocessing(decode="exact"), Preprocessing(decode="fast")
AGREEMENT_FOR_DEFAULT = 0.995
PACK_SIDE = 256  # prepare --max-side for the "packed" path


def _inputs(job: tuple[bytes, tuple[int, int], int]) -> tuple[np.ndarray, ...]:
    """The model inputs of one digit photo (in a worker process): exact, fast, and fast from what
    ``prepare --max-side 256`` stores with its fast and its exact decode."""
    from common.images import admit, preprocess

    data = digit_photo(*job)
    packed = admit(data, "photo.jpg", ("jpeg",), PACK_SIDE, decode="fast").data
    packed_exact = admit(data, "photo.jpg", ("jpeg",), PACK_SIDE, decode="exact").data
    return (preprocess(data, "exact", EXACT), preprocess(data, "fast", FAST), preprocess(packed, "packed", FAST),
            preprocess(packed_exact, "packed", FAST))


def digit_inputs(count: int, procs: int) -> tuple[np.ndarray, ...]:
    """``(exact, fast, packed, packed_exact, labels, size names)`` for the first ``count`` digits, sizes in turn."""
    from testkit import digits_model

    pngs, labels = digits_model.digits()
    names = [list(PHOTO_SIZES)[i % len(PHOTO_SIZES)] for i in range(count)]
    jobs = [(pngs[i], PHOTO_SIZES[names[i]], i) for i in range(count)]
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:  # MXNet may be loaded
        pairs = list(pool.map(_inputs, jobs, chunksize=4))
    return (*(np.stack([p[k] for p in pairs]) for k in range(4)), labels[:count], names)


def probabilities(files: dict[str, bytes], x: np.ndarray) -> np.ndarray:
    """The digits model's probabilities for a stack of 3x224x224 inputs (the unfused executor, batch 64)."""
    import mxnet as mx

    from testkit import digits_model

    sym = mx.sym.load_json(files[digits_model.SYMBOL_FILE].decode())
    params = mx.nd.load_frombuffer(files[digits_model.PARAMS_FILE])
    arg = {k[4:]: v for k, v in params.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in params.items() if k.startswith("aux:")}
    out = []
    for start in range(0, len(x), 64):
        batch = x[start : start + 64]
        exe = sym.bind(mx.cpu(), {"data": mx.nd.array(batch), **arg, "softmax_label": mx.nd.zeros(len(batch))},
                       aux_states=aux, grad_req="null")
        out.append(exe.forward(is_train=False)[0].asnumpy())
    return np.concatenate(out)


def agreement(count: int, procs: int, files: Optional[dict[str, bytes]] = None) -> dict:
    """Top-1 agreement of fast and exact over ``count`` digit photos, overall and per size."""
    from testkit import digits_model

    exact, fast, packed, packed_exact, labels, names = digit_inputs(count, procs)
    files = files or digits_model.train()
    pe = probabilities(files, exact)
    out = {"images": count, "accuracy_exact": round(float((pe.argmax(1) == labels).mean()), 4)}
    for name, x in (("fast", fast), ("packed", packed), ("packed_exact", packed_exact)):
        p = probabilities(files, x)
        same = pe.argmax(1) == p.argmax(1)
        pixel = np.abs(exact - x)
        out[name] = {"agreement": round(float(same.mean()), 5), "disagreements": int((~same).sum()),
                     "accuracy": round(float((p.argmax(1) == labels).mean()), 4),
                     "max_probability_difference": round(float(np.abs(pe - p).max()), 5),
                     "mean_pixel_difference": round(float(pixel.mean()), 4), "by_size": {}}
        for size in PHOTO_SIZES:
            sel = np.array([n == size for n in names])
            if sel.any():
                out[name]["by_size"][size] = {"images": int(sel.sum()), "agreement": round(float(same[sel].mean()), 5),
                                              "mean_pixel_difference": round(float(pixel[sel].mean()), 4)}
    return out


def _per_image(fn, datas: Sequence[bytes], repeats: int) -> tuple[float, list]:
    """Milliseconds per image of ``fn`` over ``datas``, ``repeats`` times in a row, and the last round's results."""
    t = time.perf_counter()
    for _ in range(repeats):
        results = [fn(d) for d in datas]
    return round((time.perf_counter() - t) * 1000 / (repeats * len(datas)), 1), results


def pixels_and_time(repeats: int = 3, photos: int = 4) -> dict:
    """Per photo kind: mean / max input difference and milliseconds per image on one thread, both paths."""
    from common.images import admit, preprocess

    kinds = {f"jpeg {name}": [photo_jpeg(i, size) for i in range(photos)] for name, size in PHOTO_SIZES.items()}
    kinds["png 2MP screenshot"] = [screenshot_png(i) for i in range(photos)]
    out = {}
    for kind, datas in kinds.items():
        row: dict = {"bytes": int(np.mean([len(d) for d in datas]))}
        for name, prep in (("exact", EXACT), ("fast", FAST)):
            preprocess(datas[0], kind, prep)
            row[f"{name}_ms"], row[name] = _per_image(lambda d: preprocess(d, kind, prep), datas, repeats)
        fmt = "png" if kind.startswith("png") else "jpeg"
        for decode in ("exact", "fast"):  # prepare's work per image: the check, and the check + --max-side 256
            for what, side in (("check", None), ("pack", PACK_SIDE)):
                row[f"prepare_{what}_{decode}_ms"], _ = _per_image(
                    lambda d: admit(d, f"photo.{fmt}", (fmt,), side, decode=decode), datas, repeats)
        diff = np.abs(np.stack(row.pop("exact")) - np.stack(row.pop("fast")))
        row.update(mean_pixel_difference=round(float(diff.mean()), 4), max_pixel_difference=round(float(diff.max()), 1),
                   speedup=round(row["exact_ms"] / row["fast_ms"], 2))
        out[kind] = row
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--digits", type=int, default=1797, help="digit photos for the agreement (at most 1,797)")
    p.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="processes generating the photos")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    a = p.parse_args(argv)
    from infer.cpu import cpu_info

    figures = {"cpu": cpu_info(), "pixels_and_time": pixels_and_time(),
               "agreement": agreement(min(a.digits, 1797), a.procs)}
    figures["default"] = "fast" if figures["agreement"]["fast"]["agreement"] >= AGREEMENT_FOR_DEFAULT else "exact"
    cpu = figures["cpu"]
    print(f"CPU: {cpu['model']} ({', '.join(cpu['flags'])}); one thread")
    print("| image | bytes | exact ms | fast ms | speed-up | mean / max input difference (levels) |")
    print("|---|---|---|---|---|---|")
    for kind, r in figures["pixels_and_time"].items():
        print(f"| {kind} | {r['bytes']:,} | {r['exact_ms']} | {r['fast_ms']} | {r['speedup']}x | "
              f"{r['mean_pixel_difference']} / {r['max_pixel_difference']} |")
    print("\nprepare per image, one thread (ms): check exact / fast, check + --max-side 256 exact / fast")
    for kind, r in figures["pixels_and_time"].items():
        print(f"| {kind} | {r['prepare_check_exact_ms']} / {r['prepare_check_fast_ms']} | {r['prepare_pack_exact_ms']} / "
              f"{r['prepare_pack_fast_ms']} |")
    g = figures["agreement"]
    print(f"\ndigit photos: {g['images']} (accuracy from the exact path {g['accuracy_exact']:.2%})")
    for name in ("fast", "packed", "packed_exact"):
        r = g[name]
        print(f"{name} vs exact: top-1 agreement {r['agreement']:.2%} ({r['disagreements']} differ); accuracy "
              f"{r['accuracy']:.2%}; largest probability difference {r['max_probability_difference']}; mean input "
              f"difference {r['mean_pixel_difference']}; by size: "
              + ", ".join(f"{k} {v['agreement']:.2%}" for k, v in r["by_size"].items()))
    print(f"default decode by the {AGREEMENT_FOR_DEFAULT:.1%} rule: {figures['default']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
