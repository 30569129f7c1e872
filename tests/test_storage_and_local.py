"""Both jobs on local paths instead of s3:// (storage's own tests: tests/unit/common/test_storage.py)."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest

from testkit import zoo_builder
from testkit.testdata import cifar_like_png

pytestmark = pytest.mark.once  # our storage's local paths, not Spark's: the same on either Spark line


def test_both_jobs_on_local_paths(spark, tmp_path, model_files):
    from infer.main import main as infer_main
    from prepare.main import main as prepare_main

    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        (images / f"{i}.png").write_bytes(cifar_like_png(i, seed=21))
    (images / "notes.txt").write_text("x")
    model = tmp_path / "model"
    model.mkdir()
    for name, data in model_files.items():
        (model / name).write_bytes(data)
    shards = tmp_path / "shards"
    assert prepare_main(["--input", str(images), "--output", str(shards), "--batch", "2"]) == 0
    out = tmp_path / "pred"
    assert infer_main(["--manifest", str(shards / "manifest.parquet"), "--sym-url", str(model / zoo_builder.SYMBOL_FILE),
                       "--param-url", str(model / zoo_builder.PARAMS_FILE),
                       "--label-url", str(model / zoo_builder.SYNSET_FILE), "--output", str(out),
                       "--run-id", "local"]) == 0
    parts = sorted((out / "run_id=local").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    rows = [r for p in parts for r in pq.read_table(io.BytesIO(p.read_bytes())).to_pylist()]
    assert sorted(r["key"] for r in rows) == sorted(str(images / f"{i}.png") for i in range(5))
    skipped = pq.read_table(str(shards / "skipped.parquet")).to_pylist()
    assert skipped == [{"key": str(images / "notes.txt"), "reason": "not a .png key"}]
