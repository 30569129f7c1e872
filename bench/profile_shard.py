"""Where one shard's time goes inside an infer task, stage by stage, per precision and kind of image.

    OMP_NUM_THREADS=1 .venv/bin/python bench/profile_shard.py [--kinds thumbnail,packed-2MP,packed-12MP]
        [--precisions fp32,bf16,int8] [--repeat 5] [--json docs/profile-figures.json]

One process, one thread (what each of infer's tasks has: Spark sets ``OMP_NUM_THREADS=1``), no
Spark and no S3 server: each stage of :mod:`infer.task` is timed on one 64-image shard held in
memory, with the functions the task itself calls.  Kinds of image: ``thumbnail`` (the bench's
32x32 PNGs), ``packed-2MP`` and ``packed-12MP`` (a 1920x1080 and a 4032x3024 photo-like JPEG as
``prepare --max-side 256`` stores them: 455x256 and 341x256 JPEGs), and ``packed224-…`` (the same
with ``--max-side 224``, the model's own input size: 398x224 and 299x224).

Stages, per shard: ``unpack`` (sha256 + RecordIO framing of the fetched bytes), ``decode``
(Pillow open + load, EXIF, RGB), ``resize`` (LANCZOS to 224), ``normalise`` (uint8 HWC -> the
float32 CHW batch), ``forward`` (the bound model, per precision), ``results`` (top-k and the
per-image results), ``parquet`` (the table, serialised and read back).  The GET, the HEAD and the
PUT are network waits (the task overlaps them) and not timed here.

The **bound** per precision: in infer the forward of one shard and the preprocessing of the next
run at once, but on two cores with one task per core every core is already busy with a forward,
so each shard costs its whole CPU time: infer's steady state can keep at most ``forward / (all
stages)`` of the model's own speed.  That is the figure the benchmark's ratios are measured against.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Callable, Optional, Sequence

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one task's thread, as Spark sets it (before mxnet)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common.images import Preprocessing, admit  # noqa: E402
from common.shard import pack_shard, unpack_shard  # noqa: E402

KINDS = ("thumbnail", "packed-2MP", "packed-12MP", "packed224-2MP", "packed224-12MP")
STAGES = ("unpack", "decode", "resize", "normalise", "forward", "results", "parquet")
BATCH = 64


def shard_images(kind: str) -> list[bytes]:
    """The 64 stored images of one shard of ``kind``."""
    from testkit.photos import PHOTO_SIZES, photo_jpeg
    from testkit.testdata import cifar_like_png

    if kind == "thumbnail":
        return [cifar_like_png(i) for i in range(BATCH)]
    packing, photo = kind.split("-", 1)
    side = int(packing.removeprefix("packed") or 256)
    distinct = [admit(photo_jpeg(i, PHOTO_SIZES[photo]), f"{i}.jpg", ("jpeg",), max_side=side).data for i in range(8)]
    return [distinct[i % len(distinct)] for i in range(BATCH)]


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """The fastest of ``repeat`` timed calls, in seconds (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def preprocessing_stages(payloads: Sequence[bytes], prep: Preprocessing, repeat: int
                         ) -> tuple[dict[str, float], np.ndarray]:
    """Seconds per shard of unpack, decode, resize and normalise, each on what the stage before it made; and
    the model input they make (what :func:`common.images.decode_into` writes for the task)."""
    import hashlib

    data = pack_shard(payloads)
    out = np.empty((len(payloads), 3) + prep.hw, dtype=np.float32)
    decoded = [prep.decode_image(p, "k") for p in payloads]
    resized = [prep.resized(img) for img in decoded]

    def normalise() -> None:
        for i, img in enumerate(resized):
            prep.normalise_into(img, out[i])

    stages = {"unpack": best_of(lambda: (hashlib.sha256(data).hexdigest(), unpack_shard(data, "shard")), repeat),
              "decode": best_of(lambda: [prep.decode_image(p, "k") for p in payloads], repeat),
              "resize": best_of(lambda: [prep.resized(img) for img in decoded], repeat),
              "normalise": best_of(normalise, repeat)}
    return stages, out


def model_stages(model_dir: str, batch: np.ndarray, repeat: int) -> dict[str, float]:
    """Seconds per shard of the forward, the results and the Parquet (serialised and read back)."""
    from common.model import Predictor, top_k
    from common.output import predictions_table, table_to_parquet
    from infer.task import image_results
    from testkit.zoo_builder import local_spec

    predictor = Predictor(local_spec(model_dir))
    keys = [f"images/{i:06d}.jpg" for i in range(len(batch))]
    probs = predictor.predict(batch)
    results = image_results(keys, {}, *top_k(probs, 5))
    now = datetime.now(timezone.utc)
    return {"forward": best_of(lambda: predictor.predict(batch), repeat),
            "results": best_of(lambda: image_results(keys, {}, *top_k(probs, 5)), repeat),
            "parquet": best_of(lambda: table_to_parquet(predictions_table(
                results, predictor.labels, 0, predictor.model_id, "m", now), "part"), repeat)}


def profile(kinds: Sequence[str], precisions: Sequence[str], repeat: int, workdir: str) -> dict:
    """``{"kinds": {kind: {"stages": {stage: ms per shard}, ...}}, "forward": {precision: ms}, "bound": ...}``."""
    from bench.run import converted_models
    from testkit import zoo_builder

    prep = Preprocessing()
    model_dir = os.path.join(workdir, "model")
    zoo_builder.write_model(model_dir)
    dirs = converted_models(model_dir, workdir, calibration=64, precisions=precisions)
    out: dict = {"kinds": {}, "model": {}}
    batch = None
    for kind in kinds:
        payloads = shard_images(kind)
        size = Image.open(io.BytesIO(payloads[0])).size
        stages, made = preprocessing_stages(payloads, prep, repeat)
        out["kinds"][kind] = {"stored_size": list(size), "bytes_per_image": sum(map(len, payloads)) // len(payloads),
                              "ms_per_shard": {k: round(v * 1000, 2) for k, v in stages.items()}}
        batch = made if batch is None else batch  # the forward's time does not depend on the pixels
    for pr in precisions:
        stages = model_stages(dirs[pr], batch, repeat)
        out["model"][pr] = {k: round(v * 1000, 2) for k, v in stages.items()}
    for kind, k in out["kinds"].items():
        pre = sum(k["ms_per_shard"].values())
        k["bound"] = {}
        for pr, m in out["model"].items():
            total = pre + m["forward"] + m["results"] + m["parquet"]
            k["bound"][pr] = {"forward_ms": m["forward"], "other_ms": round(total - m["forward"], 1),
                              "bound_x_model_only": round(m["forward"] / total, 3)}
    return out


def print_table(results: dict) -> None:
    """Markdown: ms per shard per stage and kind; then the bound per precision."""
    m = results["machine"]
    print(f"\nmachine: {m['cpu']} ({', '.join(m.get('cpu_flags', []))}); one thread; ms per 64-image shard")
    print("| kind (stored size) | " + " | ".join(STAGES[:4]) + " | " + " | ".join(
        f"forward {pr}" for pr in results["model"]) + " | results + parquet | bound: " + ", ".join(results["model"]) + " |")
    print("|---" * (7 + len(results["model"])) + "|")
    for kind, k in results["kinds"].items():
        s = k["ms_per_shard"]
        extra = next(iter(results["model"].values()))
        print(f"| {kind} ({k['stored_size'][0]}x{k['stored_size'][1]}) | " + " | ".join(f"{s[x]:.1f}" for x in STAGES[:4])
              + " | " + " | ".join(f"{v['forward']:.1f}" for v in results["model"].values())
              + f" | {extra['results'] + extra['parquet']:.1f} | "
              + ", ".join(f"{b['bound_x_model_only']:.2f}" for b in k["bound"].values()) + " |")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of {', '.join(KINDS)}")
    p.add_argument("--precisions", default="fp32,bf16,int8")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per stage (the fastest counts)")
    p.add_argument("--json", default=None, help="where to write the figures (default bench-results/profile.json)")
    a = p.parse_args(argv)
    kinds = a.kinds.split(",")
    if set(kinds) - set(KINDS):
        p.error(f"--kinds {a.kinds!r}: expected a comma list of {', '.join(KINDS)}")
    from bench.run import machine
    from testkit.localdev import ROOT

    with tempfile.TemporaryDirectory() as tmp:
        results = {"machine": machine(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                   **profile(kinds, a.precisions.split(","), a.repeat, tmp)}
    out_json = a.json or os.path.join(ROOT, "bench-results", "profile.json")
    os.makedirs(os.path.dirname(out_json), exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(results, f, indent=1)
    print_table(results)
    print(f"bench-profile: results in {os.path.relpath(out_json, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
