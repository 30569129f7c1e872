"""Spark's own ``predict_batch_udf`` over a DataFrame of the same images (benchmark only).

    spark-submit bench/udf_style.py --input s3://B/in/ --model-dir DIR --output /tmp/out --variant bytes|tensors

The DataFrame holds ``(key, data)`` with the PNG bytes, fetched per partition with boto3
(Spark cannot read s3:// here without hadoop-aws).  Variants:

* ``bytes``: bytes in, decode + preprocessing inside the predict function (its best form);
* ``tensors``: preprocessing in a separate map, 3x224x224 float arrays in.

``make_predict_fn`` binds the model once per Python worker (Spark caches it); batch size 64;
the top-1 class and probability are written with ``DataFrame.write.parquet``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import storage  # noqa: E402
from testkit import zoo_builder  # noqa: E402


def fetch(keys, bucket):
    for k in keys:
        yield k, storage.read_bytes(f"s3://{bucket}/{k}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--variant", choices=("bytes", "tensors"), default="bytes")
    a = p.parse_args()
    t0 = time.time()
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import SparkSession
    from pyspark.sql.types import ArrayType, FloatType, IntegerType, StructField, StructType

    spark = SparkSession.builder.appName(f"udf-{a.variant}").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    sc = spark.sparkContext
    bucket = storage.parse_s3(a.input).bucket
    keys = sorted(o.key for o in storage.list_objects(a.input) if o.key.endswith(".png"))
    spec = zoo_builder.local_spec(a.model_dir)
    parts = max(1, len(keys) // 64)
    rdd = sc.parallelize(keys, parts).mapPartitions(lambda it: fetch(list(it), bucket))
    out_type = StructType([StructField("class_id", IntegerType()), StructField("prob", FloatType())])

    def make_predict_fn():
        import numpy as np

        from common.images import preprocess
        from common.model import Predictor

        predictor = Predictor(spec)

        def predict_bytes(data):
            batch = np.stack([preprocess(bytes(b), "k") for b in data])
            probs = predictor.predict(batch)
            top = probs.argmax(axis=1)
            return {"class_id": top.astype(np.int32), "prob": probs[np.arange(len(top)), top].astype(np.float32)}

        def predict_tensors(batch):
            probs = predictor.predict(batch.astype(np.float32))
            top = probs.argmax(axis=1)
            return {"class_id": top.astype(np.int32), "prob": probs[np.arange(len(top)), top].astype(np.float32)}

        return predict_bytes if a.variant == "bytes" else predict_tensors

    if a.variant == "bytes":
        df = spark.createDataFrame(rdd, ["key", "data"])
        udf = predict_batch_udf(make_predict_fn, return_type=out_type, batch_size=64)
    else:
        def to_tensor(kv):
            from common.images import preprocess
            return kv[0], preprocess(kv[1], kv[0]).reshape(-1).tolist()

        schema = StructType([StructField("key", __import__("pyspark.sql.types").sql.types.StringType()),
                             StructField("data", ArrayType(FloatType()))])
        df = spark.createDataFrame(rdd.map(to_tensor), schema)
        udf = predict_batch_udf(make_predict_fn, return_type=out_type, batch_size=64,
                                input_tensor_shapes=[[3, 224, 224]])
    df.select("key", udf("data").alias("pred")).write.mode("overwrite").parquet(a.output)
    print(f"udf-{a.variant}: {len(keys)} images in {time.time() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
