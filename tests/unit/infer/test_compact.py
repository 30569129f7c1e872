"""infer/compact.py's pure parts: its settings (each refusal by name), --target-size, and the bins it plans."""

from __future__ import annotations

import re

import pytest

from common.cli import UsageError
from common.storage import Encryption, Store
from infer.compact import CompactConfig, build_parser, parse_size, plan_bins


def _config(*argv: str) -> CompactConfig:
    return CompactConfig.from_args(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize("argv, says", [
    (["--input", "s3://b/p/", "--run-id", "r", "--output", "s3://b/p"], "--output must differ from --input"),
    (["--input", "s3://b/p/", "--run-id", "r"], "--input (infer's --output) and --output"),
    (["--input", "s3://b/p/", "--run-id", "r", "--target", "s3://b/c/"], "--target is now --output"),
    (["--input", "s3://b/p/", "--run-id", "a:b", "--output", "s3://b/c/"], "run id 'a:b' is not allowed"),
    (["--input", "s3://b/p/", "--run-id", "r", "--output", "s3://b/c/", "--glue-table", "t"], "go together"),
    (["--input", "s3://b/p/", "--run-id", "r", "--output", "s3://b/c/", "--target-size", "big"], "--target-size 'big'"),
])
def test_each_bad_flag_is_refused_by_name(argv, says):
    with pytest.raises(UsageError, match=re.escape(says)):
        _config(*argv)


def test_sizes_store_and_bins(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    c = _config("--input", "s3://b/p/", "--run-id", "r", "--output", "s3://b/c/", "--target-size", "64MB",
                "--sse", "AES256")
    assert c.target_bytes == 64_000_000 and c.store == Store(None, Encryption("AES256"))
    assert [parse_size(t) for t in ("128MiB", "1KB", "1000", "1.5GiB")] == [2**27, 1000, 1000, int(1.5 * 2**30)]
    sizes = [("a", 40), ("b", 40), ("c", 30), ("d", 200), ("e", 1)]
    assert plan_bins(sizes, 100) == [["a", "b"], ["c"], ["d"], ["e"]]  # in order, a big file alone, never empty
    assert [k for b in plan_bins(sizes, 100) for k in b] == [k for k, _ in sizes]
