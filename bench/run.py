"""`make bench`: shardinfer against model-only throughput and two baselines, in one run on one machine.

    .venv/bin/python bench/run.py --images 10000 [--latency-ms 30] [--json bench-results/bench.json]

One local S3-protocol server, one data set of CIFAR-like PNGs, one model (the test
ResNet-18), measured one after the other:

1. model-only: the bound model on a 64x3x224x224 batch, with infer's settings (as many
   processes as infer runs tasks at once, with the same MXNet threads each), at fp32 and
   converted to bf16 and int8 exactly as infer converts them;
2. shardinfer: prepare, then infer at each precision, on the whole manifest and on its
   first quarter (``--shards``): the marginal throughput between the two sizes is the
   steady state, and what is left of the small run's wall time is the fixed cost of one
   spark-submit (JVM, SparkContext, model check, conversion, worker start, report);
   fp32 also with other ``--shards-per-task`` values (``--spt-sweep``);
3. seed-style: bench/seed_style.py (one GET per image, padded partitions, collect, one text file);
4. Spark predict_batch_udf: bench/udf_style.py, bytes in (preprocessing in the predict
   function) and tensors in (on at most --tensor-images images: 600 KB of floats per row);
5. 2-4 again behind a proxy adding --latency-ms to every S3 request;
6. the peers a user would pick instead (bench/peers.py: Daft and Ray Data, each in its own
   environment, idiomatic and tuned), the whole job on the same images, model and S3 server,
   at --images and at each --peer-sizes size, with shardinfer's fp32 infer (and prepare + infer)
   at the same sizes.

Each Spark run is sampled for peak RSS (driver JVM, Python driver, Python workers) and
the machine's CPU busy fraction.  Prints a table of ratios to model-only and writes JSON.
Ratios within one run are what to compare: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Sequence

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # this process converts models (before mxnet)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import peers  # noqa: E402
from bench.measure import Sample, run_sampled, steady  # noqa: E402
from bench.modelonly import measure as model_only  # noqa: E402
from common import status, storage  # noqa: E402
from common.model_files import fetch_model  # noqa: E402
from common.model_graph import check_model  # noqa: E402
from infer import precision  # noqa: E402
from infer.cpu import cpu_info  # noqa: E402
from infer.sample import Sample as ImageSample  # noqa: E402
from testkit import zoo_builder  # noqa: E402
from testkit.faultproxy import FaultProxy  # noqa: E402
from testkit.localdev import ROOT, LocalS3, spark_env, spark_submit_command, upload_cifar_like  # noqa: E402
from testkit.testdata import cifar_like_png  # noqa: E402

BUCKET = "bench"


def machine() -> dict:
    """What ran the benchmark."""
    cpu = cpu_info()
    mem = next((int(ln.split()[1]) // 1024 for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    return {"cpu": cpu["model"], "cpu_flags": cpu["flags"], "cores": os.cpu_count(), "memory_mib": mem,
            "python": platform.python_version(), "platform": platform.platform()}


def converted_models(model_dir: str, workdir: str, calibration: int = 256,
                     precisions: Sequence[str] = ("bf16", "int8")) -> dict[str, str]:
    """``{precision: directory}``: the test ResNet-18 (fp32) and its conversions to ``precisions`` as infer
    converts it (int8 calibrated on ``calibration`` generated images), each written under the zoo file names
    for bench/modelonly.py."""
    spec = zoo_builder.local_spec(model_dir)
    files = fetch_model(spec)
    sym, arg, aux = check_model(files, spec)
    images = ImageSample(tuple(cifar_like_png(i, seed=99) for i in range(calibration)),
                              tuple(str(i) for i in range(calibration)))
    dirs = {"fp32": model_dir}
    for p in (p for p in precisions if p != "fp32"):
        out = os.path.join(workdir, f"model-{p}")
        os.makedirs(out, exist_ok=True)
        sym_json, params = precision.model_bytes(*precision.convert(sym, arg, aux, p, images))
        for name, data in ((zoo_builder.SYMBOL_FILE, sym_json), (zoo_builder.PARAMS_FILE, params),
                           (zoo_builder.SYNSET_FILE, precision.labels_text(files))):
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
        dirs[p] = out
    return dirs


def marginal(small: dict, big: dict) -> dict:
    """Steady-state images/s between two run sizes, and the fixed cost per spark-submit it implies."""
    steady = (big["images"] - small["images"]) / (big["wall_s"] - small["wall_s"])
    return {"steady_images_per_s": round(steady, 3), "fixed_s": round(small["wall_s"] - small["images"] / steady, 3)}


def submit(script: str, args: list[str], env: dict, conf: list[str]) -> Sample:
    """One spark-submit, sampled (``caller_cpu_s``: the local S3 server's threads in this process)."""
    s = run_sampled(spark_submit_command(script, args, conf), spark_env(env))
    if s.returncode != 0:
        raise SystemExit(f"{script} failed ({s.returncode}):\n{s.stdout[-3000:]}\n{s.stderr[-3000:]}")
    return s


def steady_state(output: str, run_id: str, images: int) -> dict:
    """Images/s from the first task start to the last task end, and the Python workers' peak RSS per task."""
    st = status.records(status.read_latest(output, run_id))
    t0, t1 = min(s["t_start"] for s in st), max(s["t_end"] for s in st)
    fwd = sum(s["t_forwarded"] - s.get("t_forward_start", s["t_decoded"]) for s in st)
    busy = sum(s["t_end"] - s["t_start"] for s in st)
    return {"steady_s": round(t1 - t0, 3), "steady_images_per_s": round(images / (t1 - t0), 3),
            "forward_share_of_task_time": round(fwd / busy, 3), "processes": len({s["pid"] for s in st})}


def row(name: str, s: Sample, images: int, model_ips: float, **extra) -> dict:
    ips = images / s.wall_s
    out = {"name": name, "images": images, "wall_s": round(s.wall_s, 3), "images_per_s": round(ips, 3),
           "ratio_to_model": round(ips / model_ips, 3), "cpu_busy": s.cpu_busy, "peak_rss_mb": s.peak_rss_mb, **extra}
    if "steady_images_per_s" in extra:
        out["ratio_steady_to_model"] = round(extra["steady_images_per_s"] / model_ips, 3)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description="shardinfer's speed benchmark (see docs/benchmarks.md)")
    p.add_argument("--images", type=int, default=1280)
    p.add_argument("--latency-ms", type=float, default=30.0, help="per-request latency for the latency runs")
    p.add_argument("--tensor-images", type=int, default=256, help="images for the tensors-in UDF variant")
    p.add_argument("--small", type=int, default=1000, help="second infer size, to show driver memory is flat")
    p.add_argument("--master", default="local[*]", help="Spark master for every Spark run (default local[*])")
    p.add_argument("--json", default=None, help="where to write the results (default bench-results/bench-N.json)")
    p.add_argument("--skip", default="", help="comma list of runs to skip: seed,udf,tensors,latency,small,bf16,int8")
    p.add_argument("--peers", default=",".join(peers.DEFAULT_VARIANTS), help="peer variants to run (bench/peers.py; "
                   "empty for none), e.g. daft:tuned,ray")
    p.add_argument("--peer-sizes", default="", help="more image counts (comma list) at which the peers and "
                   "shardinfer's fp32 infer run again, e.g. 10240")
    p.add_argument("--spt-sweep", default="1,8", help="other --shards-per-task values to run fp32 infer with "
                   "(comma list, empty for none)")
    a = p.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    n = a.images
    out_json = a.json or os.path.join(ROOT, "bench-results", f"bench-{n}.json")
    os.makedirs(os.path.dirname(out_json), exist_ok=True)
    conf = [f"spark.master={a.master}"]
    results: dict = {"machine": machine(), "images": n, "master": a.master, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "runs": []}
    workdir = os.path.join(ROOT, "bench-results", "work")
    os.makedirs(workdir, exist_ok=True)

    def log(msg: str) -> None:
        print(f"bench: {msg}", flush=True)

    with LocalS3() as s3:
        os.environ.update(s3.env)
        s3.create_bucket(BUCKET)
        t = time.time()
        upload_cifar_like(f"s3://{BUCKET}/in/", n, endpoint_url=s3.endpoint_url, threads=8)
        log(f"uploaded {n} images in {time.time() - t:.1f}s")
        model_dir = os.path.join(workdir, "model")
        zoo_builder.write_model(model_dir)
        model = zoo_builder.write_model(f"s3://{BUCKET}/model/")
        model_args = ["--sym-url", model["sym"], "--param-url", model["params"], "--label-url", model["labels"]]

        # 1. model-only, with infer's layout: Spark runs one task per core, MXNet on 1 thread each
        procs = os.cpu_count() if a.master == "local[*]" else int(a.master.strip("local[]").split(",")[0])
        precisions = [p for p in precision.PRECISIONS if p not in skip]
        dirs = converted_models(model_dir, workdir)
        results["model_only_by_precision"] = {p: model_only(dirs[p], procs, 1, batches=12 if p == "fp32" else 24)
                                              for p in precisions}
        mo = results["model_only_by_precision"]["fp32"]
        mo_alt = model_only(model_dir, 1, procs, batches=12)
        results["model_only"] = mo
        results["model_only_one_process"] = mo_alt
        ips = mo["images_per_s"]
        log(f"model-only {results['model_only_by_precision']} | fp32 one process x {procs} threads {mo_alt}")

        # 2. shardinfer
        s = submit("prepare/main.py", ["--input", f"s3://{BUCKET}/in/", "--output", f"s3://{BUCKET}/shards/"], s3.env, conf)
        results["prepare"] = {"wall_s": round(s.wall_s, 3), "peak_rss_mb": s.peak_rss_mb, "cpu_busy": s.cpu_busy}
        log(f"prepare {s.wall_s:.1f}s")
        out = f"s3://{BUCKET}/pred/"
        manifest_uri = f"s3://{BUCKET}/shards/manifest.parquet"
        shards = -(-n // 64)
        quarter = max(1, shards // 4)
        n_small = min(n, quarter * 64)

        def infer_run(run_id: str, images: int, *extra: str) -> tuple[Sample, dict]:
            s = submit("infer/main.py", ["--manifest", manifest_uri, *model_args, "--output", out, "--run-id", run_id,
                                         "--min-agreement", "0", *extra], s3.env, conf)
            return s, steady_state(out, run_id, images)

        results["precisions"] = {}
        for p in precisions:
            small, _ = infer_run(f"{p}-small", n_small, "--precision", p, "--shards", f"0-{quarter - 1}")
            big, st = infer_run(f"{p}-big", n, "--precision", p)
            m = marginal({"images": n_small, "wall_s": small.wall_s}, {"images": n, "wall_s": big.wall_s})
            conversion = json.loads(storage.read_bytes(f"{out}_runs/{p}-small/run.json")).get("conversion") or {}
            m["conversion_s"] = conversion.get("prepare_s", 0.0)
            m["fixed_s_without_conversion"] = round(m["fixed_s"] - m["conversion_s"], 3)
            model_ips = results["model_only_by_precision"][p]["images_per_s"]
            warm = steady(status.records(status.read_latest(out, f"{p}-big")))  # each worker's first shard left out
            results["precisions"][p] = {
                "small": {"images": n_small, "wall_s": round(small.wall_s, 3)},
                "big": {"images": n, "wall_s": round(big.wall_s, 3), "images_per_s": round(n / big.wall_s, 3)},
                **m, "ratio_steady_to_own_model_only": round(m["steady_images_per_s"] / model_ips, 3),
                "ratio_steady_to_fp32_model_only": round(m["steady_images_per_s"] / ips, 3),
                "task_span_images_per_s": st["steady_images_per_s"], "peak_rss_mb": big.peak_rss_mb,
                "after_first_shards": {**warm, "ratio_to_own_model_only": round(warm["steady_images_per_s"] / model_ips,
                                                                                3)},
                "s3_server_cpu_s": big.caller_cpu_s, "s3_server_cpu_share": round(big.caller_cpu_s / ((os.cpu_count() or 1) * big.wall_s), 3)}
            log(f"infer {p}: {results['precisions'][p]}")
            if p == "fp32":
                s = big
                r = row("shardinfer", big, n, ips, **st)
                results["runs"].append(r)
                results["prepare"]["share_of_infer"] = round(results["prepare"]["wall_s"] / big.wall_s, 3)
        results["shards_per_task"] = {}
        for spt in filter(None, a.spt_sweep.split(",")):
            big, st = infer_run(f"spt{spt}", n, "--shards-per-task", spt)
            results["shards_per_task"][spt] = {"wall_s": round(big.wall_s, 3), "images_per_s": round(n / big.wall_s, 3),
                                               "task_span_images_per_s": st["steady_images_per_s"],
                                               "s3_server_cpu_s": big.caller_cpu_s}
            log(f"infer fp32 --shards-per-task {spt}: {results['shards_per_task'][spt]}")

        if "small" not in skip and a.small < n:
            upload_cifar_like(f"s3://{BUCKET}/small/", a.small, endpoint_url=s3.endpoint_url, threads=8)
            submit("prepare/main.py", ["--input", f"s3://{BUCKET}/small/", "--output", f"s3://{BUCKET}/shards-small/"],
                   s3.env, conf)
            s = submit("infer/main.py", ["--manifest", f"s3://{BUCKET}/shards-small/manifest.parquet", *model_args,
                                         "--output", out, "--run-id", "driver-small"], s3.env, conf)
            results["driver_memory"] = {"images": [a.small, n], "python_driver_mb": [s.peak_rss_mb.get("python_driver"),
                                        r["peak_rss_mb"].get("python_driver")], "jvm_mb": [s.peak_rss_mb.get("jvm"),
                                        r["peak_rss_mb"].get("jvm")]}
            log(f"driver memory {results['driver_memory']}")

        def baselines(env: dict, suffix: str) -> None:
            if "seed" not in skip:
                s = submit("bench/seed_style.py", ["--input", f"s3://{BUCKET}/in/", "--model-dir", model_dir,
                                                   "--output", f"s3://{BUCKET}/seed{suffix}.txt"], env, conf)
                results["runs"].append(row(f"seed-style{suffix}", s, n, ips))
                log(f"seed-style{suffix} {results['runs'][-1]}")
            if "udf" not in skip:
                s = submit("bench/udf_style.py", ["--input", f"s3://{BUCKET}/in/", "--model-dir", model_dir,
                                                  "--output", os.path.join(workdir, f"udf{suffix}"), "--variant", "bytes"],
                           env, conf)
                results["runs"].append(row(f"predict_batch_udf bytes-in{suffix}", s, n, ips))
                log(f"udf bytes{suffix} {results['runs'][-1]}")

        baselines(s3.env, "")
        if "tensors" not in skip:
            nt = min(n, a.tensor_images)
            storage_prefix = f"s3://{BUCKET}/tensors/"
            upload_cifar_like(storage_prefix, nt, endpoint_url=s3.endpoint_url, threads=8)
            s = submit("bench/udf_style.py", ["--input", storage_prefix, "--model-dir", model_dir,
                                              "--output", os.path.join(workdir, "udf-tensors"), "--variant", "tensors"],
                       s3.env, conf)
            results["runs"].append(row("predict_batch_udf tensors-in", s, nt, ips))
            log(f"udf tensors {results['runs'][-1]}")

        variants = peers.parse_variants(a.peers)
        results["peers"] = []
        if variants:
            prep = results["prepare"]["wall_s"]
            fp32 = next(r for r in results["runs"] if r["name"] == "shardinfer")
            results["peers"].append(peer_size(n, f"s3://{BUCKET}/in/", fp32["wall_s"], prep, variants, model_dir,
                                              s3.env, ips, log))
            for size in (int(x) for x in filter(None, a.peer_sizes.split(","))):
                prefix = f"s3://{BUCKET}/in-{size}/"
                upload_cifar_like(prefix, size, endpoint_url=s3.endpoint_url, threads=8)
                s = submit("prepare/main.py", ["--input", prefix, "--output", f"s3://{BUCKET}/shards-{size}/"], s3.env,
                           conf)
                manifest = f"s3://{BUCKET}/shards-{size}/manifest.parquet"
                big = submit("infer/main.py", ["--manifest", manifest, *model_args, "--output", f"s3://{BUCKET}/pred-{size}/",
                                               "--run-id", "bench"], s3.env, conf)
                results["peers"].append(peer_size(size, prefix, big.wall_s, s.wall_s, variants, model_dir, s3.env, ips,
                                                  log))

        if "latency" not in skip:
            with FaultProxy(s3.endpoint_url, latency_s=a.latency_ms / 1000.0) as proxy:
                env = {**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint_url}
                suffix = f" +{a.latency_ms:g}ms"
                s = submit("infer/main.py", ["--manifest", f"s3://{BUCKET}/shards/manifest.parquet", *model_args,
                                             "--output", f"s3://{BUCKET}/pred-latency/", "--run-id", "bench"], env, conf)
                r = row(f"shardinfer{suffix}", s, n, ips, **steady_state(f"s3://{BUCKET}/pred-latency/", "bench", n))
                results["runs"].append(r)
                log(f"shardinfer{suffix} {r}")
                baselines(env, suffix)
                if variants:  # the backfill's view behind the latency: prepare + infer against the peers
                    pl = submit("prepare/main.py", ["--input", f"s3://{BUCKET}/in/", "--output",
                                                    f"s3://{BUCKET}/shards-latency/"], env, conf)
                    results["peers_latency"] = peer_size(n, f"s3://{BUCKET}/in/", s.wall_s, pl.wall_s, variants,
                                                         model_dir, env, ips, lambda m: log(f"{m}{suffix}"), "-latency")
                results["latency_proxy_requests"] = proxy.counts["requests"]

    with open(out_json, "w") as f:
        json.dump(results, f, indent=1)
    print_table(results)
    print(f"bench: results in {os.path.relpath(out_json, ROOT)}")
    return 0


def peer_size(images: int, prefix: str, infer_s: float, prepare_s: float, variants, model_dir: str, env: dict,
              model_ips: float, log, tag: str = "") -> dict:
    """The peers' whole jobs at one size, beside shardinfer's infer and prepare + infer on the same images."""
    rows = peers.run_variants(variants, prefix, model_dir, f"s3://{BUCKET}/peers{tag}-{images}/", env, images, model_ips,
                              log=lambda m: log(f"peer {m}"))
    ok = [r for r in rows if "error" not in r]
    best = max(ok, key=lambda r: r["images_per_s"]) if ok else None

    def whole(wall: float) -> dict:
        return {"wall_s": round(wall, 3), "images_per_s": round(images / wall, 3),
                "ratio_to_model": round(images / wall / model_ips, 3)}

    out = {"images": images, "shardinfer_infer": whole(infer_s), "shardinfer_prepare_and_infer": whole(prepare_s + infer_s),
           "runs": rows}
    if best:
        out["best_peer"] = best["name"]
        out["infer_over_best_peer"] = round(out["shardinfer_infer"]["images_per_s"] / best["images_per_s"], 3)
        out["prepare_and_infer_over_best_peer"] = round(out["shardinfer_prepare_and_infer"]["images_per_s"]
                                                        / best["images_per_s"], 3)
    log(f"peers at {images}: {out.get('best_peer')}; infer {out.get('infer_over_best_peer')} x, prepare + infer "
        f"{out.get('prepare_and_infer_over_best_peer')} x the best peer")
    return out


def print_table(results: dict) -> None:
    """The summary table (Markdown)."""
    mo = results["model_only"]
    print(f"\nmachine: {results['machine']['cpu']} ({', '.join(results['machine'].get('cpu_flags', []))}), "
          f"{results['machine']['cores']} cores; "
          f"{results['images']} images; Spark {results['master']}")
    print(f"model-only: {mo['images_per_s']} img/s ({mo['procs']} processes x {mo['threads']} MXNet thread); "
          f"one process x {results['model_only_one_process']['threads']} threads: "
          f"{results['model_only_one_process']['images_per_s']} img/s\n")
    print("| run | images | wall s | img/s | x model-only | steady img/s (x model) | CPU busy | peak RSS MB: JVM / py driver / py worker (all workers) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        steady = f"{r['steady_images_per_s']} ({r['ratio_steady_to_model']})" if "steady_images_per_s" in r else "–"
        m = r["peak_rss_mb"]
        print(f"| {r['name']} | {r['images']} | {r['wall_s']} | {r['images_per_s']} | {r['ratio_to_model']} | {steady} | "
              f"{r['cpu_busy']} | {m.get('jvm', '–')} / {m.get('python_driver', '–')} / {m.get('python_worker', '–')} "
              f"({m.get('python_workers_total', '–')}) |")
    if results.get("precisions"):
        print("\n| precision | model-only img/s | infer steady img/s (marginal) | x own model-only | x fp32 model-only "
              "| fixed s per submit (of which conversion) | whole job img/s at " f"{results['images']} |")
        print("|---|---|---|---|---|---|---|")
        for p, r in results["precisions"].items():
            print(f"| {p} | {results['model_only_by_precision'][p]['images_per_s']} | {r['steady_images_per_s']} | "
                  f"{r['ratio_steady_to_own_model_only']} | {r['ratio_steady_to_fp32_model_only']} | {r['fixed_s']} "
                  f"({r.get('conversion_s', 0.0)}) | {r['big']['images_per_s']} |")
    for spt, r in results.get("shards_per_task", {}).items():
        print(f"fp32 --shards-per-task {spt}: {r['images_per_s']} img/s whole job, {r['task_span_images_per_s']} in tasks")
    for size in results.get("peers", []) + ([results["peers_latency"]] if "peers_latency" in results else []):
        latency = " (+latency on every S3 request)" if size is results.get("peers_latency") else ""
        print(f"\nWhole job at {size['images']} images{latency} (img/s, x model-only):")
        print("| run | wall s | img/s | x model-only |")
        print("|---|---|---|---|")
        for name, key in (("shardinfer infer", "shardinfer_infer"), ("shardinfer prepare + infer",
                                                                       "shardinfer_prepare_and_infer")):
            r = size[key]
            print(f"| {name} | {r['wall_s']} | {r['images_per_s']} | {r['ratio_to_model']} |")
        for r in size["runs"]:
            if "error" in r:
                print(f"| {r['name']} | – | {r['error']} | – |")
            else:
                print(f"| {r['name']} | {r['wall_s']} | {r['images_per_s']} | {r['ratio_to_model']} |")
        if size.get("best_peer"):
            print(f"infer / best peer ({size['best_peer']}): {size['infer_over_best_peer']}; prepare + infer / best "
                  f"peer: {size['prepare_and_infer_over_best_peer']}")
    pr = results["prepare"]
    print(f"\nprepare: {pr['wall_s']}s = {pr.get('share_of_infer')} of infer's wall time")
    if "driver_memory" in results:
        d = results["driver_memory"]
        print(f"driver peak RSS at {d['images'][0]} vs {d['images'][1]} images: Python {d['python_driver_mb'][0]} vs "
              f"{d['python_driver_mb'][1]} MB, JVM {d['jvm_mb'][0]} vs {d['jvm_mb'][1]} MB")


if __name__ == "__main__":
    sys.exit(main())
