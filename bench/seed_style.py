"""The seed's pipeline, written fresh for comparison (benchmark only).

    spark-submit bench/seed_style.py --input s3://B/in/ --model-dir DIR --output s3://B/seed/predictions.txt

Its design, as the seed had it: the driver lists the keys and cuts them into batches of 64,
padding the last batch by repeating keys; one partition per batch; each task GETs its
images one by one, decodes and resizes each, runs the model on the batch; every
prediction is collected to the driver, which writes them as one text file.  The model is
bound once per Python worker here too, so the comparison isolates the I/O design.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import storage  # noqa: E402
from common.images import preprocess  # noqa: E402
from common.model import get_predictor  # noqa: E402
from common.model_files import ModelSpec  # noqa: E402
from common.spark import spark_context  # noqa: E402
from testkit import zoo_builder  # noqa: E402


def predict_batch(keys: list[str], bucket: str, spec: ModelSpec) -> list[str]:
    predictor, _ = get_predictor(spec)
    images = []
    for key in keys:  # one GET per image, one after the other
        images.append(preprocess(storage.read_bytes(f"s3://{bucket}/{key}"), key))
    probs = predictor.predict(np.stack(images))
    top = probs.argmax(axis=1)
    return [f"{k}\t{int(c)}\t{predictor.labels[int(c)]}\t{float(probs[i, c]):.6f}" for i, (k, c) in enumerate(zip(keys, top))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--output", required=True)
    a = p.parse_args()
    t0 = time.time()
    bucket = storage.parse_s3(a.input).bucket
    keys = sorted(o.key for o in storage.list_objects(a.input) if o.key.endswith(".png"))
    n = len(keys)
    padded = keys + keys[: (-n) % 64]  # pad the last batch by repeating keys
    batches = [padded[i : i + 64] for i in range(0, len(padded), 64)]
    spec = zoo_builder.local_spec(a.model_dir)
    sc = spark_context("seed-style")
    lines = sc.parallelize(batches, len(batches)).flatMap(lambda b: predict_batch(b, bucket, spec)).collect()
    storage.write_bytes(a.output, ("\n".join(lines) + "\n").encode())
    print(f"seed-style: {len(lines)} predictions ({n} images) in {time.time() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
