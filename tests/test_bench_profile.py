"""bench/profile_shard.py: it times the work infer's task does (the same model input, the same stages), and
its bound follows from the stage times it measured."""

from __future__ import annotations

import numpy as np
import pytest

from bench import profile_shard
from common.images import Preprocessing, decode_into

# one process, no Spark: the same on either Spark line
pytestmark = pytest.mark.once


def test_the_profiled_stages_make_the_tasks_model_input():
    prep = Preprocessing()
    payloads = profile_shard.shard_images("packed-12MP")
    stages, made = profile_shard.preprocessing_stages(payloads, prep, repeat=1)
    task = np.empty_like(made)
    assert decode_into(payloads, [f"{i}.jpg" for i in range(len(payloads))], task, prep) == {}
    np.testing.assert_array_equal(made, task)
    assert set(stages) == {"unpack", "decode", "resize", "normalise"} and min(stages.values()) > 0


def test_the_bound_is_the_forwards_share_of_a_shards_work(tmp_path):
    figures = profile_shard.profile(["thumbnail"], ["fp32"], repeat=1, workdir=str(tmp_path))
    thumb, model = figures["kinds"]["thumbnail"], figures["model"]["fp32"]
    assert thumb["stored_size"] == [32, 32] and model["forward"] > 0 and model["parquet"] > 0
    total = sum(thumb["ms_per_shard"].values()) + model["forward"] + model["results"] + model["parquet"]
    assert thumb["bound"]["fp32"]["bound_x_model_only"] == pytest.approx(model["forward"] / total, abs=1e-3)
    assert 0 < thumb["bound"]["fp32"]["bound_x_model_only"] < 1
