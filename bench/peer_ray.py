"""The same job in Ray Data (benchmark only; runs in its own environment, bench/peers.py builds it).

    .venv-peer-ray/bin/python bench/peer_ray.py --input s3://B/in/ --model-dir DIR --output s3://B/out/ \\
        --variant idiomatic|tuned|threads

A local Ray (``ray.init`` with this machine's cores) reads the PNGs through pyarrow's S3 file
system, runs the test ResNet-18 in ``map_batches`` on an actor pool (each actor binds the model
once with :class:`common.model.Predictor`: batch 64, infer's static shape and oneDNN fusion)
and writes the top-5 classes and probabilities back to S3 with ``write_parquet``.  Variants:

* ``guide``: ``read_images(size=(224, 224), mode="RGB")`` (Ray's decode and PIL resize in read
  tasks), then the model on 2 actors of one CPU each, as Ray's batch-inference guide shows it: on
  2 cores the actors hold every CPU and the read tasks never run (it waits forever; not in
  ``make bench``'s default list, bench/peers.py kills it);
* ``idiomatic``: the same with the smallest change that makes it run here: each actor asks for
  half a CPU, which leaves one for the read tasks;
* ``tuned``: ``read_binary_files``, decode and resize inside the actor with infer's
  preprocessing exactly (Pillow LANCZOS), 2 actors x 1 MXNet thread (infer's layout); the read
  tasks ask for a tenth of a CPU, so that the actors holding both cores never starve them
  (with one CPU each asked for, a 2-core Ray holds every core in the actors and the pipeline
  can wait forever);
* ``threads``: as ``tuned`` with one actor on 2 MXNet threads.

Prints one JSON line: wall seconds from before Ray's import to the write's end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

T0 = time.perf_counter()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TOP_K = 5


def filesystem():
    import pyarrow.fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    scheme, _, host = endpoint.partition("://")
    return pyarrow.fs.S3FileSystem(access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                                   secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                                   region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                                   endpoint_override=host or None, scheme=scheme or "https")


class Classify:
    """One actor: the model bound once; a batch of images (or image bytes) in, top-5 out."""

    def __init__(self, model_dir: str, from_bytes: bool) -> None:
        from common.model import Predictor
        from testkit.zoo_builder import local_spec

        self.predictor = Predictor(local_spec(model_dir))
        self.from_bytes = from_bytes

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from common.images import preprocess
        from common.model import top_k

        if self.from_bytes:
            x = np.stack([preprocess(bytes(b), "image") for b in batch["bytes"]])
        else:
            x = np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2), dtype=np.float32)
        ids, probs = top_k(self.predictor.predict(x), TOP_K)
        return {"key": batch["path"], "class_ids": ids.astype(np.int64), "probs": probs.astype(np.float32)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--variant", choices=("guide", "idiomatic", "tuned", "threads"), default="tuned")
    a = p.parse_args()
    # the workers import the project, with the MXNet threads bench/peers.py set
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH"))))
    import ray

    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}})
    fs = filesystem()
    src = a.input.split("://", 1)[-1]
    dst = a.output.split("://", 1)[-1]
    if a.variant in ("guide", "idiomatic"):
        ds = ray.data.read_images(src, filesystem=fs, mode="RGB", size=(224, 224), include_paths=True,
                                  file_extensions=["png"])
        ds = ds.map_batches(Classify, fn_constructor_args=(a.model_dir, False), batch_size=64, concurrency=cores,
                            num_cpus=1 if a.variant == "guide" else 0.5)
    else:
        actors = cores if a.variant == "tuned" else 1
        ds = ray.data.read_binary_files(src, filesystem=fs, include_paths=True, file_extensions=["png"],
                                        num_cpus=0.1)
        ds = ds.map_batches(Classify, fn_constructor_args=(a.model_dir, True), batch_size=64, concurrency=actors,
                            num_cpus=cores / actors - 0.1)
    ds.write_parquet(dst, filesystem=fs)
    print(json.dumps({"peer": "ray", "variant": a.variant, "wall_s": round(time.perf_counter() - T0, 3)}), flush=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
