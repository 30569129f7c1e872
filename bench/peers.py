"""The tools a user would pick instead, running the same job: Daft and Ray Data (benchmark only).

    .venv/bin/python bench/peers.py --images 2560 [--variants daft:tuned,ray:tuned]

Each peer runs in an environment of its own (``.venv-peer-daft``, ``.venv-peer-ray``: setup.cfg's
install_requires plus the extra ``peer-daft`` / ``peer-ray``, built here on first use and rebuilt
when setup.cfg changes), reads the same PNGs from the same local S3 server, runs the same test
ResNet-18 (bound once per worker by :class:`common.model.Predictor`, batch 64, infer's static
shape and oneDNN fusion) and writes Parquet back to S3.  The rows are counted back here, from the
files on S3, with pyarrow: every image once, or the run is refused.  bench/run.py calls
:func:`run_variants` inside its own run, beside shardinfer and model-only; run alone, this
script uploads its own images and measures model-only itself.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.measure import run_sampled  # noqa: E402
from common import storage  # noqa: E402
from testkit.localdev import ROOT  # noqa: E402

# peer -> (script, variants, {variant: MXNet threads per worker}); infer's layout is 2 workers x 1 thread.
PEERS = {
    "daft": ("bench/peer_daft.py", {"idiomatic": 1, "tuned": 1, "threads": 2}),
    "ray": ("bench/peer_ray.py", {"guide": 1, "idiomatic": 1, "tuned": 1, "threads": 2}),
}
# Ray's guide form waits forever on 2 cores (bench/peer_ray.py): asked for by name only.
BY_NAME_ONLY = {("ray", "guide")}
DEFAULT_VARIANTS = tuple(f"{peer}:{v}" for peer, (_, vs) in PEERS.items() for v in vs
                         if (peer, v) not in BY_NAME_ONLY)


def parse_variants(text: str) -> list[tuple[str, str]]:
    """``daft:tuned,ray`` -> [("daft", "tuned"), ("ray", every variant...)]; an unknown one is named."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        peer, _, variant = item.partition(":")
        if peer not in PEERS or (variant and variant not in PEERS[peer][1]):
            raise SystemExit(f"peers: unknown variant {item!r}; known: {', '.join(DEFAULT_VARIANTS)}")
        out += [(peer, v) for v in ([variant] if variant else PEERS[peer][1]) if variant or (peer, v) not in BY_NAME_ONLY]
    return out


def environment(peer: str, log=print) -> str:
    """The peer's own virtual environment, built (or rebuilt after a change of setup.cfg) here; its python."""
    venv = os.path.join(ROOT, f".venv-peer-{peer}")
    python = os.path.join(venv, "bin", "python")
    reqs = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "requirements.py"), f"peer-{peer}"],
                          check=True, capture_output=True, text=True).stdout
    stamp = os.path.join(venv, ".shardinfer-peer")
    digest = hashlib.sha256(reqs.encode()).hexdigest()
    if os.path.exists(stamp) and open(stamp).read() == digest:
        return python
    log(f"building {venv} (pip install: {', '.join(reqs.split()[-1:])} and install_requires)")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    req_file = os.path.join(venv, "requirements.txt")
    with open(req_file, "w") as f:
        f.write(reqs)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", req_file],
                   check=True)
    with open(stamp, "w") as f:
        f.write(digest)
    return python


def count_back(prefix: str, endpoint_url=None) -> dict:
    """Rows and distinct keys in the Parquet files under ``prefix``, read back from S3 with pyarrow."""
    import pyarrow.parquet as pq

    rows, keys, files = 0, set(), 0
    bucket = storage.parse_s3(prefix).bucket
    for obj in storage.list_objects(prefix, endpoint_url):
        if not obj.key.endswith(".parquet"):
            continue
        table = pq.read_table(io.BytesIO(storage.read_bytes(f"s3://{bucket}/{obj.key}", endpoint_url)),
                              columns=["key"])
        rows += table.num_rows
        keys.update(k.rsplit("/", 1)[-1] for k in table.column("key").to_pylist())
        files += 1
    return {"rows": rows, "distinct_keys": len(keys), "files": files}


def run_variant(peer: str, variant: str, input_uri: str, model_dir: str, output_uri: str, env: dict,
                images: int, log=print) -> dict:
    """One peer variant's whole job, sampled; refused unless every image comes back exactly once."""
    script, threads = PEERS[peer][0], PEERS[peer][1][variant]
    python = environment(peer, log)
    cmd = [python, os.path.join(ROOT, script), "--input", input_uri, "--model-dir", model_dir, "--output", output_uri,
           "--variant", variant]
    base = {"name": f"{peer} {variant}", "peer": peer, "variant": variant, "images": images, "threads": threads}
    limit = 120 + images / 2
    try:  # a pipeline that waits forever (Ray Data's guide form does, on 2 cores) is a result, not a hung benchmark
        s = run_sampled(cmd, {**os.environ, **env, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"},
                        timeout=limit)
    except subprocess.TimeoutExpired:
        return {**base, "error": f"no result after {limit:.0f} s (killed)"}
    report = next((json.loads(ln) for ln in reversed(s.stdout.splitlines()) if ln.startswith("{")), None)
    if s.returncode != 0 or report is None:
        tail = (s.stderr.strip().splitlines() or [""])[-1][:300]
        return {**base, "error": f"exit {s.returncode}: {tail}"}
    back = count_back(output_uri, env.get("AWS_ENDPOINT_URL"))
    if back["rows"] != images or back["distinct_keys"] != images:  # a peer that loses or repeats images has no speed
        raise SystemExit(f"{peer} {variant}: {back['rows']} rows, {back['distinct_keys']} distinct keys written "
                         f"for {images} images under {output_uri}")
    return {**base, "wall_s": round(s.wall_s, 3), "images_per_s": round(images / s.wall_s, 3),
            "cpu_busy": s.cpu_busy, "peak_rss_mb": s.peak_rss_mb, "s3_server_cpu_s": s.caller_cpu_s,
            "rows_back": back["rows"], "files": back["files"]}


def run_variants(variants, input_uri: str, model_dir: str, output_prefix: str, env: dict, images: int,
                 model_ips: float, log=print) -> list[dict]:
    """Every variant in turn, each with the ratio of its whole-job img/s to ``model_ips``."""
    rows = []
    for peer, variant in variants:
        r = run_variant(peer, variant, input_uri, model_dir, storage.join(output_prefix, f"{peer}-{variant}/"), env,
                        images, log)
        if "error" in r:
            log(f"{r['name']} at {images} images: {r['error']}")
        else:
            r["ratio_to_model"] = round(r["images_per_s"] / model_ips, 3)
            log(f"{r['name']} at {images} images: {r['wall_s']} s, {r['images_per_s']} img/s = "
                f"{r['ratio_to_model']} x model-only")
        rows.append(r)
    return rows


def main() -> int:
    from bench.modelonly import measure as model_only
    from testkit import zoo_builder
    from testkit.localdev import LocalS3, upload_cifar_like

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=640)
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    a = p.parse_args()
    variants = parse_variants(a.variants)
    workdir = os.path.join(ROOT, "bench-results", "work-peers")
    with LocalS3() as s3:
        os.environ.update(s3.env)
        s3.create_bucket("bench")
        upload_cifar_like("s3://bench/in/", a.images, endpoint_url=s3.endpoint_url, threads=8)
        model_dir = os.path.join(workdir, "model")
        zoo_builder.write_model(model_dir)
        mo = model_only(model_dir, os.cpu_count() or 1, 1, batches=8)
        print(f"peers: model-only {mo['images_per_s']} img/s", flush=True)
        started = time.strftime("%Y%m%dT%H%M%S")
        rows = run_variants(variants, "s3://bench/in/", model_dir, f"s3://bench/peers-{started}/", s3.env, a.images,
                            mo["images_per_s"], log=lambda m: print(f"peers: {m}", flush=True))
    print(json.dumps({"model_only": mo, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
