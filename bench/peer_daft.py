"""The same job in Daft (benchmark only; runs in its own environment, bench/peers.py builds it).

    .venv-peer-daft/bin/python bench/peer_daft.py --input s3://B/in/ --model-dir DIR --output s3://B/out/ \\
        --variant idiomatic|tuned|threads

Lists the PNGs with ``daft.from_glob_path``, downloads them with Daft's native S3 reader and runs
the test ResNet-18 (bound once per UDF instance by :class:`common.model.Predictor`, batch 64,
the same static shape and oneDNN fusion as infer) in a ``@daft.cls`` batch UDF; the top-5
classes and probabilities go back to S3 with ``write_parquet``.  Variants:

* ``idiomatic``: Daft's own decode and resize (``decode_image``, ``resize``: bilinear), the
  UDF left to Daft's defaults (what its documentation shows);
* ``tuned``: decode and resize inside the UDF with infer's preprocessing exactly (Pillow
  LANCZOS), bytes in, 2 process UDF instances x 1 MXNet thread (infer's layout).  Bytes in
  matters: Daft 0.7.26 silently ignores ``use_process`` and the instance count for a UDF
  whose input is an Image or Tensor column;
* ``threads``: as ``tuned`` but one UDF instance on 2 MXNet threads.

Prints one JSON line: images, wall seconds (from before Daft's import to the write's end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

T0 = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TOP_K = 5


def io_config():
    from daft.io import IOConfig, S3Config

    return IOConfig(s3=S3Config(endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
                                key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
                                access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                                region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1")))


def top(probs):
    import numpy as np

    from common.model import top_k

    ids, p = top_k(probs, TOP_K)
    return [{"class_ids": i.astype(np.int64).tolist(), "probs": q.astype(np.float32).tolist()} for i, q in zip(ids, p)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--variant", choices=("idiomatic", "tuned", "threads"), default="tuned")
    a = p.parse_args()
    import daft
    from daft import DataType, col
    from daft.functions import decode_image, download, resize

    io = io_config()
    from testkit.zoo_builder import local_spec

    spec = local_spec(a.model_dir)
    result = DataType.struct({"class_ids": DataType.list(DataType.int64()), "probs": DataType.list(DataType.float32())})
    tuned = a.variant != "idiomatic"
    instances = 2 if a.variant == "tuned" else 1

    @daft.cls(use_process=True if tuned else None, max_concurrency=instances if tuned else None)
    class Classify:
        def __init__(self) -> None:
            from common.model import Predictor

            self.predictor = Predictor(spec)

        @daft.method.batch(return_dtype=result, batch_size=64)
        def from_bytes(self, data):
            import numpy as np

            from common.images import preprocess

            batch = np.stack([preprocess(b, "image") for b in data.to_pylist()])
            return top(self.predictor.predict(batch))

        @daft.method.batch(return_dtype=result, batch_size=64)
        def from_images(self, images):
            import numpy as np

            batch = np.stack([np.asarray(i, dtype=np.float32).transpose(2, 0, 1) for i in images.to_pylist()])
            return top(self.predictor.predict(batch))

    model = Classify()
    df = daft.from_glob_path(a.input.rstrip("/") + "/**/*.png", io_config=io)
    df = df.with_column("data", download(col("path"), io_config=io))
    if tuned:
        df = df.with_column("pred", model.from_bytes(col("data")))
    else:
        df = df.with_column("image", resize(decode_image(col("data"), mode="RGB"), w=224, h=224))
        df = df.with_column("pred", model.from_images(col("image")))
    df = df.select(col("path").alias("key"), col("pred")["class_ids"].alias("class_ids"),
                   col("pred")["probs"].alias("probs"))
    written = df.write_parquet(a.output, io_config=io).to_pydict()
    print(json.dumps({"peer": "daft", "variant": a.variant, "wall_s": round(time.perf_counter() - T0, 3),
                      "files": len(written.get("path", []))}), flush=True)
    sys.stdout.flush()
    os._exit(0)  # process UDFs sometimes abort at interpreter exit after the output is complete (rc 134)


if __name__ == "__main__":
    sys.exit(main())
