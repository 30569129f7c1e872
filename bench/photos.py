"""`make bench` photo mode: infer over camera-size photos against the model alone, per photo size, precision
and decode (exact, fast, fast from shards packed with ``prepare --max-side 256``).

    .venv/bin/python bench/photos.py [--images 512] [--kinds jpeg-12MP,...] [--precisions fp32,int8,bf16]

One local S3-protocol server; per kind of photo (photo-like JPEGs of 0.3, 2 and 12 MP and 2 MP
screenshot PNGs, testkit/photos.py; 8 distinct pictures under ``--images`` keys), prepare packs them
twice (as they are, and with ``--max-side 256``), then one Spark application (spark-submit with
spark-defaults.conf, like the jobs) runs infer for every precision and decode, one after the other.
Model-only is bench/modelonly.py with infer's process layout.  prepare also runs with ``--decode
exact`` (as it decoded before ``--decode``), both ways timed inside the one application.

Steady state: the images of every shard but each Python worker's first (which pays the model load),
over the time from the end of those first shards to the last shard's end.  Decode
share: time in fetch-and-decode over time in decode and forward, summed over shards (both stages
run at once in each task and share the cores).  Ratios within this one run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # this process converts models (before mxnet)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import status, storage  # noqa: E402
from testkit.photos import PHOTO_SIZES, photo_jpeg, screenshot_png  # noqa: E402

BUCKET = "bench-photos"
KINDS = {"jpeg-0.3MP": ("jpeg", "0.3MP"), "jpeg-2MP": ("jpeg", "2MP"), "jpeg-12MP": ("jpeg", "12MP"),
         "png-2MP-screenshot": ("png", "2MP")}
MODES = ("exact", "fast", "packed")
MAX_SIDE = 256
DISTINCT = 8  # pictures per kind, repeated under distinct keys (prepare and infer never look at content twice)


def upload(kind: str, images: int, endpoint: Optional[str]) -> None:
    """``images`` objects of one kind under ``s3://BUCKET/<kind>/``."""
    fmt, size = KINDS[kind]
    contents = [photo_jpeg(i, PHOTO_SIZES[size]) if fmt == "jpeg" else screenshot_png(i, PHOTO_SIZES[size])
                for i in range(DISTINCT)]
    ext = "jpg" if fmt == "jpeg" else "png"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: storage.write_bytes(f"s3://{BUCKET}/{kind}/{i:06d}.{ext}", contents[i % DISTINCT],
                                                    endpoint), range(images)))


def run_id(kind: str, precision: str, mode: str) -> str:
    return f"{kind}-{precision}-{mode}".lower().replace(".", "")


def prepares(modes: Sequence[str], max_side: int = MAX_SIDE) -> list[tuple[str, list[str]]]:
    """The prepares the infer ``modes`` read ("full" for exact and fast, "packed"), then each with ``--decode
    exact`` (prepare's own speed before its fast decode; the same shards' keys)."""
    names = (["full"] if {"exact", "fast"} & set(modes) else []) + (["packed"] if "packed" in modes else [])
    flags = {"full": [], "packed": ["--max-side", str(max_side)]}
    return [(n, flags[n]) for n in names] + [(f"{n}-exact", flags[n] + ["--decode", "exact"]) for n in names]


def inner(kinds: Sequence[str], precisions: Sequence[str], model: dict[str, str], modes: Sequence[str] = MODES,
          max_side: int = MAX_SIDE) -> int:
    """Under spark-submit: the prepares per kind, then every infer, in this one application."""
    from infer.main import main as infer
    from prepare.main import main as prepare

    for kind in kinds:
        fmt, _ = KINDS[kind]
        for name, extra in prepares(modes, max_side):
            t = time.time()
            assert prepare(["--input", f"s3://{BUCKET}/{kind}/", "--output", f"s3://{BUCKET}/shards/{kind}/{name}/",
                            "--formats", fmt, *extra]) == 0
            print(f"bench-photos: prepare {kind} {name}: {time.time() - t:.1f}s", flush=True)
        for precision in precisions:
            for mode in modes:
                manifest = f"s3://{BUCKET}/shards/{kind}/{'packed' if mode == 'packed' else 'full'}/manifest.parquet"
                assert infer(["--manifest", manifest, "--sym-url", model["sym"], "--param-url", model["params"],
                              "--label-url", model["labels"], "--output", f"s3://{BUCKET}/pred/",
                              "--run-id", run_id(kind, precision, mode), "--precision", precision,
                              "--decode", "exact" if mode == "exact" else "fast", "--calibration-images", "64",
                              "--min-agreement", "0"]) == 0
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512, help="photos per kind (default 512: 8 shards)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of {', '.join(KINDS)}")
    p.add_argument("--precisions", default="fp32,int8,bf16")
    p.add_argument("--modes", default=",".join(MODES), help=f"infer's inputs, a comma list of {', '.join(MODES)}")
    p.add_argument("--max-side", type=int, default=MAX_SIDE, help=f"prepare's --max-side for packed (default {MAX_SIDE})")
    p.add_argument("--json", default=None, help="where to write the figures (default bench-results/photos-N.json)")
    p.add_argument("--inner", default=None, help=argparse.SUPPRESS)  # JSON of the model URIs, under spark-submit
    a = p.parse_args(argv)
    kinds, precisions, modes = a.kinds.split(","), a.precisions.split(","), a.modes.split(",")
    if a.inner:
        return inner(kinds, precisions, json.loads(a.inner), modes, a.max_side)

    from bench.measure import run_sampled, steady
    from bench.modelonly import measure as model_only
    from bench.run import converted_models, machine
    from testkit import zoo_builder
    from testkit.localdev import ROOT, LocalS3, spark_env, spark_submit_command

    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        p.error(f"--kinds: unknown {', '.join(unknown)} (known: {', '.join(KINDS)})")
    if not modes or set(modes) - set(MODES):
        p.error(f"--modes {a.modes!r}: expected a comma list of {', '.join(MODES)}")
    out_json = a.json or os.path.join(ROOT, "bench-results", f"photos-{a.images}.json")
    os.makedirs(os.path.dirname(out_json), exist_ok=True)
    workdir = os.path.join(ROOT, "bench-results", "work-photos")
    os.makedirs(workdir, exist_ok=True)
    results: dict = {"machine": machine(), "images_per_kind": a.images, "max_side": a.max_side,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": {}}
    with LocalS3() as s3:
        os.environ.update(s3.env)
        s3.create_bucket(BUCKET)
        for kind in kinds:
            t = time.time()
            upload(kind, a.images, s3.endpoint_url)
            print(f"bench-photos: uploaded {a.images} {kind} in {time.time() - t:.1f}s", flush=True)
        model_dir = os.path.join(workdir, "model")
        zoo_builder.write_model(model_dir)
        model = zoo_builder.write_model(f"s3://{BUCKET}/model/")
        dirs = converted_models(model_dir, workdir, precisions=precisions)
        procs = os.cpu_count() or 1
        results["model_only"] = {pr: model_only(dirs[pr], procs, 1, batches=12 if pr == "fp32" else 24)
                                 for pr in precisions}
        print(f"bench-photos: model-only {results['model_only']}", flush=True)
        s = run_sampled(spark_submit_command("bench/photos.py", ["--kinds", a.kinds, "--precisions", a.precisions,
                                                                 "--modes", a.modes, "--max-side", str(a.max_side),
                                                                 "--inner", json.dumps(model)]), spark_env(s3.env))
        if s.returncode != 0:
            raise SystemExit(f"bench/photos.py (spark-submit) failed ({s.returncode}):\n{s.stdout[-3000:]}\n"
                             f"{s.stderr[-3000:]}")
        print(s.stdout, flush=True)
        results["s3_server_cpu_s"] = s.caller_cpu_s  # the local S3 server's threads, in this process, meanwhile
        for line in s.stdout.splitlines():  # "bench-photos: prepare KIND NAME: 12.3s", timed inside the application
            if line.startswith("bench-photos: prepare "):
                kind, name = line.split()[2], line.split()[3].rstrip(":")
                seconds = float(line.rsplit(" ", 1)[1].rstrip("s"))
                results.setdefault("prepare", {}).setdefault(kind, {})[name] = {
                    "seconds": seconds, "images_per_s": round(a.images / seconds, 2)}
        for kind in kinds:
            results.setdefault("shard_bytes_per_image", {})[kind] = {
                name: round(_shard_bytes(kind, name) / a.images) for name, _ in prepares(modes, a.max_side)
                if "-" not in name}
            for pr in precisions:
                for mode in modes:
                    rid = run_id(kind, pr, mode)
                    f = steady(status.records(status.read_latest(f"s3://{BUCKET}/pred/", rid)))
                    f["ratio_to_model_only"] = (round(f["steady_images_per_s"] / results["model_only"][pr]["images_per_s"],
                                                      3) if f["steady_images_per_s"] else None)
                    results["runs"][rid] = {"kind": kind, "precision": pr, "mode": mode, **f}
    with open(out_json, "w") as fh:
        json.dump(results, fh, indent=1)
    print_table(results)
    print(f"bench-photos: results in {os.path.relpath(out_json, ROOT)}")
    return 0


def _shard_bytes(kind: str, name: str) -> int:
    """Bytes of every shard object of one prepare."""
    return sum(o.size for o in storage.list_objects(f"s3://{BUCKET}/shards/{kind}/{name}/shards/"))


def print_table(results: dict) -> None:
    """The summary table (Markdown): one row per kind and precision, a column pair per decode."""
    m = results["machine"]
    print(f"\nmachine: {m['cpu']} ({', '.join(m.get('cpu_flags', []))}), {m['cores']} cores; "
          f"{results['images_per_kind']} photos per kind; packed: prepare --max-side {results['max_side']}")
    rows: dict = {}
    for r in results["runs"].values():
        rows.setdefault((r["kind"], r["precision"]), {})[r["mode"]] = r
    shown = [md for md in MODES if any(md in modes for modes in rows.values())]
    print("| photos | precision | model-only img/s | " + " | ".join(
        f"{md}: img/s (x model, decode share)" for md in shown) + " |")
    print("|---" * (3 + len(shown)) + "|")
    for (kind, pr), modes in rows.items():
        cells = [f"{modes[md]['steady_images_per_s']} ({modes[md]['ratio_to_model_only']}, {modes[md]['decode_share']})"
                 for md in MODES if md in modes]
        print(f"| {kind} | {pr} | {results['model_only'][pr]['images_per_s']} | " + " | ".join(cells) + " |")
    for kind, r in results.get("prepare", {}).items():
        print(f"prepare {kind} img/s (inside one Spark application): " + "; ".join(
            f"{name} {v['images_per_s']}" for name, v in r.items()))
    sizes = results.get("shard_bytes_per_image", {})
    if sizes:
        print("\nshard bytes per image (full: as the archive's; packed: --max-side " + str(results["max_side"]) + "): "
              + "; ".join(f"{k} " + ", ".join(f"{name} {n:,}" for name, n in v.items()) for k, v in sizes.items()))


if __name__ == "__main__":
    sys.exit(main())
