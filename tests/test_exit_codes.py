"""Exit codes that tell the truth: a failure injected at each write point of prepare, infer, compact, delete and
import_onnx (one S3 or Glue request refused by the fault proxy, every time it is made), the exit code checked
against what is then on S3 and in Glue.  2 only with nothing written; 1, with what was written and how to
finish, after the first write; the printed way to finish then finishes."""

from __future__ import annotations

import contextlib
import os
import re

import boto3
import pytest

from common import storage
from testkit.faultproxy import FaultProxy
from tests.helpers import infer_args, prepared

# the exit-code contract, not Spark's: the Spark 4 line runs it once
pytestmark = pytest.mark.once

BUCKET = "exits"
RUN = "r"
WRITTEN = "written before the failure: "


@pytest.fixture(scope="module")
def exits(s3, spark, model_uris):
    """8 images in 2 shards of 4, and the test model."""
    return {"manifest": prepared(s3, BUCKET, 8, seed=71), "model": model_uris}


@contextlib.contextmanager
def refusing(s3, monkeypatch, only: str):
    """Every request matching ``only`` refused (400 ExpiredToken: boto3 does not retry it); yields the flags
    that send a job through the proxy (Glue follows AWS_ENDPOINT_URL)."""
    with FaultProxy(s3.endpoint_url, fault_rate=1.0, faults=("expired",), only=only) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
        try:
            yield ["--s3-endpoint-url", proxy.endpoint_url], proxy
        finally:
            monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    assert proxy.counts["expired"] >= 1, f"nothing matched {only!r}"


def keys(prefix: str) -> set[str]:
    """The keys under ``s3://exits/<prefix>``, relative to it."""
    return {o.key[len(prefix):] for o in storage.list_objects(f"s3://{BUCKET}/{prefix}")}


def partitions(table: str) -> list[str]:
    glue = boto3.client("glue")
    try:
        return [p["Values"][0] for p in glue.get_partitions(DatabaseName="exits_db", TableName=table)["Partitions"]]
    except glue.exceptions.EntityNotFoundException:
        return []


def err_of(capsys) -> str:
    return capsys.readouterr().err


def finish_line(err: str) -> tuple[str, str]:
    """(what was written, how to finish) of the failure's second line."""
    line = next(ln for ln in err.splitlines() if WRITTEN in ln)
    what, finish = line.split(WRITTEN, 1)[1].split("; to finish: ", 1)
    return what, finish


# ---- prepare ----

def prepare(*args: str) -> int:
    from prepare.main import main

    return main(["--input", f"s3://{BUCKET}/in/", "--batch", "4", *args])


@pytest.mark.parametrize("point, only", [
    ("the manifest index", r"^PUT /exits/p-index/manifest\.parquet"),
    ("the skipped table's symlink", r"^PUT /exits/p-link/.*symlink\.txt"),
    ("a shard (in a task)", r"^PUT /exits/p-shard/shards/shard-00001\.rec"),
])
def test_prepare_fails_after_writing_with_1_and_rerunning_finishes(exits, s3, monkeypatch, capsys, point, only):
    prefix = only.split("/")[2]
    with refusing(s3, monkeypatch, only) as (via, _):
        assert prepare("--output", f"s3://{BUCKET}/{prefix}/", *via) == 1, point
    err = err_of(capsys)
    what, finish = finish_line(err)
    assert what.startswith(f"shards, manifest parts and skipped.parquet under s3://{BUCKET}/{prefix}/")
    written = keys(f"{prefix}/")
    assert ("manifest.parquet" in written) == (point == "the skipped table's symlink")
    assert any(k.startswith("shards/shard-") for k in written) or point.startswith("a shard")
    assert finish.startswith("run the same prepare command again")
    assert prepare("--output", f"s3://{BUCKET}/{prefix}/") == 0  # and it does finish
    assert {"manifest.parquet", "skipped.parquet", "shards/shard-00000.rec", "shards/shard-00001.rec"} <= keys(
        f"{prefix}/")


def test_prepare_replacing_a_manifest_fails_at_its_deletion_with_1(exits, s3, monkeypatch, capsys):
    assert prepare("--output", f"s3://{BUCKET}/p-old/") == 0
    before = keys("p-old/")
    with refusing(s3, monkeypatch, r"^DELETE /exits/p-old/manifest\.parquet") as (via, _):
        assert prepare("--output", f"s3://{BUCKET}/p-old/", *via) == 1
    assert WRITTEN in err_of(capsys) and keys("p-old/") == before


def test_prepare_bad_input_is_2_with_nothing_written(exits, capsys):
    from prepare.main import main

    assert main(["--input", f"s3://{BUCKET}/nothing-here/", "--output", f"s3://{BUCKET}/p-bad/"]) == 2
    err = err_of(capsys)
    assert "prepare: error: " in err and WRITTEN not in err and keys("p-bad/") == set()


# ---- infer ----

def infer(exits, output: str, *extra: str) -> int:
    from infer.main import main

    return main(infer_args(exits["manifest"], exits["model"], f"s3://{BUCKET}/{output}/", "--run-id", RUN, *extra))


@pytest.mark.parametrize("point, only, parts", [
    ("run.json", r"^PUT /exits/i-record/_runs/r/run\.json", 0),
    ("a part file (in a task)", r"^PUT /exits/i-part/run_id(=|%3D)r/part-00001\.parquet", 1),
    ("the status file", r"^PUT /exits/i-status/_runs/r/status/", 2),
    ("summary.json", r"^PUT /exits/i-summary/_runs/r/summary\.json", 2),
    ("athena.sql", r"^PUT /exits/i-sql/_runs/r/athena\.sql", 2),
])
def test_infer_fails_after_writing_with_1(exits, s3, monkeypatch, capsys, point, only, parts):
    prefix = only.split("/")[2]
    with refusing(s3, monkeypatch, only) as (via, _):
        assert infer(exits, prefix, *via) == 1, point
    err = err_of(capsys)
    written = keys(f"{prefix}/")
    assert len([k for k in written if k.startswith(f"run_id={RUN}/part-")]) == parts
    if point.startswith("a part file"):  # the shard is recorded failed: the rerun command is printed
        assert "FAILED shards: 1" in err and "--only-failed" in err
    else:
        what, finish = finish_line(err)
        assert f"s3://{BUCKET}/{prefix}/run_id={RUN}/" in what
        assert finish.startswith(f"run the same infer command again (run_id={RUN})")
    assert infer(exits, prefix) == 0  # the same command finishes it
    assert {f"run_id={RUN}/part-00000.parquet", f"run_id={RUN}/part-00001.parquet"} <= keys(f"{prefix}/")


def test_infer_whose_partition_registration_fails_is_1_and_the_rerun_registers_it(exits, s3, monkeypatch, capsys):
    glue = ["--glue-database", "exits_db", "--glue-table", "reg"]
    with refusing(s3, monkeypatch, r"AWSGlue\.CreatePartition") as (via, _):
        assert infer(exits, "i-glue", *glue, *via) == 1
    err = err_of(capsys)
    assert "infer: error: Glue Data Catalog: CreatePartition failed" in err
    what, finish = finish_line(err)
    assert "the Glue table exits_db.reg" in what and "keeps every shard already written" in finish
    assert {f"run_id={RUN}/part-00000.parquet", f"run_id={RUN}/part-00001.parquet"} <= keys("i-glue/")
    assert partitions("reg") == []
    assert infer(exits, "i-glue", *glue) == 0
    assert "0 written, 2 already done" in capsys.readouterr().out and partitions("reg") == [RUN]


def test_infer_whose_table_cannot_be_created_is_1_before_any_task(exits, s3, monkeypatch, capsys):
    with refusing(s3, monkeypatch, r"AWSGlue\.CreateTable") as (via, _):
        assert infer(exits, "i-table", "--glue-database", "exits_db", "--glue-table", "made", *via) == 1
    assert "the Glue table exits_db.made (created when absent)" in finish_line(err_of(capsys))[0]
    assert not any(k.startswith("run_id=") for k in keys("i-table/"))


def test_an_internal_error_is_1_never_2_with_its_traceback_kept(exits, monkeypatch, capsys):
    from infer import runrecord

    def broken(*args, **kwargs):
        raise KeyError("shards_written")  # a bug after the tasks wrote their files

    monkeypatch.setattr(runrecord, "summarise", broken)
    assert infer(exits, "i-bug") == 1
    err = err_of(capsys)
    line = next(ln for ln in err.splitlines() if "internal error" in ln)
    assert line.startswith("infer: internal error: KeyError: 'shards_written' (a bug: traceback in ")
    path = re.search(r"traceback in (\S+),", line).group(1)
    with open(path) as f:
        assert "in broken" in f.read()
    os.unlink(path)
    assert "Traceback" not in err and WRITTEN in err
    assert {f"run_id={RUN}/part-00000.parquet", f"run_id={RUN}/part-00001.parquet"} <= keys("i-bug/")


# ---- compact and delete, on a finished run registered in Glue ----

@pytest.fixture(scope="module")
def finished(exits):
    """A complete run under s3://exits/done/, its partition in exits_db.done."""
    assert infer(exits, "done", "--glue-database", "exits_db", "--glue-table", "done") == 0
    return f"s3://{BUCKET}/done/"


def compact(finished: str, output: str, *extra: str) -> int:
    from infer.compact import main

    return main(["--input", finished, "--run-id", RUN, "--output", f"s3://{BUCKET}/{output}/", *extra])


def test_compact_fails_after_writing_with_1(finished, s3, monkeypatch, capsys):
    with refusing(s3, monkeypatch, r"^PUT /exits/c-put/") as (via, _):
        assert compact(finished, "c-put", *via) == 1
    assert "Spark job failed" in err_of(capsys)
    glue = ["--glue-database", "exits_db", "--glue-table", "done"]
    with refusing(s3, monkeypatch, r"AWSGlue\.UpdatePartition") as (via, _):
        assert compact(finished, "c-glue", *glue, *via) == 1
    what, finish = finish_line(err_of(capsys))
    assert f"compacted files under s3://{BUCKET}/c-glue/run_id={RUN}/" in what
    assert keys(f"c-glue/run_id={RUN}/")  # the files are there; the partition still points at the run's own
    glue_client = boto3.client("glue")
    location = glue_client.get_partition(DatabaseName="exits_db", TableName="done", PartitionValues=[RUN])
    assert location["Partition"]["StorageDescriptor"]["Location"].startswith(finished)
    assert finish.startswith("run the same compact command again") and compact(finished, "c-glue", *glue) == 0


def test_compact_of_an_unknown_run_is_2_with_nothing_written(finished, capsys):
    from infer.compact import main

    assert main(["--input", finished, "--run-id", "nope", "--output", f"s3://{BUCKET}/c-bad/"]) == 2
    assert WRITTEN not in err_of(capsys) and keys("c-bad/") == set()


def test_delete_fails_part_way_with_1_and_rerunning_finishes(exits, s3, monkeypatch, capsys):
    from infer.delete import main as delete

    assert infer(exits, "del", "--glue-database", "exits_db", "--glue-table", "del") == 0
    args = ["--output", f"s3://{BUCKET}/del/", "--run-id", RUN, "--glue-database", "exits_db", "--glue-table", "del",
            "--yes"]
    before = keys("del/")
    with refusing(s3, monkeypatch, r"AWSGlue\.DeletePartition") as (via, _):
        assert delete([*args, *via]) == 1
    assert WRITTEN in err_of(capsys) and keys("del/") == before and partitions("del") == [RUN]
    with refusing(s3, monkeypatch, r"^POST /exits\?delete") as (via, _):
        assert delete([*args, *via]) == 1
    what, finish = finish_line(err_of(capsys))
    assert keys("del/") == before and partitions("del") == []  # the partition went first, the files stayed
    assert finish.startswith("run the same delete command again") and delete(args) == 0
    assert keys("del/") == set()


# ---- import_onnx ----

@pytest.mark.parametrize("point, only, left", [
    ("the params", r"^PUT /exits/o-params/.*-0000\.params", set()),
    ("the symbol", r"^PUT /exits/o-symbol/.*-symbol\.json", {"arithmetic-0000.params"}),
])
def test_import_onnx_fails_at_its_writes_with_1(exits, s3, monkeypatch, capsys, point, only, left):
    from infer.import_onnx import main
    from testkit import onnx_corpus
    from testkit.corpus import MODELS_DIR

    with open(os.path.join(MODELS_DIR, "arithmetic-torchscript-op11.onnx"), "rb") as f:
        storage.write_bytes(f"s3://{BUCKET}/onnx/arithmetic.onnx", onnx_corpus.fill(f.read()))
    prefix = only.split("/")[2]
    with refusing(s3, monkeypatch, only) as (via, _):
        assert main([f"s3://{BUCKET}/onnx/arithmetic.onnx", "--output", f"s3://{BUCKET}/{prefix}/", *via]) == 1, point
    assert finish_line(err_of(capsys))[1] == "run the same import_onnx command again"
    assert keys(f"{prefix}/") == left


def test_import_onnx_of_a_model_it_refuses_is_2_with_nothing_written(exits, capsys):
    from infer.import_onnx import main
    from testkit.corpus import MODELS_DIR

    with open(os.path.join(MODELS_DIR, "refused-two-images-torchscript-op17.onnx"), "rb") as f:
        storage.write_bytes(f"s3://{BUCKET}/onnx/refused.onnx", f.read())
    assert main([f"s3://{BUCKET}/onnx/refused.onnx", "--output", f"s3://{BUCKET}/o-bad/"]) == 2
    assert WRITTEN not in err_of(capsys) and keys("o-bad/") == set()
