"""Task groups: several consecutive shards per Spark task, pipelined, each shard still on its own."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from common import storage
from infer.plan import Plan, group_count, ids_to_ranges, shards_per_task
from testkit.faultproxy import FaultProxy
from tests.helpers import assert_exactly_once, infer_args, part_objects, prepared, read_manifest, statuses, submit


@pytest.fixture(scope="module")
def ten_shards(s3, spark):
    """40 images in 10 shards of 4."""
    return {"manifest": prepared(s3, "groups", 40, seed=41)}


def _summary(out: str, run_id: str) -> dict:
    return json.loads(storage.read_bytes(f"{out}_runs/{run_id}/summary.json"))


def test_grouping_is_consecutive_balanced_and_default_keeps_cores_busy(ten_shards):
    index = read_manifest(ten_shards["manifest"]).index

    def ids(selected, per_task, cores=1):
        plan = Plan(index, ids_to_ranges(np.array(selected)), group_count(len(selected), per_task, cores), per_task)
        return [plan.group_ids(g) for g in range(plan.groups)]

    assert ids(range(1, 8), 3) == [[1, 2, 3], [4, 5], [6, 7]]  # sizes within one
    # two cores: a multiple of 2 groups, sizes within one of each other, larger first
    assert ids(range(1, 8), 3, cores=2) == [[1, 2], [3, 4], [5, 6], [7]]
    assert ids(range(10), 4, cores=2) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert ids(range(3), 8, cores=2) == [[0, 1], [2]]
    assert ids([], 4, cores=2) == []
    assert ids([1, 4, 5, 6, 9], 2) == [[1, 4], [5, 6], [9]]  # selected ids with gaps: groups of the selection
    assert shards_per_task(None, 10_000, 2) == 4  # the default at fp32
    assert shards_per_task(None, 10_000, 2, "int8") == 12  # int8: 3x faster shards, longer groups
    assert shards_per_task(None, 10, 2) == 3  # 10 shards, 2 cores: 4 groups, 2 per core
    assert shards_per_task(None, 3, 2) == 1
    assert shards_per_task(7, 3, 2) == 7  # asked for: kept


@pytest.mark.once
def test_damaged_shard_in_the_middle_of_a_group_fails_alone(ten_shards, model_uris, capsys):
    from infer.main import main

    out = "s3://groups/damaged/"
    shard = "s3://groups/shards/shards/shard-00004.rec"
    saved = storage.read_bytes(shard)
    storage.write_bytes(shard, os.urandom(len(saved)))
    try:
        rc = main(infer_args(ten_shards["manifest"], model_uris, out, "--run-id", "g", "--shards-per-task", "3"))
    finally:
        storage.write_bytes(shard, saved)
    assert rc == 1
    assert "FAILED shards: 4 " in capsys.readouterr().err
    st = statuses(out, "g")
    assert st[4]["status"] == "failed" and "shard 4" in st[4]["error"]
    # shards 3 and 5 share its task (3-5) and are written, as is everything else
    assert all(st[i]["status"] == "ok" and st[i]["outcome"] == "written" for i in range(10) if i != 4)
    assert len({(st[i]["pid"], st[i]["t_task_start"]) for i in (3, 4, 5)}) == 1, "3, 4, 5 ran in one task"
    assert len(part_objects(out, "g")) == 9
    s = _summary(out, "g")
    assert s["tasks"] == 4 and s["shards_per_task"] == 3 and s["images_written"] == 36
    assert main(infer_args(ten_shards["manifest"], model_uris, out, "--run-id", "g", "--only-failed")) == 0
    assert_exactly_once(read_manifest(ten_shards["manifest"]), out, "g")


@pytest.mark.once
def test_selection_that_does_not_align_with_groups(ten_shards, model_uris):
    from infer.main import main

    out = "s3://groups/unaligned/"
    assert main(infer_args(ten_shards["manifest"], model_uris, out, "--run-id", "u", "--shards", "1,4-6,9",
                           "--shards-per-task", "2")) == 0
    assert sorted(part_objects(out, "u")) == [f"unaligned/run_id=u/part-{i:05d}.parquet" for i in (1, 4, 5, 6, 9)]
    s = _summary(out, "u")
    assert s["tasks"] == 4 and s["shards_written"] == 5 and s["images_written"] == 20  # [1, 4] [5] [6] [9]
    # the same selection again: every shard is found done, nothing is rewritten
    assert main(infer_args(ten_shards["manifest"], model_uris, out, "--run-id", "u", "--shards", "4-9",
                           "--shards-per-task", "4")) == 0
    s = _summary(out, "u")
    assert s["shards_already_done"] == 4 and s["shards_written"] == 2  # 4, 5, 6, 9 were there; 7, 8 new


@pytest.mark.once
def test_dry_run_prints_the_plan_and_writes_nothing(ten_shards, model_uris, capsys):
    from infer.main import main

    out = "s3://groups/dry/"
    assert main(infer_args(ten_shards["manifest"], model_uris, out, "--run-id", "d", "--shards", "2-8",
                           "--shards-per-task", "3", "--dry-run")) == 0
    text = capsys.readouterr().out
    # grouped for this machine's cores
    expected = {1: "3 tasks of up to 3 in 1 Spark jobs: 2-4, 5-7, 8",
                2: "4 tasks of up to 3 in 1 Spark jobs: 2-3, 4-5, 6-7, 8"}.get(os.cpu_count())
    assert f"7 of 10 shards in 1 ranges, {expected or ''}" in text and "nothing written" in text
    assert list(storage.list_objects(out)) == []


def test_retried_group_skips_the_shards_it_wrote(s3, ten_shards, model_uris):
    """The first try of the group 0-3 cannot read shard 2 (a 400 boto3 does not retry); Spark retries the
    group, and the retry writes shard 2 only: 0, 1 and 3 are found done (one HEAD each), not fetched again."""
    out = "s3://groups/retried/"
    with FaultProxy(s3.endpoint_url, fault_rate=1.0, faults=("expired",), only=r"^GET /groups/shards/shards/shard-00002",
                    max_faults=1) as proxy:
        env = {**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint_url}
        p = submit("infer/main.py", infer_args(ten_shards["manifest"], model_uris, out, "--run-id", "r",
                                               "--shards", "0-3", "--shards-per-task", "4"), env, "spark.master=local[1,2]")  # one core: one group
    assert p.returncode == 0, p.stderr[-4000:]
    assert proxy.counts["expired"] == 1
    st = statuses(out, "r")
    assert {i: (s["status"], s["outcome"], s["attempt"]) for i, s in st.items()} == {
        i: ("ok", "written", 1) for i in range(4)}
    for i in (0, 1, 3):
        assert proxy.requests[f"GET /groups/shards/shards/shard-{i:05d}.rec"] == 1
        assert proxy.requests[f"PUT /groups/retried/run_id%3Dr/part-{i:05d}.parquet"] == 1  # path as sent: "=" quoted
    assert proxy.requests["GET /groups/shards/shards/shard-00002.rec"] == 2
    assert "4/4 shards ok (4 written, 0 already done), 16 images written" in p.stdout
